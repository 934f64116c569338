"""Calibrated relevance: fit the map from a raw score to a probability of relevance, and check it.

``relevance = 1 / (1 + exp(-(a * score + b)))`` (:func:`core_rerank.scoring.relevance`) is a 1-D logistic
regression of "judged relevant" on the engine's raw score, fitted on labelled TRAINING data with the
engine's own settings (first-stage top ``depth`` in first-stage order, the engine's placement and cut).
It reads each document's own score only, so it is comparable across queries and lists; it is monotone, so
it never changes a ranking. Checked by expected calibration error (ECE, 10 equal-width bins), a reliability
diagram, and precision / recall of ``relevance >= 0.5``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .datasets import Dataset, first_stage

if TYPE_CHECKING:
    from ..heads import HeadList, RelevanceMap
    from ..reranker import Reranker

__all__ = [
    "FORMS",
    "ORDER_KEEPING",
    "LabelledScores",
    "Reliability",
    "calibrate",
    "fit_logistic",
    "fit_logistic_features",
    "fit_relevance_map",
    "labelled_scores",
    "map_relevance",
    "reliability",
]

FORMS = ("score", "list", "length", "context")
"""The relevance maps a fit can make (:class:`~core_rerank.heads.RelevanceMap`): ``score`` reads the raw score alone,
``list`` adds log(n) and score * log(n) (the same for every document of a list: relevance keeps the list's order),
``length`` adds log(tokens), ``context`` adds log(tokens), log(n) and score * log(n)."""
ORDER_KEEPING = ("score", "list")
"""The forms under which relevance sorts a list as its scores do (clients that sort by it keep the ranking)."""


def fit_logistic(x: Sequence[float], y: Sequence[int], l2: float = 1e-3) -> tuple[float, float]:
    """``(a, b)`` maximising the log-likelihood of ``y ~ sigmoid(a * x + b)`` (a small L2 penalty on the slope
    of the standardized score keeps separable data finite), by Newton's method with step halving; ``a`` is
    kept positive so the map increases with the score."""
    import numpy as np

    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(xs) == 0 or ys.min() == ys.max():
        raise ValueError("fitting relevance needs both relevant and non-relevant documents")
    mu, sd = float(xs.mean()), float(xs.std()) or 1.0
    u = (xs - mu) / sd

    def loss(w: np.ndarray) -> float:
        t = w[0] * u + w[1]
        return float(np.sum(np.logaddexp(0.0, t) - ys * t) + 0.5 * l2 * w[0] ** 2)

    rate = ys.mean()
    w = np.array([0.0, math.log(rate / (1 - rate))])
    for _ in range(100):
        p = 1 / (1 + np.exp(-np.clip(w[0] * u + w[1], -500, 500)))
        grad = np.array([((p - ys) * u).sum() + l2 * w[0], (p - ys).sum()])
        h = p * (1 - p)
        hess = np.array([[(h * u * u).sum() + l2, (h * u).sum()], [(h * u).sum(), h.sum() + 1e-12]])
        step = np.linalg.solve(hess, grad)
        base, t = loss(w), 1.0
        while loss(w - t * step) > base and t > 1e-8:
            t /= 2
        w = w - t * step
        if float(np.abs(t * step).max()) < 1e-10:
            break
    slope = max(float(w[0]), 1e-9) / sd
    return slope, float(w[1]) - slope * mu


def fit_logistic_features(columns: Sequence[Sequence[float]], y: Sequence[int], l2: float = 1e-3) -> list[float]:
    """Weights ``[w_1 .. w_k, bias]`` maximising the log-likelihood of ``y ~ sigmoid(sum w_i x_i + bias)`` over the
    feature ``columns`` (each standardized for the fit, with a small L2 penalty on the weights, so separable data
    stays finite), by Newton's method with step halving; returned on the columns' own scale."""
    import numpy as np

    ys = np.asarray(y, dtype=float)
    if len(ys) == 0 or ys.min() == ys.max():
        raise ValueError("fitting relevance needs both relevant and non-relevant documents")
    x = np.asarray(columns, dtype=float).T
    mu, sd = x.mean(0), x.std(0)
    sd[sd == 0] = 1.0
    u = np.hstack([(x - mu) / sd, np.ones((len(ys), 1))])
    k = u.shape[1]
    penalty = np.full(k, l2)
    penalty[-1] = 0.0

    def loss(w: np.ndarray) -> float:
        t = u @ w
        return float(np.sum(np.logaddexp(0.0, t) - ys * t) + 0.5 * np.sum(penalty * w * w))

    rate = ys.mean()
    w = np.zeros(k)
    w[-1] = math.log(rate / (1 - rate))
    for _ in range(100):
        p = 1 / (1 + np.exp(-np.clip(u @ w, -500, 500)))
        grad = u.T @ (p - ys) + penalty * w
        hess = (u * (p * (1 - p))[:, None]).T @ u + np.diag(penalty + 1e-12)
        step = np.linalg.solve(hess, grad)
        base, t = loss(w), 1.0
        while loss(w - t * step) > base and t > 1e-8:
            t /= 2
        w = w - t * step
        if float(np.abs(t * step).max()) < 1e-10:
            break
    weights = w[:-1] / sd
    return [*map(float, weights), float(w[-1] - np.sum(weights * mu))]


@dataclass(frozen=True)
class LabelledScores:
    """Raw scores with what a relevance map reads besides them (the document's token count, its list's size)
    and the labels (1 = judged relevant); the query of each, for fits and checks that group by query."""

    scores: list[float]
    tokens: list[int]
    sizes: list[int]
    labels: list[int]
    queries: list[str]

    def __len__(self) -> int:
        return len(self.scores)

    def subset(self, keep: Sequence[bool]) -> LabelledScores:
        pick = [i for i, k in enumerate(keep) if k]
        return LabelledScores(*([getattr(self, f)[i] for i in pick] for f in self.__dataclass_fields__))


def fit_relevance_map(
    data: LabelledScores, settings: Any, fitted_on: str, form: str = "context", l2: float = 1e-3
) -> RelevanceMap:
    """The :class:`~core_rerank.heads.RelevanceMap` of ``form`` (:data:`FORMS`) fitted on ``data``, recording the
    engine ``settings`` (a mapping over ``FIT_SETTINGS``). A fitted slope that would not increase with the score over
    the data's list sizes is a ``ValueError`` (use a simpler form)."""
    from ..heads import RelevanceMap

    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    log_t = [math.log(max(t, 1)) for t in data.tokens]
    log_n = [math.log(max(n, 1)) for n in data.sizes]
    s = data.scores
    if form == "score":
        a, b = fit_logistic(s, data.labels, l2)
        terms = {}
    elif form == "list":
        a, e, d, b = fit_logistic_features([s, [x * y for x, y in zip(s, log_n)], log_n], data.labels, l2)
        terms = {"list_size": d, "score_list_size": e}
    elif form == "length":
        a, c, b = fit_logistic_features([s, log_t], data.labels, l2)
        terms = {"length": c}
    else:
        a, e, c, d, b = fit_logistic_features([s, [x * y for x, y in zip(s, log_n)], log_t, log_n], data.labels, l2)
        terms = {"length": c, "list_size": d, "score_list_size": e}
    n_range = (max(1, min(data.sizes)), max(data.sizes))
    if form in ("context", "list") and not all(a + terms["score_list_size"] * math.log(n) > 0 for n in n_range):
        raise ValueError(f"the fitted slope does not increase with the score over list sizes {n_range}")
    if not a > 0:
        raise ValueError("the fitted slope does not increase with the score")
    ranges = {"tokens_range": (max(1, min(data.tokens)), max(data.tokens)), "n_range": n_range} if terms else {}
    info = {"documents": len(data), "relevant": sum(data.labels), "form": form}
    return RelevanceMap(a, b, dict(settings), fitted_on, info, **terms, **ranges)


def map_relevance(fit: RelevanceMap, data: LabelledScores) -> list[float]:
    """``fit``'s relevance of every score of ``data``."""
    from ..scoring import relevance

    return [relevance(x, *fit.terms(t, n)) for x, t, n in zip(data.scores, data.tokens, data.sizes)]


@dataclass(frozen=True)
class Reliability:
    """Calibration of predicted relevance ``p`` against labels: ECE, the bins of a reliability diagram, and
    precision / recall of ``p >= 0.5``."""

    documents: int
    relevant: int
    ece: float
    bins: list[dict[str, float]]
    precision: float | None
    recall: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "documents": self.documents,
            "relevant": self.relevant,
            "ece": round(self.ece, 4),
            "precision@0.5": None if self.precision is None else round(self.precision, 4),
            "recall@0.5": None if self.recall is None else round(self.recall, 4),
            "bins": [{k: round(v, 4) if isinstance(v, float) else v for k, v in b.items()} for b in self.bins],
        }


