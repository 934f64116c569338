"""The FastAPI app: routes, authentication, limits, error answers and metrics around one :class:`RerankService`.

``create_app(settings, engine)`` builds an app; uvicorn serves it (``core-rerank serve``), and Ray Serve can wrap
the same app with ``@serve.ingress``. Requests pass, in order: the API key (401), the body limit (413), JSON and
field validation (422, 400 for an empty list), the model's readiness (503), the queue (429), scoring on a worker
thread (504 past ``timeout``); waiting requests that share their documents are scored together (one
``rank_batch`` call, ``max_batch_requests``), each still answered on its own. No input produces a 500.
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
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI, Request
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

__all__ = ["create_app"]

logger = logging.getLogger("core_rerank.server")

_ERROR_TYPE = "core_rerank.error_type"  # scope key: the error_type of the answer, for the metrics


class JSON(JSONResponse):
    """JSON answers in ASCII: text a client sent with lone surrogates (which UTF-8 cannot encode) comes back escaped
    instead of failing, and a non-finite number is a defect that fails here rather than going out as invalid JSON."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def create_app(
    settings: ServerSettings | None = None,
    engine: Reranker | Callable[[], Reranker] | None = None,
    *,
    on_load_failure: Callable[[str], None] | None = None,
    freeze_heap: bool = False,
) -> FastAPI:
    """A FastAPI app serving one reranker.

    Args:
        settings: limits and, without ``engine``, the model to load (:class:`ServerSettings` defaults otherwise).
        engine: a ready ``Reranker`` (served at once), a callable building one, or ``None`` to load
            ``settings.model``. A callable or ``None`` loads on a thread when the app starts: ``/health`` answers
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
    metrics = Metrics(lambda: scheduler.waiting, lambda: scheduler.running)
    scheduler = Scheduler(
        settings.max_concurrent_requests,
        settings.max_queue,
        max_batch=settings.max_batch_requests,
        run_batch=service.run_batch,
        on_queue_time=metrics.queue_time.observe,
        on_run_time=metrics.inference_time.observe,
        on_batch_size=metrics.batch_size.observe,
    )
    starting = threading.Lock()
    started = False

    def loaded() -> None:
        metrics.ready.set(1 if service.state == "ready" else 0)
        info = service.info()
        if service.state == "ready":
            if freeze_heap:
                gc.collect()  # garbage now is freed first; frozen objects are never collected
                gc.freeze()
            metrics.model.info(
                {
                    "model": info["model"],
                    "heads": info["heads"]["list"],
                    "dtype": info["dtype"],
                    "device": info["device"],
                    "relevance_score": info["scores"]["relevance_score"],
                }
            )
        elif service.error is not None and on_load_failure is not None:
            on_load_failure(service.error)

    def start() -> None:
        """Start loading (on a thread) once: at start-up, or on the first request where the ASGI server runs no
        lifespan events."""
        nonlocal started
        with starting:
            if started:
                return
            started = True
        if service.needs_loading:

            def load() -> None:
                service.load()
                loaded()

            threading.Thread(target=load, name="core-rerank-load", daemon=True).start()
        else:
            loaded()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        start()
        yield
        scheduler.close()

    app = FastAPI(
        title="core-rerank",
        summary="Attention-head document re-ranking, in the wire formats of TEI, Infinity, Jina / Cohere / vLLM",
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.metrics = metrics
    app.state.settings = settings

    # ------------------------------------------------------------------ errors: one JSON shape
    def answer(request: Request, error: ApiError) -> JSON:
        request.scope[_ERROR_TYPE] = error.error_type
        return JSON(error.body(), status_code=error.status, headers=error.headers)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSON:
        return answer(request, exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSON:
        kinds = {404: "NotFound", 405: "MethodNotAllowed"}
        return answer(
            request,
            ApiError(
                exc.status_code, kinds.get(exc.status_code, "HTTPError"), str(exc.detail), getattr(exc, "headers", None)
            ),
        )

    @app.exception_handler(RequestValidationError)
    async def request_invalid(request: Request, exc: RequestValidationError) -> JSON:
        return answer(request, validation(f"invalid request: {exc.errors()}"))

    # ------------------------------------------------------------------ metrics of every request
    class Observe:
        """Pure ASGI middleware: status, total time and failure reason of every HTTP request."""

        def __init__(self, app: Any) -> None:
            self.app = app

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
                metrics.observe_request(scope["path"], status, time.perf_counter() - start, scope.get(_ERROR_TYPE))

    app.add_middleware(Observe)

    def overloaded(exc: Overloaded) -> ApiError:
        return ApiError(429, "Overloaded", f"the server is overloaded: {exc}", {"Retry-After": str(exc.retry_after)})

    # ------------------------------------------------------------------ authentication, body
    def authenticate(request: Request) -> None:
        if settings.api_key is None:
            return
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(key.strip().encode(), settings.api_key.encode()):
            raise ApiError(
                401,
                "Unauthorized",
                "a valid API key is required: send 'Authorization: Bearer <key>'",
                {"WWW-Authenticate": "Bearer"},
            )

    async def read_json(request: Request) -> Any:
        """The body as JSON, refusing one over the payload limit before reading (Content-Length) or while
        reading it (chunked bodies)."""
        limit = settings.payload_limit
        declared = request.headers.get("content-length")
        too_large = ApiError(413, "PayloadTooLarge", f"the request body is over the {limit}-byte limit")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_large
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise too_large
        try:
            return json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise validation(f"the request body is not valid JSON: {exc}") from None

    def shed() -> None:
        """Refuse at once, before the body is read, while every worker is busy and the queue is full (429): under
        overload the excess costs the server next to nothing. A request refused this way is not validated."""
        try:
            scheduler.shed()
        except Overloaded as exc:
            raise overloaded(exc) from None

    async def until_disconnected(receive: Callable) -> None:
        """Completes when the client disconnects (the body is read already, so the next message is that)."""
        while (await receive())["type"] != "http.disconnect":
            pass

    # ------------------------------------------------------------------ the one re-ranking path
    async def rerank(request: Request, req: Any) -> JSON:
        start()
        job = req.job()
        if len(job.texts) > settings.max_client_batch_size:
            raise ApiError(
                422,
                "TooManyDocuments",
                f"{len(job.texts)} documents in one request; this server takes "
                f"at most {settings.max_client_batch_size} (--max-client-batch-size)",
            )
        service.require_ready()
        gone = asyncio.ensure_future(until_disconnected(request.receive))
        try:
            scored = await scheduler.run(
                lambda: service.run(job),
                timeout=settings.timeout,
                abandon=gone,
                key=service.batch_key(job),
                item=job,
            )
        except Overloaded as exc:
            raise overloaded(exc) from None
        except TimedOut as exc:
            raise ApiError(
                504,
                "Timeout",
                f"no answer within the server's timeout of {settings.timeout} s "
                f"(timed out {'waiting in the queue' if exc.stage == 'queue' else 'while scoring'})",
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
        metrics.documents.inc(len(job.texts))
        metrics.tokens.inc(scored.tokens)
        body = req.render(job, scored, service.budget(job))
        return JSON(body, headers={"X-Score-Kind": "raw" if req.raw else scored.score_kind})

    protected = [Depends(authenticate)]

    @app.post("/rerank", dependencies=protected, summary="TEI (texts) or Infinity (documents) re-ranking")
    async def rerank_tei_or_infinity(request: Request) -> JSON:
        shed()
        body = await read_json(request)
        if isinstance(body, dict) and "texts" not in body and "documents" in body:
            return await rerank(request, parse(InfinityRequest, body))
        return await rerank(request, parse(TeiRequest, body))

    @app.post("/v1/rerank", dependencies=protected, summary="Jina / Cohere v1 / vLLM re-ranking")
    async def rerank_v1(request: Request) -> JSON:
        shed()
        return await rerank(request, parse(CohereV1Request, await read_json(request)))

    @app.post("/v2/rerank", dependencies=protected, summary="Cohere v2 re-ranking")
    async def rerank_v2(request: Request) -> JSON:
        shed()
        return await rerank(request, parse(CohereV2Request, await read_json(request)))

    @app.get("/health", summary="200 once the model is loaded, 503 before (public)")
    async def health() -> JSON:
        start()
        state = service.state
        body = {"status": state, **({"error": service.error} if service.error else {})}
        return JSON(body, status_code=200 if state == "ready" else 503)

    @app.get("/info", dependencies=protected, summary="Model, heads, layers, dtype, scores and limits")
    async def info() -> JSON:
        return JSON(service.info())

    @app.get("/metrics", summary="Prometheus metrics (public)")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app
