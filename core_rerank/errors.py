"""Typed errors: every failure core-rerank reports on purpose is a :class:`CoreRerankError`.

Each class also derives from the builtin a caller would naturally catch (``ValueError``, ``TypeError``,
``LookupError``, ``ImportError``, ``RuntimeError``, ``ConnectionError``, ``PermissionError``), so generic
handlers keep working. The tree::

    CoreRerankError
    ├── InvalidInputError (ValueError)           a query, document list or setting that cannot be used
    │   ├── InvalidInputTypeError (TypeError)    ... because it has the wrong type
    │   ├── TooManyDocumentsError                more documents than ``max_documents``
    │   └── ContextLengthError                   a query or prompt that cannot fit ``max_tokens``
    ├── ModelLoadError (RuntimeError)            the model could not be loaded; subclasses say why
    │   ├── ModelNotFoundError (LookupError)     no such model, or not installed / not cached offline
    │   ├── ModelDownloadError (ConnectionError) the Hugging Face Hub could not be reached
    │   ├── ModelAccessError (PermissionError)   a gated or private repository: log in, accept its terms
    │   ├── QuantizationError                    a quantization setting or config the model cannot load with
    │   ├── UnsupportedModelError                not a decoder core-rerank can read (no fast tokenizer, ...)
    │   ├── PackagedModelIntegrityError          packaged weights whose SHA-256 is not the pinned one
    │   └── ModelCacheError (OSError)            core-rerank's cache directory cannot be written
    ├── HeadListError (ValueError)               a malformed head list
    │   ├── HeadListNotFoundError (LookupError)  no list bundled for the model and none given
    │   └── HeadListMismatchError                a list made for another model
    ├── ScoringError (RuntimeError)              the forward pass gave no usable attention signal
    ├── DependencyMissingError (ImportError)     an optional package a feature needs
    └── DeviceUnavailableError (RuntimeError)    the requested device or quantization cannot run here
"""

from __future__ import annotations

__all__ = [
    "ContextLengthError",
    "CoreRerankError",
    "DependencyMissingError",
    "DeviceUnavailableError",
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
    "ScoringError",
    "TooManyDocumentsError",
    "UnsupportedModelError",
]


class CoreRerankError(Exception):
    """Base class of all errors raised on purpose by core-rerank."""


class InvalidInputError(CoreRerankError, ValueError):
    """A query, document list or setting a caller passed cannot be used (the message says which and why)."""


class InvalidInputTypeError(InvalidInputError, TypeError):
    """A query, document or setting of the wrong type."""


class TooManyDocumentsError(InvalidInputError):
    """More documents in one call than the reranker's ``max_documents`` allows."""


class ContextLengthError(InvalidInputError):
    """A query (with the prompt around it) too long for ``max_tokens``, or a prompt that would exceed it."""


class ModelLoadError(CoreRerankError, RuntimeError):
    """The model could not be loaded; the subclass names the cause, the message the fix."""


class ModelNotFoundError(ModelLoadError, LookupError):
    """The named model does not exist, or is not installed / not in the local cache while offline."""


class ModelDownloadError(ModelLoadError, ConnectionError):
    """The model is not cached locally and the Hugging Face Hub could not be reached."""


class ModelAccessError(ModelLoadError, PermissionError):
    """The model's repository is gated or private: accept its terms on the Hub and log in (``hf auth login``)."""


class QuantizationError(ModelLoadError):
    """The quantization asked for (or the model's own quantization config) cannot be loaded."""


class UnsupportedModelError(ModelLoadError):
    """The model is not a decoder core-rerank can read (e.g. it has no fast tokenizer)."""


class PackagedModelIntegrityError(ModelLoadError):
    """A packaged model's weights do not have the SHA-256 this core-rerank release pins for them."""


class ModelCacheError(ModelLoadError, OSError):
    """core-rerank's cache directory (``CORE_RERANK_CACHE``) cannot be written: read-only, full, or not a
    directory. The message names the directory."""


class HeadListError(CoreRerankError, ValueError):
    """A head list is malformed: bad JSON, wrong format version, missing or invalid fields."""


class HeadListNotFoundError(HeadListError, LookupError):
    """No head list is bundled for a model and none was given."""


class HeadListMismatchError(HeadListError):
    """A head list does not fit the loaded model: made for another model, or indices out of range."""


class ScoringError(CoreRerankError, RuntimeError):
    """The forward pass gave no usable signal for a selected head (never seen, or not finite)."""


class DependencyMissingError(CoreRerankError, ImportError):
    """An optional dependency needed for the requested feature is not installed."""


class DeviceUnavailableError(CoreRerankError, RuntimeError):
    """The requested device or quantization cannot run on this machine."""
