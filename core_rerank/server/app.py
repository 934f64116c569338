"""The FastAPI app: one handler per route over injected state, and ``create_app``, which only assembles them.

``create_app(settings, engine)`` builds an app; uvicorn serves it (``core-rerank serve``), and Ray Serve can wrap
the same app with ``@serve.ingress``. Every handler reads the app's :class:`ServerState` (the settings, the
:class:`RerankService`, the :class:`Scheduler` and the metrics) through the ``server_state`` dependency.

Requests pass, in order: the API key (401), load shedding before the body is read (429), the body limit (413: a
body over it is read and dropped up to ``DRAIN_LIMIT``, so every client reads the answer), JSON and field
validation (422, 400 for an empty list), the model's readiness (503, also while shutting down), the queue (429),
scoring on a worker thread (504 past ``timeout``); waiting requests that share their documents are scored together
(one ``rank_batch`` call, ``max_batch_requests``), each still answered on its own. Every answer, an unexpected
exception's included, is JSON in one shape (:mod:`.errors`).
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from .errors import ApiError, validation
from .metrics import CONTENT_TYPE_LATEST, Metrics
from .scheduler import Abandoned, Overloaded, Scheduler, TimedOut
from .service import RerankService
from .settings import ServerSettings
from .wire import CohereV1Request, CohereV2Request, InfinityRequest, TeiRequest, parse

if TYPE_CHECKING:
    from ..reranker import Reranker

__all__ = ["DRAIN_LIMIT", "ServerState", "create_app"]

logger = logging.getLogger("core_rerank.server")

_ERROR_TYPE = "core_rerank.error_type"  # scope key: the error_type of the answer, for the metrics

DRAIN_LIMIT = 64 * 2**20
"""Bytes of a body over the payload limit that are read and dropped before the 413 goes out. A client that sends its
whole body before reading the answer (urllib, requests, httpx, the cohere SDK) would otherwise see its connection
reset instead of the 413; a body declared larger than this is refused at once and the connection closed."""


class JSON(JSONResponse):
    """JSON answers in ASCII: text a client sent with lone surrogates (which UTF-8 cannot encode) comes back escaped
    instead of failing, and a non-finite number is a defect that fails here rather than going out as invalid JSON."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


@dataclass
class ServerState:
    """Everything the handlers share: what is served and its limits, the service holding the reranker, the
    scheduler in front of it, and the metrics. ``start()`` begins loading once (at start-up, or on the first
    request where the ASGI server runs no lifespan events)."""

    settings: ServerSettings
    service: RerankService
    scheduler: Scheduler
    metrics: Metrics
    on_load_failure: Callable[[str], None] | None = None
    freeze_heap: bool = False
    _started: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        with self._lock:
            if self._started:
                return
            self._started = True
        if self.service.needs_loading:
            threading.Thread(target=self._load, name="core-rerank-load", daemon=True).start()
        else:
            self._loaded()

    def _load(self) -> None:
        self.service.load()
        self._loaded()

    def _loaded(self) -> None:
        ready = self.service.state == "ready"
        self.metrics.ready.set(1 if ready else 0)
        if not ready:
            if self.service.error is not None and self.on_load_failure is not None:
                self.on_load_failure(self.service.error)
            return
        if self.freeze_heap:
            gc.collect()  # garbage now is freed first; frozen objects are never collected
            gc.freeze()
        info = self.service.info()
        self.metrics.model.info(
            {
                "model": info["model"],
                "heads": info["heads"]["list"],
                "dtype": info["dtype"],
                "device": info["device"],
                "relevance_score": info["scores"]["relevance_score"],
            }
        )


def server_state(request: Request) -> ServerState:
    """The dependency every handler takes: the app's state."""
    return request.app.state.core


State = Annotated[ServerState, Depends(server_state)]


# ---------------------------------------------------------------------- errors: one JSON shape
def answer(request: Request, error: ApiError) -> JSON:
    request.scope[_ERROR_TYPE] = error.error_type
    return JSON(error.body(), status_code=error.status, headers=error.headers)


async def api_error(request: Request, exc: ApiError) -> JSON:
    return answer(request, exc)


async def http_error(request: Request, exc: StarletteHTTPException) -> JSON:
    kinds = {404: "NotFound", 405: "MethodNotAllowed"}
    kind = kinds.get(exc.status_code, "HTTPError")
    return answer(request, ApiError(exc.status_code, kind, str(exc.detail), getattr(exc, "headers", None)))


