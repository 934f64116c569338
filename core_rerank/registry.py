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

__all__ = ["ENGINE_SETTINGS", "clear_cache", "reranker_for", "settings_of", "shared_reranker"]

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


def settings_of(reranker: Reranker) -> dict[str, Any]:
    """The ``ENGINE_SETTINGS`` that describe ``reranker``, as a wrapper's fields hold them: a wrapper given a
    ready reranker shows (and serializes) these, so a rebuilt wrapper loads the same model with the same heads.
    ``heads`` is ``None`` for the model's bundled list, ``"all"``, or the ``(layer, head)`` pairs."""
    from .heads import find_bundled_head_list

    heads = reranker.head_list
    if heads.method == "all":
        head_setting: Any = "all"
    elif find_bundled_head_list(reranker.model_id) == heads:
        head_setting = None
    else:
        head_setting = [tuple(h) for h in heads.heads]
    return {
        "model": reranker.source.setting,
        "heads": head_setting,
        "quantization": reranker.quantization,
        "dtype": str(reranker.dtype).removeprefix("torch."),
        "device": reranker.device,
        "max_doc_tokens": reranker.max_doc_tokens,
        "max_tokens": reranker.max_tokens,
        "max_documents": reranker.max_documents,
    }


def reranker_for(config: Any) -> Reranker:
    """The reranker for an object (a framework wrapper) that has the ``ENGINE_SETTINGS`` attributes: the one
    it holds as ``config.reranker`` when set (its settings must still describe it), else the shared one."""
    settings = {name: getattr(config, name) for name in ENGINE_SETTINGS}
    held = getattr(config, "reranker", None)
    if held is None:
        return shared_reranker(**settings)
    changed = sorted(name for name, value in settings_of(held).items() if settings[name] != value)
    if changed:
        from .errors import InvalidInputError

        raise InvalidInputError(
            f"this {type(config).__name__} holds a ready Reranker, but its {', '.join(changed)} no longer describe "
            "it: the settings of a given reranker are its own. Build another Reranker (e.g. Reranker.from_model"
            "(model, tokenizer, max_doc_tokens=...)) and pass it, or drop reranker= to load by settings."
        )
    return held
