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
    from ..heads import HeadList
    from ..reranker import Reranker

__all__ = ["Reliability", "calibrate", "fit_logistic", "labelled_scores", "reliability"]


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
) -> tuple[list[float], list[int]]:
    """The engine's raw scores of each query's first-stage top ``depth`` (passed best first, as a pipeline
    does) and their labels (judged relevant: grade > 0), over the given (data set, query ids) pairs; empty
    documents are left out (their score is -inf)."""
    xs: list[float] = []
    ys: list[int] = []
    total = sum(len(q) if q is not None else len(ds.query_ids) for ds, q in datasets)
    done = 0
    for ds, qids in datasets:
        cands, _ = first_stage(ds)
        for q in qids if qids is not None else ds.query_ids:
            c = cands.get(q)
            ids = [d for d in (c.doc_ids if c else []) if d in ds.corpus][:depth]
            if ids:
                scores = reranker.score(ds.queries[q], [ds.doc_text(d) for d in ids])
                for d, s in zip(ids, scores):
                    if math.isfinite(s):
                        xs.append(s)
                        ys.append(1 if ds.qrels.get(q, {}).get(d, 0) > 0 else 0)
            done += 1
            if progress is not None:
                progress(done, total)
    return xs, ys


def calibrate(
    reranker: Reranker,
    datasets: Sequence[tuple[Dataset, Sequence[str]]],
    depth: int = 20,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[HeadList, Reliability]:
    """``reranker``'s head list with a relevance map fitted on the labelled ``datasets`` (each with the query ids to
    use), scored with the reranker's own settings, which the map records (``FIT_SETTINGS``); and the map's
    reliability on the data it was fitted on. Data without both relevant and non-relevant documents is an
    :class:`~core_rerank.InvalidInputError`."""
    from dataclasses import replace

    from ..errors import InvalidInputError
    from ..heads import FIT_SETTINGS, RelevanceMap
    from ..scoring import relevance

    xs, ys = labelled_scores(reranker, datasets, depth, progress)
    try:
        a, b = fit_logistic(xs, ys)
    except ValueError as exc:
        raise InvalidInputError(f"cannot fit a relevance map: {exc}") from None
    check = reliability([relevance(x, a, b) for x in xs], ys)
    fitted_on = ", ".join(f"{ds.name}/{ds.split} ({len(q)} q)" for ds, q in datasets)
    fit = RelevanceMap(
        a,
        b,
        {name: getattr(reranker.settings, name) for name in FIT_SETTINGS},
        f"{fitted_on}; first-stage top {depth}, best first",
        {"documents": check.documents, "relevant": check.relevant, "ece_fit": round(check.ece, 4)},
    )
    return replace(reranker.head_list, relevance_map=fit), check
