"""HTTP errors of the server: one exception type, one JSON shape, and the map from the engine's typed errors.

Every error answer is ``{"error": message, "error_type": kind}`` with the status code re-ranking clients expect
(the ``cohere`` SDK, for one, raises a different exception per code). Input the engine refuses
(:class:`~core_rerank.InvalidInputError` and its subclasses) is a 422, never a 500.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..errors import ContextLengthError, CoreRerankError, InvalidInputError, TooManyDocumentsError

__all__ = ["ApiError", "from_engine_error"]


class ApiError(Exception):
    """An HTTP error answer: ``status``, a short machine-readable ``error_type`` and a message for people.

    ``headers`` go out with it (``Retry-After`` on 429 and 503, ``WWW-Authenticate`` on 401)."""

    def __init__(self, status: int, error_type: str, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message
        self.headers = dict(headers or {})

    def body(self) -> dict[str, str]:
        return {"error": self.message, "error_type": self.error_type}


def validation(message: str) -> ApiError:
    return ApiError(422, "Validation", message)


def from_engine_error(exc: CoreRerankError) -> ApiError:
    """The answer for an error the engine raised while scoring a request: its input errors are the caller's
    (422), anything else is the server's (500, with the engine's message)."""
    if isinstance(exc, TooManyDocumentsError):
        return ApiError(422, "TooManyDocuments", str(exc))
    if isinstance(exc, ContextLengthError):
        return ApiError(422, "ContextLength", str(exc))
    if isinstance(exc, InvalidInputError):
        return validation(str(exc))
    return ApiError(500, type(exc).__name__, str(exc))
