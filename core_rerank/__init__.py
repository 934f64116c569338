"""core-rerank: a decoder LLM's own attention as a fast, accurate document re-ranker.

    >>> from core_rerank import Reranker
    >>> rr = Reranker()  # embedded SmolLM2-135M-Instruct + its bundled head list, offline
    >>> rr.rank("how do I copy files?", docs, top_n=3)

Every option of the engine is a field of :class:`EngineSettings`; ``Reranker(model, heads, **options)`` takes them.

Heavy modules (torch, transformers) load on first use of ``Reranker``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import (
    ContextLengthError,
    CoreRerankError,
    DependencyMissingError,
    DeviceUnavailableError,
    HeadListError,
    HeadListMismatchError,
    HeadListNotFoundError,
    InvalidInputError,
    InvalidInputTypeError,
    ModelAccessError,
    ModelCacheError,
    ModelDownloadError,
    ModelLoadError,
    ModelNotFoundError,
    PackagedModelIntegrityError,
    QuantizationError,
    ScoringError,
    TooManyDocumentsError,
    UnsupportedModelError,
)
from .heads import HeadList, bundled_head_lists, load_head_list
from .registry import clear_cache, shared_reranker
from .results import RankedResults, RankResult
from .settings import EngineSettings

if TYPE_CHECKING:
    from .reranker import Reranker

__version__ = "0.1.0"

__all__ = [
    "ContextLengthError",
    "CoreRerankError",
    "DependencyMissingError",
    "DeviceUnavailableError",
    "EngineSettings",
    "HeadList",
    "HeadListError",
    "HeadListMismatchError",
    "HeadListNotFoundError",
    "InvalidInputError",
    "InvalidInputTypeError",
    "ModelAccessError",
    "ModelCacheError",
    "ModelDownloadError",
    "ModelLoadError",
    "ModelNotFoundError",
    "PackagedModelIntegrityError",
    "QuantizationError",
    "RankResult",
    "RankedResults",
    "Reranker",
    "ScoringError",
    "TooManyDocumentsError",
    "UnsupportedModelError",
    "bundled_head_lists",
    "clear_cache",
    "load_head_list",
    "shared_reranker",
]


def __getattr__(name: str) -> Any:
    if name == "Reranker":
        from .reranker import Reranker

        return Reranker
    raise AttributeError(f"module 'core_rerank' has no attribute {name!r}")
