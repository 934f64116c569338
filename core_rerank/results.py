"""Ranking results: plain, indexable, easy to turn into dicts."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, overload

if TYPE_CHECKING:
    from .highlights import Compression, Highlight

__all__ = ["RankResult", "RankedResults"]


@dataclass(frozen=True)
class RankResult:
    """One ranked document.

    ``index`` is its position in the input list (``corpus_id`` is an alias). ``score`` is the raw
    N/A-contrasted attention score (higher is more relevant; unbounded, may be negative; ``-inf`` for an
    empty document, which ranks last). ``relevance`` is the calibrated probability that the document is
    relevant, in [0, 1]: a monotone map of its own ``score`` fitted on labelled training data for the head
    list (comparable across queries and list sizes; a lone irrelevant document stays low), ``None`` when the
    head list has no fitted map. ``normalized_score`` is the softmax of the scores over this list's
    candidates (sums to 1 over the list; 0 for an empty document): a share, not a probability.
    ``truncated`` says the document was cut to the per-document token budget before scoring.
    When the caller passed the first stage's own scores (``first_stage_scores``), ``score`` is their fusion
    with the attention (:func:`core_rerank.scoring.fuse`, unitless), ``attention_score`` keeps the raw
    attention score and ``first_stage_score`` the score given; otherwise ``attention_score == score``.
    """

    index: int
    score: float
    normalized_score: float
    rank: int
    text: str
    document: Any
    truncated: bool = False
    tokens: int = 0
    window: int = 0
    relevance: float | None = None
    attention_score: float | None = None
    first_stage_score: float | None = None
    highlights: tuple[Highlight, ...] | None = None
    compression: Compression | None = None

    @property
    def best_sentence(self) -> Highlight | None:
        """The highest-scoring of ``highlights`` (None without highlights or for an empty document)."""
        if not self.highlights:
            return None
        return max(self.highlights, key=lambda h: h.score)

    @property
    def corpus_id(self) -> int:
        return self.index

    @property
    def relevance_score(self) -> float:
        """The [0, 1] score framework wrappers (and services) report: the calibrated ``relevance`` when the head
        list has a fitted map, else the list-relative ``normalized_score``."""
        return self.relevance if self.relevance is not None else self.normalized_score

    @property
    def json_attention_score(self) -> float | None:
        """``attention_score`` as JSON can carry it (``None`` for an empty document)."""
        return _json_number(self.attention_score)

    @property
    def json_score(self) -> float | None:
        """``score`` as JSON can carry it: ``None`` for an empty document (JSON has no infinity)."""
        return self.score if math.isfinite(self.score) else None

    def to_dict(self) -> dict[str, Any]:
        """sentence-transformers style: ``corpus_id``, ``score`` and the rest; valid JSON as it is
        (``score`` is ``None`` for an empty document)."""
        return {
            "corpus_id": self.index,
            "score": self.json_score,
            "relevance": self.relevance,
            "attention_score": _json_number(self.attention_score),
            "first_stage_score": self.first_stage_score,
            "normalized_score": self.normalized_score,
            "rank": self.rank,
            "text": self.text,
            "truncated": self.truncated,
            **({"highlights": [h.to_dict() for h in self.highlights]} if self.highlights is not None else {}),
            **({"compression": self.compression.to_dict()} if self.compression is not None else {}),
        }


def _json_number(value: float | None) -> float | None:
    return value if value is None or math.isfinite(value) else None


class RankedResults(Sequence[RankResult]):
    """Results best first; index it, slice it, iterate it, or look up by input position."""

    def __init__(self, query: str, results: Sequence[RankResult], num_windows: int = 0, head_list: str = ""):
        self.query = query
        self.results = list(results)
        self.num_windows = num_windows
        self.head_list = head_list

    @overload
    def __getitem__(self, i: int) -> RankResult: ...
    @overload
    def __getitem__(self, i: slice) -> list[RankResult]: ...
    def __getitem__(self, i):
        return self.results[i]

    def __len__(self) -> int:
        return len(self.results)

    def __iter__(self) -> Iterator[RankResult]:
        return iter(self.results)

    def select(self, top_n: int | None = None, min_relevance_score: float | None = None) -> list[RankResult]:
        """The best ``top_n`` results whose ``relevance_score`` reaches ``min_relevance_score`` (the filter
        applies first): how framework wrappers pick what they return."""
        kept = [r for r in self.results if min_relevance_score is None or r.relevance_score >= min_relevance_score]
        return kept if top_n is None else kept[:top_n]

    def by_index(self, index: int) -> RankResult:
        """The result of the document at input position ``index``."""
        for r in self.results:
            if r.index == index:
                return r
        raise KeyError(f"no result for input index {index}")

    @property
    def indices(self) -> list[int]:
        """Input positions, best first."""
        return [r.index for r in self.results]

    def to_dicts(self) -> list[Mapping[str, Any]]:
        return [r.to_dict() for r in self.results]

    def __repr__(self) -> str:
        head = ", ".join(f"{r.index}:{r.score:.4g}" for r in self.results[:5])
        more = ", ..." if len(self.results) > 5 else ""
        return f"RankedResults(query={self.query!r}, [{head}{more}])"
