"""The document score: the contrast with a content-free query and the 2-sigma mask.

This module is the one place the scoring formula lives (docs/method.md, section 3)::

    c(j)     = s_query(j) - s_NA(j)
    m(j)     = 1 if c(j) > mean_{j in d}(c) - 2 * std_{j in d}(c) else 0
    score(d) = sum over j in d of m(j) * c(j)

where s(j) is the attention signal summed over the selected heads (see ``head_signal``).

Two maps of the raw score live here too. ``relevance``: a calibrated probability that the document is
relevant, ``1 / (1 + exp(-(slope * score + offset)))`` with ``slope > 0`` and both fitted per head list and
attention mode on labelled training data (the head list's ``RelevanceMap``, which reads the document's length and
its list's size into them); it reads the document's own score, so it is comparable across queries and lists.
``softmax``: the list-relative ``normalized_score``. ``fuse``: the attention score combined with the first stage's
own scores when the caller has them, ``z(attention) + w * z(first stage)`` (each standardized over the list, so the
first stage's scale does not matter). ``token_contributions``: each token's ``m(j) * c(j)``, which highlights sum
per sentence.
The std is the sample std (n - 1), as torch computes it in the reference code. The mask drops
outliers; a document without spread (one token, or all c(j) equal) has none and keeps every token.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = [
    "document_masses",
    "document_scores",
    "fuse",
    "relevance",
    "softmax",
    "standardized",
    "token_contributions",
]


def _kept(cd: torch.Tensor) -> torch.Tensor | None:
    """The 2-sigma mask m(j) of one document's contrast ``cd`` (a bool tensor), None where it keeps every token
    (one token, or no spread)."""
    if cd.numel() > 1 and float(cd.std()) > 0:
        return cd > cd.mean() - 2 * cd.std()
    return None


def document_scores(
    signal_query: torch.Tensor, signal_null: torch.Tensor, token_spans: Sequence[tuple[int, int]]
) -> list[float]:
    """N/A-contrasted, masked score of each document span; higher is more relevant.

    ``signal_*`` are 1-D per-key-position signals; an empty span scores ``-inf``.
    """
    c = signal_query.double() - signal_null.double()
    scores = []
    for a, b in token_spans:
        if b <= a:
            scores.append(-math.inf)
            continue
        cd = c[a:b]
        kept = _kept(cd)
        scores.append(float((cd if kept is None else cd[kept]).sum()))
    return scores


def token_contributions(
    signal_query: torch.Tensor, signal_null: torch.Tensor, token_spans: Sequence[tuple[int, int]]
) -> list[torch.Tensor]:
    """Each document token's share of its document's score, ``m(j) * c(j)`` (float64, one tensor per span, empty
    for an empty span): summed over a document it is :func:`document_scores`' score, summed over a sentence the
    sentence's score (highlights, :mod:`core_rerank.highlights`)."""
    c = signal_query.double() - signal_null.double()
    out = []
    for a, b in token_spans:
        cd = c[a:b] if b > a else c[:0]
        kept = _kept(cd)
        out.append(cd.clone() if kept is None else torch.where(kept, cd, torch.zeros_like(cd)))
    return out


def document_masses(signal: torch.Tensor, token_spans: Sequence[tuple[int, int]]) -> list[float]:
    """Attention mass of each span without the N/A contrast and the mask: the detection statistic s(d)
    (docs/method.md, section 4), and the "no contrast" ablation; an empty span scores ``-inf``."""
    s = signal.double()
    return [float(s[a:b].sum()) if b > a else -math.inf for a, b in token_spans]


def softmax(scores: Sequence[float], temperature: float | None = None) -> list[float]:
    """Softmax over the candidates of ``score / temperature``; ``-inf`` maps to 0.

    ``temperature=None`` uses the standard deviation of the finite scores, which makes the
    normalized scores independent of the raw scores' scale (that grows with the number of heads).
    """
    if not scores:
        return []
    t = torch.tensor(scores, dtype=torch.float64)
    finite = t[torch.isfinite(t)]
    if finite.numel() == 0:
        return [0.0] * len(scores)
    if temperature is None:
        temperature = float(finite.std()) if finite.numel() > 1 else 1.0
    if not temperature > 0:  # all finite scores equal
        temperature = 1.0
    return torch.softmax(t / temperature, dim=0).tolist()


def relevance(score: float, a: float, b: float) -> float:
    """Calibrated probability of relevance of a raw score: logistic ``1 / (1 + exp(-(a * score + b)))``
    (``a > 0``: monotone in the score; ``a, b`` from :meth:`core_rerank.heads.RelevanceMap.terms` for the
    document's length and list size); an empty document (``-inf``) gets 0."""
    if not math.isfinite(score):
        return 0.0 if score < 0 else 1.0
    t = a * score + b
    return 1.0 / (1.0 + math.exp(-t)) if t >= 0 else math.exp(t) / (1.0 + math.exp(t))


def standardized(values: Sequence[float], keep: Sequence[bool] | None = None) -> list[float]:
    """z-scores: ``values`` minus their mean over the kept entries (default: the finite ones), over their
    population std there; 0 everywhere when they do not vary. Entries not kept are standardized with the same
    mean and std (a non-finite value stays non-finite). The one z-score of the project: fusion uses it."""
    if keep is None:
        keep = [math.isfinite(v) for v in values]
    kept = [v for v, k in zip(values, keep) if k]
    mean = sum(kept) / len(kept) if kept else 0.0
    std = math.sqrt(sum((v - mean) ** 2 for v in kept) / len(kept)) if kept else 0.0
    return [(v - mean) / std if std > 0 else 0.0 for v in values]


def fuse(attention: Sequence[float], first_stage: Sequence[float], weight: float) -> list[float]:
    """``z(attention) + weight * z(first_stage)``, each z-scored over the list's non-empty documents; an
    empty document (``-inf`` attention) stays ``-inf``. ``weight`` 0 keeps the attention ranking."""
    keep = [math.isfinite(a) for a in attention]
    za = standardized([a if k else 0.0 for a, k in zip(attention, keep)], keep)
    zf = standardized(first_stage, keep)
    return [a + weight * f if k else -math.inf for a, f, k in zip(za, zf, keep)]
