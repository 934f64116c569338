"""Field helpers the framework wrappers share: settings as plain data, and renamed settings that still work.

Kept light (no torch, no transformers), so importing a wrapper stays cheap.
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from collections.abc import Collection, Mapping, Sequence
from typing import Any

__all__ = [
    "check_reranker",
    "deprecated_alias",
    "finite_scores",
    "plain_setting",
    "renamed_setting",
    "settings_from_reranker",
]


def plain_setting(name: str, value: Any) -> Any:
    """An engine setting as plain data, so a wrapper's fields serialize and round-trip: paths as
    strings for ``model`` / ``heads``, a ``torch.dtype`` as its name (``"bfloat16"``) for ``dtype``."""
    if name in ("model", "heads") and isinstance(value, os.PathLike):
        return os.fspath(value)
    if name == "dtype" and value is not None and not isinstance(value, str):
        return str(value).removeprefix("torch.")
    return value


def caller_stacklevel(framework: Collection[str]) -> int:
    """``warnings.warn`` stacklevel of the first frame outside the ``framework`` packages (pydantic, the
    framework, the wrapper): the user's line, whatever path the framework took to get here."""
    level, frame = 2, sys._getframe(2)
    while frame is not None and frame.f_globals.get("__name__", "").partition(".")[0] in framework:
        level, frame = level + 1, frame.f_back
    return level


def renamed_setting(data: Any, old: str, new: str, meaning: str, framework: Collection[str]) -> Any:
    """Body of a pydantic ``mode="before"`` model validator: a setting given under its deprecated name
    ``old`` becomes ``new``, with a ``DeprecationWarning`` at the caller's line; giving both is an error."""
    if not isinstance(data, Mapping) or old not in data:
        return data
    if new in data:
        raise ValueError(f"give {new} only: {old} is its deprecated name")
    warnings.warn(
        f"CoReRerank({old}=...) is deprecated: use {new}=... (same meaning: {meaning})",
        DeprecationWarning,
        stacklevel=caller_stacklevel(framework),
    )
    data = dict(data)
    data[new] = data.pop(old)
    return data


def deprecated_alias(old: str, new: str, framework: Collection[str]) -> property:
    """A property that reads and sets ``new`` under the deprecated name ``old``, warning each time."""
    message = f"CoReRerank.{old} is deprecated: use {new}"

    def get(self: Any) -> Any:
        warnings.warn(message, DeprecationWarning, stacklevel=caller_stacklevel(framework))
        return getattr(self, new)

    def set_(self: Any, value: Any) -> None:
        warnings.warn(message, DeprecationWarning, stacklevel=caller_stacklevel(framework))
        setattr(self, new, value)

    return property(get, set_, doc=f"Deprecated name of ``{new}`` (readable and settable for one release).")


def check_reranker(value: Any) -> Any:
    """Body of a ``reranker`` field validator: ``None`` or a :class:`core_rerank.Reranker`."""
    if value is None:
        return None
    from .reranker import Reranker  # a Reranker exists, so torch is loaded already: no cost to the light import

    if not isinstance(value, Reranker):
        raise ValueError(
            f"reranker must be a core_rerank.Reranker (e.g. Reranker.from_model(model, tokenizer)), "
            f"got {type(value).__name__}"
        )
    return value


def settings_from_reranker(data: Any) -> Any:
    """Body of a pydantic ``mode="before"`` model validator: with ``reranker=`` given, the engine settings are
    the reranker's (``registry.settings_of``). One given as well must agree with it: it cannot be honoured."""
    if not isinstance(data, Mapping) or data.get("reranker") is None:
        return data
    from .registry import settings_of

    held = settings_of(check_reranker(data["reranker"]))
    differ = [name for name, value in held.items() if name in data and _normal(name, data[name]) != value]
    if differ:
        raise ValueError(
            f"give {', '.join(differ)} to the Reranker, not with reranker=...: a ready reranker's settings are "
            f"its own (it has {', '.join(f'{n}={held[n]!r}' for n in differ)})"
        )
    return {**data, **held}


def _normal(name: str, value: Any) -> Any:
    value = plain_setting(name, value)
    if name == "heads" and isinstance(value, (list, tuple)):
        return [tuple(h) if isinstance(h, list) else h for h in value]
    return value


def finite_scores(values: Sequence[Any]) -> list[float] | None:
    """The retriever's scores a wrapper fuses: every value a finite number, else ``None`` (fusion off for
    that call: one missing score must not fail the pipeline)."""
    ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)
    return [float(v) for v in values] if ok else None
