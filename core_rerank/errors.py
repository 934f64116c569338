"""Typed errors: every failure the engine reports on purpose is one of these.

Each class also derives from the builtin a caller would naturally catch (``ValueError``,
``LookupError``, ``ImportError``, ``RuntimeError``), so generic handlers keep working.
"""

from __future__ import annotations

__all__ = [
    "CoreRerankError",
    "DependencyMissingError",
    "DeviceUnavailableError",
    "HeadListError",
    "HeadListMismatchError",
    "HeadListNotFoundError",
    "ModelNotFoundError",
]


class CoreRerankError(Exception):
    """Base class of all errors raised on purpose by core-rerank."""


class ModelNotFoundError(CoreRerankError, LookupError):
    """The named model cannot be found offline (not installed, not cached, not a file)."""


class HeadListError(CoreRerankError, ValueError):
    """A head list is malformed: bad JSON, wrong format version, missing or invalid fields."""


class HeadListNotFoundError(HeadListError, LookupError):
    """No head list is bundled for a model and none was given."""


class HeadListMismatchError(HeadListError):
    """A head list does not fit the loaded model (layer/head counts or indices out of range)."""


class DependencyMissingError(CoreRerankError, ImportError):
    """An optional dependency needed for the requested feature is not installed."""


class DeviceUnavailableError(CoreRerankError, RuntimeError):
    """The requested device or quantization cannot run on this machine."""
