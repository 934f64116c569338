"""``core-rerank serve --backend ray``: the same FastAPI app (:func:`~core_rerank.server.app.create_app`) behind Ray
Serve's ``@serve.ingress``, one loaded model per replica, with a deployment config users can edit.

Each replica loads its reranker in its constructor (so Ray Serve routes to it only once it can answer), then builds the
app around it in ``__serve_build_asgi_app__``; every answer carries ``X-Replica`` (the replica's id). Ray Serve's own
limits sit in front of the app's: ``max_ongoing_requests`` per replica (requests past it wait in Ray Serve's queue),
and ``max_queued_requests`` (past it Ray Serve answers 503 itself). Needs the ``ray`` extra; nothing here imports Ray
at import time.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError
from .settings import ServerSettings

__all__ = ["DEFAULT_DEPLOYMENT", "build_application", "load_deployment_config", "replica_header"]

REPLICA_HEADER = "X-Replica"

DEFAULT_DEPLOYMENT: dict[str, Any] = {
    "num_replicas": 1,
    "ray_actor_options": {"num_cpus": 1, "num_gpus": 0},
    "max_ongoing_requests": 4,
    "max_queued_requests": 64,
}
"""Ray Serve deployment options used where the config file gives none: one replica on one CPU; four requests in a
replica at once (one scored, three in its own queue); 64 more waiting in Ray Serve before it answers 503."""

_SERVE_KEYS = frozenset(
    {
        "num_replicas",
        "autoscaling_config",
        "ray_actor_options",
        "max_ongoing_requests",
        "max_queued_requests",
        "health_check_period_s",
        "health_check_timeout_s",
        "graceful_shutdown_timeout_s",
        "graceful_shutdown_wait_loop_s",
        "user_config",
        "placement_group_bundles",
        "placement_group_strategy",
        "max_replicas_per_node",
        "logging_config",
    }
)


def load_deployment_config(path: Path | None = None, replicas: int | None = None) -> dict[str, Any]:
    """The Ray Serve deployment options: :data:`DEFAULT_DEPLOYMENT`, updated by the ``deployment:`` mapping of a
    YAML file (``path``), then by ``replicas`` (which replaces any ``autoscaling_config``). Unknown keys are refused
    with the list of known ones, so a typo does not silently fall back to a default."""
    config = copy.deepcopy(DEFAULT_DEPLOYMENT)
    if path is not None:
        import yaml  # a dependency of Ray

        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise InvalidInputError(f"cannot read the deployment config {path}: {exc}") from None
        section = loaded.get("deployment", loaded) if isinstance(loaded, Mapping) else None
        if not isinstance(section, Mapping):
            raise InvalidInputError(f"{path}: expected a mapping of Ray Serve deployment options under 'deployment:'")
        unknown = sorted(set(section) - _SERVE_KEYS)
        if unknown:
            raise InvalidInputError(f"{path}: unknown deployment option(s) {unknown}; known: {sorted(_SERVE_KEYS)}")
        if "autoscaling_config" in section and "num_replicas" not in section:
            config.pop("num_replicas")
        config.update(section)
    if replicas is not None:
        config.pop("autoscaling_config", None)
        config["num_replicas"] = replicas
    return config


def replica_header(name: str) -> Callable[[Any], Any]:
    """Pure ASGI middleware factory adding ``X-Replica: name`` to every HTTP answer."""
    value = name.encode("latin-1", "replace")

    def middleware(app: Any) -> Any:
        async def wrapped(scope: dict, receive: Callable, send: Callable) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return

            async def sending(message: dict) -> None:
                if message["type"] == "http.response.start":
                    message = {**message, "headers": [*message.get("headers", []), (b"x-replica", value)]}
                await send(message)

            await app(scope, receive, sending)

        return wrapped

    return middleware


def _deployment_class() -> type:
    """The Ray Serve deployment class (defined on demand: ``serve.ingress`` needs Ray imported)."""
    from ray import serve

    @serve.ingress()
    class RerankDeployment:
        """One replica: loads the reranker once (torch threads = the CPUs Ray gives the replica), then serves
        :func:`create_app` around it."""

        def __init__(self, settings: ServerSettings, threads: int | None) -> None:
            if threads is not None:
                import torch

                torch.set_num_threads(threads)
            from .service import RerankService

            service = RerankService(settings)
            service.load()  # blocking: the replica is ready when its model is
            if service.error is not None:
                raise RuntimeError(f"core-rerank could not load the model: {service.error}")
            self.settings = settings
            self.reranker = service.require_ready()
            self.replica = serve.get_replica_context().replica_id.unique_id

        def __serve_build_asgi_app__(self) -> Any:
            from .app import create_app

            app = create_app(self.settings, self.reranker, freeze_heap=True)
            return replica_header(self.replica)(app)

    return RerankDeployment


def build_application(settings: ServerSettings, deployment: Mapping[str, Any] | None = None) -> Any:
    """A Ray Serve application serving ``settings`` with the given deployment options (:func:`load_deployment_config`
    by default): pass it to ``serve.run``."""
    from ray import serve

    options = dict(deployment or load_deployment_config())
    cpus = (options.get("ray_actor_options") or {}).get("num_cpus")
    threads = max(1, int(cpus)) if cpus else None
    return serve.deployment(_deployment_class(), name="core-rerank").options(**options).bind(settings, threads)


def run(settings: ServerSettings, deployment: Mapping[str, Any], host: str, port: int, address: str | None) -> None:
    """Start (or join, with ``address``) Ray, run the application on ``host:port``, and serve until SIGINT or
    SIGTERM; then delete the application and, for a Ray instance started here, stop Ray (its processes with it)."""
    import signal
    import threading

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address is None:
        from ..batch import start_local_ray

        start_local_ray(None)
    import ray
    from ray import serve

    if address is not None:
        ray.init(address=address, log_to_driver=False)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(build_application(settings, deployment), name="core-rerank", route_prefix="/")
        stop.wait()  # a server runs until it is told to stop
    finally:
        serve.delete("core-rerank")
        if address is None:
            serve.shutdown()
            ray.shutdown()
