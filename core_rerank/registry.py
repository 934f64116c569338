"""Process-wide reuse of rerankers by their settings, for framework wrappers and services.

``shared_reranker(settings)`` returns the same :class:`Reranker` for equal :class:`EngineSettings`, so wrappers
can stay plain serializable configuration and look their engine up on each call. (Loaded models are shared one
level lower as well: rerankers whose settings differ only in, say, ``max_doc_tokens`` still use one loaded model.)
Each setting loads on its own: a slow load never blocks calls that use another reranker. :func:`clear_cache`
forgets them all, so their memory can be freed.
"""

from __future__ import annotations

import gc
from typing import TYPE_CHECKING, Any

from .errors import InvalidInputError
from .once import OncePerKey
from .settings import EngineSettings

if TYPE_CHECKING:
    from .reranker import Reranker

__all__ = ["clear_cache", "reranker_for", "shared_reranker"]

_rerankers: OncePerKey[Reranker] = OncePerKey()


def shared_reranker(settings: EngineSettings | None = None, **options: Any) -> Reranker:
    """The process-wide :class:`Reranker` for ``settings`` (or for keyword options, as ``Reranker(**options)``
    takes them), built on first request."""
    from .reranker import Reranker

    if settings is None:
        settings = EngineSettings.from_options(options)
    elif options:
        raise InvalidInputError("give shared_reranker settings or keyword options, not both")
    return _rerankers.get(settings, lambda: Reranker.from_settings(settings))


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


def reranker_for(settings: EngineSettings, held: Reranker | None = None, owner: str = "this wrapper") -> Reranker:
    """The reranker a framework wrapper scores with: ``held`` (a ready reranker it was given) when set, whose
    settings must still be ``settings``, else the shared one for ``settings``."""
    if held is None:
        return shared_reranker(settings)
    if held.settings != settings:
        changed = sorted(k for k, v in settings.to_dict().items() if getattr(held.settings, k) != v)
        raise InvalidInputError(
            f"{owner} holds a ready Reranker, but its {', '.join(changed)} no longer describe it: the settings of a "
            "given reranker are its own. Build another Reranker (e.g. Reranker.from_model(model, tokenizer, "
            "max_doc_tokens=...) or reranker.with_options(...)) and pass it, or drop reranker= to load by settings."
        )
    return held
