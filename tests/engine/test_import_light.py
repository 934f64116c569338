"""The runtime does not pull in the research tools: ``import core_rerank`` (and the engine module that
``Reranker.rank`` runs in) import nothing from ``core_rerank.research`` nor its optional dependencies.
Each check runs in a fresh interpreter, so modules other tests imported cannot hide or fake an import."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

RESEARCH_ONLY = ("core_rerank.research", "pytrec_eval", "bm25s", "matplotlib")

_PROBE = """
import json, sys
{imports}
print(json.dumps(sorted(m for m in sys.modules if any(m == p or m.startswith(p + ".") for p in {prefixes!r}))))
"""


def _loaded_after(imports: str) -> list[str]:
    code = _PROBE.format(imports=imports, prefixes=RESEARCH_ONLY)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_core_rerank_loads_no_research_module():
    assert _loaded_after("import core_rerank") == []


@pytest.mark.parametrize("imports", ["from core_rerank import Reranker", "import core_rerank.cli"])
def test_engine_and_cli_modules_load_no_research_module(imports):
    """The engine module (what ``Reranker.rank`` runs) and the CLI import research code only inside the
    research commands."""
    assert _loaded_after(imports) == []


SERVER_ONLY = ("fastapi", "uvicorn", "prometheus_client", "starlette")


@pytest.mark.parametrize("imports", ["import core_rerank", "import core_rerank.cli", "import core_rerank.server"])
def test_the_server_stack_loads_only_when_serving(imports):
    """FastAPI, uvicorn and prometheus-client (the ``server`` extra) load when ``core-rerank serve`` or
    ``create_app`` runs, not with the package, the command line or the server package's settings."""
    code = _PROBE.format(imports=imports, prefixes=(*SERVER_ONLY, "torch"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


@pytest.mark.parametrize(
    "imports",
    ["import core_rerank", "import core_rerank.cli", "import core_rerank.batch", "import core_rerank.server.ray_serve"],
)
def test_ray_loads_only_when_used(imports):
    """Ray (the ``ray`` extra: Ray Data for ``batch --ray``, Ray Serve for ``serve --backend ray``) is imported by
    those commands when they run, never by the package, the command line or the modules that hold the Ray code."""
    code = _PROBE.format(imports=imports, prefixes=("ray", "pyarrow", "torch"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
