"""Run the app in one process with uvicorn, and stop it without losing a request.

On SIGTERM (or Ctrl-C) the server drains: ``/health`` and every new re-ranking request answer 503
(``ShuttingDown``, with ``Retry-After``) while the listening socket stays open, so a load balancer takes the
process out of rotation instead of seeing refused connections; requests already admitted (scoring or queued)
finish; then uvicorn shuts down. The drain lasts until nothing is in flight or ``timeout`` seconds have passed
(every admitted request has an answer by then: the scheduler times it out), so the process exits within
``--timeout`` plus a moment. A second signal stops at once, as uvicorn does.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any

import uvicorn

from .app import ServerState, create_app
from .settings import ServerSettings

__all__ = ["DrainingServer", "serve"]

logger = logging.getLogger("core_rerank.server")


def serve(settings: ServerSettings, host: str, port: int, log_level: str = "info") -> str | None:
    """Serve until told to stop; returns the model's load error when loading failed (the server then stops)."""
    failed: list[str] = []
    server: DrainingServer

    def stop(error: str) -> None:
        failed.append(error)
        server.should_exit = True

    app = create_app(settings, on_load_failure=stop, freeze_heap=True)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)
    server = DrainingServer(config, app.state.core, settings.timeout)
    server.run()
    return failed[0] if failed else None


class DrainingServer(uvicorn.Server):
    """A ``uvicorn.Server`` whose first stop signal drains (see the module docstring)."""

    def __init__(self, config: uvicorn.Config, state: ServerState, timeout: float | None) -> None:
        super().__init__(config)
        self.state = state
        self.timeout = timeout
        self._drain: threading.Thread | None = None

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self._drain is not None or self.should_exit:
            super().handle_exit(sig, frame)  # a second signal: uvicorn's own stop, then force
            return
        self.state.service.draining = True
        scheduler = self.state.scheduler
        logger.info(
            "stop signal: draining (%d scoring, %d queued); new requests get 503", scheduler.running, scheduler.waiting
        )
        self._drain = threading.Thread(target=self._exit_when_idle, name="core-rerank-drain", daemon=True)
        self._drain.start()

    def _exit_when_idle(self) -> None:
        deadline = time.monotonic() + (self.timeout if self.timeout is not None else math.inf)
        scheduler = self.state.scheduler
        while (scheduler.running or scheduler.waiting) and time.monotonic() < deadline:
            time.sleep(0.02)
        if scheduler.running or scheduler.waiting:
            logger.warning("drain timed out after %s s: stopping with requests in flight", self.timeout)
        self.should_exit = True
