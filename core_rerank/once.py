"""A process-wide map whose values are built once per key, without one key's build blocking another's."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["OncePerKey"]

V = TypeVar("V")


class OncePerKey(Generic[V]):
    """``get(key, build)`` returns the value built for ``key``, calling ``build`` at most once per key
    even when threads ask at the same time. Threads asking for other keys, or for keys already built,
    never wait for a build in progress (loading a model takes seconds to minutes).

    :meth:`clear` drops the map's own references, so values nobody else holds can be freed; a value
    still held elsewhere is found again by ``get`` instead of being built twice (one copy of a model)."""

    def __init__(self) -> None:
        self._values: dict[Hashable, V] = {}
        self._alive: weakref.WeakValueDictionary[Hashable, V] = weakref.WeakValueDictionary()
        self._building: dict[Hashable, threading.Lock] = {}
        self._lock = threading.Lock()  # guards the dicts, held only for dict operations
        self.builds = 0

    def _lookup(self, key: Hashable) -> V | None:
        value = self._values.get(key)
        if value is None:
            value = self._alive.get(key)
            if value is not None:
                self._values[key] = value
        return value

    def get(self, key: Hashable, build: Callable[[], V]) -> V:
        with self._lock:
            value = self._lookup(key)
            if value is not None:
                return value
            key_lock = self._building.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                value = self._lookup(key)
                if value is not None:
                    return value
            value = build()
            with self._lock:
                self._values[key] = self._alive[key] = value
                self._building.pop(key, None)
                self.builds += 1
            return value

    def clear(self) -> int:
        """Drop the map's references (builds in progress still finish); returns how many it held."""
        with self._lock:
            n = len(self._values)
            self._values.clear()
            return n

    def __len__(self) -> int:
        with self._lock:
            return len(self._values)
