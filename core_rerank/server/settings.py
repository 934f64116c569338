"""What one server process serves and the limits it enforces: plain data, checked once, shown by ``GET /info``.

Kept free of FastAPI and torch so the command line can build and check it before importing either.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import InvalidInputError
from ..settings import DEFAULT_MAX_DOCUMENTS, EngineSettings

__all__ = ["DEFAULT_PAYLOAD_LIMIT", "ServerSettings"]

DEFAULT_PAYLOAD_LIMIT = 2_000_000
"""Largest request body accepted, in bytes (2 MB, as text-embeddings-inference): 20 documents of 400 tokens are
~40 kB, so the limit only stops a corpus sent by mistake, before it is parsed."""


@dataclass(frozen=True)
class ServerSettings:
    """The reranker to serve and the serving limits of one ``core-rerank serve`` process.

    Args:
        engine: the reranker's :class:`~core_rerank.EngineSettings` (model, heads, dtype, device, quantization,
            ``max_doc_tokens``, ...). Ignored when the app is given a ready reranker.
        max_concurrent_requests: requests scored at once (worker threads). One model runs one forward pass at a
            time, so more than 1 only overlaps the tokenization of one request with another's forward pass.
        max_queue: requests that may wait for a worker; one more gets ``429 Overloaded`` with ``Retry-After``.
        max_batch_requests: most waiting requests one worker scores together when they share their documents (the
            same texts, budget and ``truncate``), as one ``Reranker.rank_batch`` call; ``1`` scores every request
            alone.
        max_client_batch_size: most documents in one request (422 beyond, before the engine sees them).
        timeout: seconds from a request's arrival to its answer (queue and scoring together) before it gets
            ``504``; ``None`` waits as long as it takes.
        payload_limit: largest request body in bytes (``413`` beyond).
        api_key: when set, every endpoint but ``/health`` and ``/metrics`` needs ``Authorization: Bearer KEY``.
    """

    engine: EngineSettings = field(default_factory=EngineSettings)
    max_concurrent_requests: int = 1
    max_queue: int = 16
    max_batch_requests: int = 8
    max_client_batch_size: int = DEFAULT_MAX_DOCUMENTS
    timeout: float | None = 60.0
    payload_limit: int = DEFAULT_PAYLOAD_LIMIT
    api_key: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.engine, EngineSettings):
            raise InvalidInputError(f"engine must be an EngineSettings, got {type(self.engine).__name__}")
        for name, low in (
            ("max_concurrent_requests", 1),
            ("max_queue", 0),
            ("max_batch_requests", 1),
            ("max_client_batch_size", 1),
            ("payload_limit", 1),
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise InvalidInputError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.timeout is not None and (
            isinstance(self.timeout, bool)
            or not isinstance(self.timeout, (int, float))
            or not math.isfinite(self.timeout)
            or self.timeout <= 0
        ):
            raise InvalidInputError(f"timeout must be a number of seconds > 0 or None, got {self.timeout!r}")
        if self.api_key is not None and not self.api_key.strip():
            raise InvalidInputError("api_key is empty: give a key, or none to serve without one")

    def limits(self) -> dict[str, Any]:
        """The limits as ``/info`` reports them (never the API key)."""
        out = asdict(self)
        for name in ("engine", "api_key"):
            out.pop(name)
        out["api_key_required"] = self.api_key is not None
        return out
