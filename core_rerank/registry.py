"""Process-wide reuse of rerankers by their settings, for framework wrappers and services.

``shared_reranker(**settings)`` returns the same :class:`Reranker` for equal settings, so wrappers
can stay plain serializable configuration and look their engine up on each call. (Loaded models are
shared one level lower as well: rerankers whose settings differ only in, say, ``max_doc_tokens`` still
use one loaded model.)
"""

from __future__ import annotations

import os
import threading
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .reranker import Reranker

__all__ = ["ENGINE_SETTINGS", "plain_setting", "reranker_for", "shared_reranker"]

ENGINE_SETTINGS = ("model", "heads", "quantization", "dtype", "device", "max_doc_tokens", "max_tokens")
"""The ``Reranker`` arguments a framework wrapper exposes as its own fields."""

_rerankers: dict[Hashable, Reranker] = {}
_lock = threading.Lock()


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

    key = _freeze(settings)
    with _lock:  # loading is rare and one model at a time is what 24 GiB allows anyway
        if key not in _rerankers:
            _rerankers[key] = Reranker(**settings)
        return _rerankers[key]


def reranker_for(config: Any) -> Reranker:
    """The shared reranker for an object (a framework wrapper) that has the ``ENGINE_SETTINGS`` attributes."""
    return shared_reranker(**{name: getattr(config, name) for name in ENGINE_SETTINGS})


def plain_setting(name: str, value: Any) -> Any:
    """An engine setting as plain data, so a wrapper's fields serialize and round-trip: paths as
    strings for ``model`` / ``heads``, a ``torch.dtype`` as its name (``"bfloat16"``) for ``dtype``."""
    if name in ("model", "heads") and isinstance(value, os.PathLike):
        return os.fspath(value)
    if name == "dtype" and value is not None and not isinstance(value, str):
        return str(value).removeprefix("torch.")
    return value