async def request_invalid(request: Request, exc: RequestValidationError) -> JSON:
    return answer(request, validation(f"invalid request: {exc.errors()}"))


async def unexpected(request: Request, exc: Exception) -> JSON:
    """A defect, not bad input: a JSON answer in the error shape (never a bare 500 page); the traceback is logged."""
    logger.error("unexpected error answering %s", request.url.path, exc_info=exc)
    return answer(request, ApiError(500, "Internal", f"internal error: {type(exc).__name__}: {exc}"))


class Observe:
    """Pure ASGI middleware: status, total time and failure reason of every HTTP request."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def sending(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            self.metrics.observe_request(scope["path"], status, time.perf_counter() - start, scope.get(_ERROR_TYPE))


# ---------------------------------------------------------------------- request checks
def authenticate(request: Request, state: State) -> None:
    key = state.settings.api_key
    if key is None:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), key.encode()):
        raise ApiError(
            401,
            "Unauthorized",
            "a valid API key is required: send 'Authorization: Bearer <key>'",
            {"WWW-Authenticate": "Bearer"},
        )


def overloaded(exc: Overloaded) -> ApiError:
    return ApiError(429, "Overloaded", f"the server is overloaded: {exc}", {"Retry-After": str(exc.retry_after)})


def shed(state: State) -> None:
    """Refuse at once, before the body is read, while every worker is busy and the queue is full (429): under
    overload the excess costs the server next to nothing. A request refused this way is not validated."""
    try:
        state.scheduler.shed()
    except Overloaded as exc:
        raise overloaded(exc) from None


async def _drained(chunks: Any, budget: int) -> bool:
    """Read and drop the rest of a body's chunks, at most ``budget`` bytes; whether it ended within them."""
    async for chunk in chunks:
        budget -= len(chunk)
        if budget < 0:
            return False
    return True


async def read_json(request: Request, limit: int) -> Any:
    """The body as JSON. A body over ``limit`` is a 413 whose answer every client can read: declared too large with
    ``Expect: 100-continue``, it is refused before the client sends it; otherwise it is read and dropped (up to
    ``DRAIN_LIMIT``; past that the connection is closed after the answer)."""
    too_large = ApiError(413, "PayloadTooLarge", f"the request body is over the {limit}-byte limit")
    declared = request.headers.get("content-length")
    chunks = request.stream()
    if declared is not None and declared.isdigit() and int(declared) > limit:
        expects = request.headers.get("expect", "").lower() == "100-continue"
        if expects or int(declared) > DRAIN_LIMIT or not await _drained(chunks, DRAIN_LIMIT):
            too_large.headers["Connection"] = "close"
        raise too_large
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > limit:  # a chunked body: the limit applies while reading; the rest is dropped
            if not await _drained(chunks, DRAIN_LIMIT - len(body)):
                too_large.headers["Connection"] = "close"
            raise too_large
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise validation(f"the request body is not valid JSON: {exc}") from None


async def until_disconnected(receive: Callable) -> None:
    """Completes when the client disconnects (the body is read already, so the next message is that)."""
    while (await receive())["type"] != "http.disconnect":
        pass


# ---------------------------------------------------------------------- the one re-ranking path
async def rerank(request: Request, state: ServerState, req: Any) -> JSON:
    """Score one parsed request of any wire format and render its answer in that format."""
    state.start()
    settings, service = state.settings, state.service
    job = req.job()
    if len(job.texts) > settings.max_client_batch_size:
        raise ApiError(
            422,
            "TooManyDocuments",
            f"{len(job.texts)} documents in one request; this server takes "
            f"at most {settings.max_client_batch_size} (--max-client-batch-size)",
        )
    service.require_ready()
    scored = await _scheduled(request, state, job)
    state.metrics.documents.inc(len(job.texts))
    state.metrics.tokens.inc(scored.tokens)
    body = req.render(job, scored, service.budget(job))
    return JSON(body, headers={"X-Score-Kind": "raw" if req.raw else scored.score_kind})


async def _scheduled(request: Request, state: ServerState, job: Any) -> Any:
    """Run ``job`` through the scheduler (batched with waiting jobs of the same documents), each outcome an answer."""
    settings, service = state.settings, state.service
    gone = asyncio.ensure_future(until_disconnected(request.receive))
    try:
        return await state.scheduler.run(
            lambda: service.run(job), timeout=settings.timeout, abandon=gone, key=service.batch_key(job), item=job
        )
    except Overloaded as exc:
        raise overloaded(exc) from None
    except TimedOut as exc:
        where = "waiting in the queue" if exc.stage == "queue" else "while scoring"
        raise ApiError(
            504, "Timeout", f"no answer within the server's timeout of {settings.timeout} s (timed out {where})"
        ) from None
    except Abandoned:
        raise ApiError(499, "ClientDisconnected", "the client disconnected before its turn") from None
    except ApiError:
        raise
    except Exception as exc:  # a defect, not bad input: answer in the error shape, keep the traceback in the log
        logger.exception("scoring failed")
        raise ApiError(500, "Internal", f"internal error: {type(exc).__name__}: {exc}") from None
    finally:
        gone.cancel()


