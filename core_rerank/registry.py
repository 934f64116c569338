"""Process-wide reuse of rerankers by their settings, for framework wrappers and services.

``shared_reranker(**settings)`` returns the same :class:`Reranker` for equal settings, so wrappers
can stay plain serializable configuration and look their engine up on each call. (Loaded models are
shared one level lower as well: rerankers whose settings differ only in, say, ``max_doc_tokens`` still
use one loaded model.) Each setting loads on its own: a slow load never blocks calls that use another
reranker. :func:`clear_cache` forgets them all, so their memory can be freed.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

from .once import OncePerKey

if TYPE_CHECKING:
    from .reranker import Reranker

__all__ = ["ENGINE_SETTINGS", "clear_cache", "reranker_for", "shared_reranker"]

ENGINE_SETTINGS = (
    "model",
    "heads",
    "quantization",
    "dtype",
    "device",
    "max_doc_tokens",
    "max_tokens",
    "max_documents",
)
"""The ``Reranker`` arguments a framework wrapper exposes as its own fields."""

_rerankers: OncePerKey[Reranker] = OncePerKey()


def _freeze(value: Any) -> Hashable:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    return value if isinstance(value, Hashable) else repr(value)


def shared_reranker(**settings: Any) -> Reranker:
    """The process-wide :class:`Reranker` for these keyword settings (built on first request)."""
    from .reranker import Reranker

    return _rerankers.get(_freeze(settings), lambda: Reranker(**settings))


def clear_cache() -> int:
    """Let go of every shared reranker and loaded model, so their memory (CPU and GPU) is freed once
    nothing else holds them. A :class:`Reranker` you keep stays usable, and new rerankers with its
    settings share its model rather than load a second copy; models nobody holds are loaded again when
    next needed. Returns how many loaded models core-rerank was holding."""
    from .loading import clear_model_cache

    _rerankers.clear()
    models = clear_model_cache()
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return models


def reranker_for(config: Any) -> Reranker:
    """The shared reranker for an object (a framework wrapper) that has the ``ENGINE_SETTINGS`` attributes."""
    return shared_reranker(**{name: getattr(config, name) for name in ENGINE_SETTINGS})
