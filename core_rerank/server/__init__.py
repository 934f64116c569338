"""``core-rerank serve``: an HTTP re-ranking service in the wire formats existing clients speak.

One module, one job: :mod:`.settings` (what is served, the limits), :mod:`.wire` (the TEI, Infinity, Jina / Cohere v1
/ vLLM and Cohere v2 request and response shapes), :mod:`.scheduler` (worker threads behind a bounded FIFO queue),
:mod:`.service` (loading and running the one reranker), :mod:`.metrics` (Prometheus), :mod:`.errors` (JSON error
answers) and :mod:`.app` (the FastAPI app, ``create_app``); :mod:`.ray_serve` runs that app on Ray Serve replicas
(``serve --backend ray``, the ``ray`` extra). Needs the ``server`` extra (``pip install 'core-rerank[server]'``);
importing this package alone imports neither FastAPI, Ray nor torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .settings import DEFAULT_PAYLOAD_LIMIT, ServerSettings

if TYPE_CHECKING:
    from .app import create_app

__all__ = ["DEFAULT_PAYLOAD_LIMIT", "ServerSettings", "create_app", "require_server", "server_dependencies_missing"]

_DEPENDENCIES = ("fastapi", "uvicorn", "prometheus_client")


def server_dependencies_missing() -> list[str]:
    """The ``server`` extra's packages that are not installed (empty when the server can run)."""
    import importlib.util

    return [name for name in _DEPENDENCIES if importlib.util.find_spec(name) is None]


def require_server(ray: bool = False) -> None:
    """Raise :class:`~core_rerank.DependencyMissingError` (with the pip command) unless the ``server`` extra, and
    with ``ray`` Ray Serve, are installed."""
    import importlib.util

    from ..errors import DependencyMissingError

    missing = server_dependencies_missing()
    if missing:
        raise DependencyMissingError(f"serve needs {', '.join(missing)}: pip install 'core-rerank[server]'")
    if ray and (importlib.util.find_spec("ray") is None or importlib.util.find_spec("ray.serve") is None):
        raise DependencyMissingError("--backend ray needs Ray Serve: pip install 'core-rerank[ray]'")


def __getattr__(name: str) -> Any:
    if name == "create_app":
        missing = server_dependencies_missing()
        if missing:
            from ..errors import DependencyMissingError

            raise DependencyMissingError(
                f"core-rerank serve needs {', '.join(missing)}: pip install 'core-rerank[server]'"
            )
        from .app import create_app

        return create_app
    raise AttributeError(f"module 'core_rerank.server' has no attribute {name!r}")