router = APIRouter()
protected = [Depends(authenticate)]


@router.post("/rerank", dependencies=[*protected, Depends(shed)], summary="TEI (texts) or Infinity (documents)")
async def rerank_tei_or_infinity(request: Request, state: State) -> JSON:
    body = await read_json(request, state.settings.payload_limit)
    if isinstance(body, dict) and "texts" not in body and "documents" in body:
        return await rerank(request, state, parse(InfinityRequest, body))
    return await rerank(request, state, parse(TeiRequest, body))


@router.post("/v1/rerank", dependencies=[*protected, Depends(shed)], summary="Jina / Cohere v1 / vLLM re-ranking")
async def rerank_v1(request: Request, state: State) -> JSON:
    body = await read_json(request, state.settings.payload_limit)
    return await rerank(request, state, parse(CohereV1Request, body))


@router.post("/v2/rerank", dependencies=[*protected, Depends(shed)], summary="Cohere v2 re-ranking")
async def rerank_v2(request: Request, state: State) -> JSON:
    body = await read_json(request, state.settings.payload_limit)
    return await rerank(request, state, parse(CohereV2Request, body))


@router.get("/health", summary="200 once the model is loaded, 503 before and while shutting down (public)")
async def health(state: State) -> JSON:
    state.start()
    service = state.service
    status = service.state
    body = {"status": status, **({"error": service.error} if service.error else {})}
    return JSON(body, status_code=200 if status == "ready" else 503)


@router.get("/info", dependencies=protected, summary="Model, heads, layers, dtype, scores and limits")
async def info(state: State) -> JSON:
    return JSON(state.service.info())


@router.get("/metrics", summary="Prometheus metrics (public)")
async def prometheus(state: State) -> Response:
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


# ---------------------------------------------------------------------- assembly
def create_app(
    settings: ServerSettings | None = None,
    engine: Reranker | Callable[[], Reranker] | None = None,
    *,
    on_load_failure: Callable[[str], None] | None = None,
    freeze_heap: bool = False,
) -> FastAPI:
    """A FastAPI app serving one reranker.

    Args:
        settings: limits and, without ``engine``, the reranker to load (:class:`ServerSettings` defaults otherwise).
        engine: a ready ``Reranker`` (served at once), a callable building one, or ``None`` to load
            ``settings.engine``. A callable or ``None`` loads on a thread when the app starts: ``/health`` answers
            503 until then, so the port is open (and probes answer) during a minutes-long load.
        on_load_failure: called with the error when loading fails (the command line stops the server).
        freeze_heap: once the model is loaded, move every object alive then out of the garbage collector's sight
            (``gc.freeze()``): a process holding torch and transformers tracks ~400,000 objects, and each full
            collection of them stalled the event loop for ~0.2 s (1 s under load), delaying even instant answers
            such as 429. For a process that only serves (the command line, a Ray Serve replica), not for a host
            application that imports the app.
    """
    settings = settings or ServerSettings()
    service = RerankService(settings, engine)
    metrics = Metrics(lambda: scheduler.waiting, lambda: scheduler.running, service.kv_cache_stats)
    scheduler = Scheduler(
        settings.max_concurrent_requests,
        settings.max_queue,
        max_batch=settings.max_batch_requests,
        run_batch=service.run_batch,
        on_queue_time=metrics.queue_time.observe,
        on_run_time=metrics.inference_time.observe,
        on_batch_size=metrics.batch_size.observe,
    )
    state = ServerState(settings, service, scheduler, metrics, on_load_failure, freeze_heap)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state.start()
        yield
        scheduler.close()

    app = FastAPI(
        title="core-rerank",
        summary="Attention-head document re-ranking, in the wire formats of TEI, Infinity, Jina / Cohere / vLLM",
        lifespan=lifespan,
    )
    app.state.core = state
    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, request_invalid)
    app.add_exception_handler(Exception, unexpected)
    app.add_middleware(Observe, metrics=metrics)
    app.include_router(router)
    return app