def reliability(p: Sequence[float], y: Sequence[int], bins: int = 10) -> Reliability:
    """ECE over ``bins`` equal-width bins (weighted by count), the non-empty bins, and P / R at 0.5."""
    pairs = list(zip(p, y))
    rows, ece = [], 0.0
    for k in range(bins):
        lo, hi = k / bins, (k + 1) / bins
        inside = [(pi, yi) for pi, yi in pairs if lo <= pi < hi or (k == bins - 1 and pi == 1.0)]
        if not inside:
            continue
        conf = sum(pi for pi, _ in inside) / len(inside)
        frac = sum(yi for _, yi in inside) / len(inside)
        ece += len(inside) / len(pairs) * abs(conf - frac)
        rows.append({"lo": lo, "hi": hi, "n": len(inside), "mean_p": conf, "frac_relevant": frac})
    predicted = [yi for pi, yi in pairs if pi >= 0.5]
    positives = sum(yi for _, yi in pairs)
    return Reliability(
        len(pairs),
        positives,
        ece,
        rows,
        sum(predicted) / len(predicted) if predicted else None,
        sum(predicted) / positives if positives else None,
    )


def labelled_scores(
    reranker: Reranker,
    datasets: Sequence[tuple[Dataset, Sequence[str] | None]],
    depth: int = 20,
    progress: Callable[[int, int], None] | None = None,
    sizes: Sequence[int] | None = None,
) -> LabelledScores:
    """The engine's raw scores of each query's first-stage top ``n`` for every list size ``n`` of ``sizes`` (default
    ``depth``, ``depth // 2`` and ``depth // 4``: a map that reads the list's size must see several), passed best
    first as a pipeline does, with each document's token count, its list's size and its label (judged relevant:
    grade > 0), over the given (data set, query ids) pairs; empty documents are left out (their score is -inf)."""
    sizes = sorted({n for n in (sizes or (depth, depth // 2, depth // 4)) if n >= 1}, reverse=True)
    out = LabelledScores([], [], [], [], [])
    total = sum(len(q) if q is not None else len(ds.query_ids) for ds, q in datasets)
    done = 0
    for ds, qids in datasets:
        cands, _ = first_stage(ds)
        for q in qids if qids is not None else ds.query_ids:
            c = cands.get(q)
            ids = [d for d in (c.doc_ids if c else []) if d in ds.corpus][: sizes[0]]
            for n in sizes:
                if not ids[:n] or (n < sizes[0] and n >= len(ids)):
                    continue  # a pool shorter than n was scored at its own size already
                texts = [ds.doc_text(d) for d in ids[:n]]
                tokens = [doc.tokens for doc in reranker.prepare(texts)]
                for d, s, t in zip(ids, reranker.score(ds.queries[q], texts), tokens):
                    if math.isfinite(s):
                        out.scores.append(s)
                        out.tokens.append(t)
                        out.sizes.append(len(texts))
                        out.labels.append(1 if ds.qrels.get(q, {}).get(d, 0) > 0 else 0)
                        out.queries.append(f"{ds.name}/{q}")
            done += 1
            if progress is not None:
                progress(done, total)
    return out


def calibrate(
    reranker: Reranker,
    datasets: Sequence[tuple[Dataset, Sequence[str]]],
    depth: int = 20,
    progress: Callable[[int, int], None] | None = None,
    form: str = "score",
) -> tuple[HeadList, Reliability]:
    """``reranker``'s head list with a relevance map for its ``attention`` mode fitted on the labelled ``datasets``
    (each with the query ids to use; lists of ``depth``, ``depth // 2`` and ``depth // 4`` documents), scored with
    the reranker's own settings, which the map records (``FIT_SETTINGS``); and the map's reliability on the data it
    was fitted on. ``form``: :data:`FORMS`. Data without both relevant and non-relevant documents is an
    :class:`~core_rerank.InvalidInputError`."""
    from dataclasses import replace

    from ..errors import InvalidInputError
    from ..heads import FIT_SETTINGS

    data = labelled_scores(reranker, datasets, depth, progress)
    fitted_on = ", ".join(f"{ds.name}/{ds.split} ({len(q)} q)" for ds, q in datasets)
    settings = {name: getattr(reranker.settings, name) for name in FIT_SETTINGS}
    mode = reranker.settings.attention
    try:
        fit = fit_relevance_map(data, settings, f"{fitted_on}; first-stage top {depth}, best first", form)
    except ValueError as exc:
        raise InvalidInputError(f"cannot fit a relevance map: {exc}") from None
    check = reliability(map_relevance(fit, data), data.labels)
    fit = replace(fit, info={**fit.info, "attention": mode, "ece_fit": round(check.ece, 4)})
    slot = "block_relevance_map" if mode == "block" else "relevance_map"
    return replace(reranker.head_list, **{slot: fit}), check
