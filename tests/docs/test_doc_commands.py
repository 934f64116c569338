"""Every command README.md and the docs pages show in a ```bash block is run here, as a user would type it.

Commands are read from the pages, joined across backslash line ends and split at ``&&``; each must be of a kind this
module knows how to run, so a command added to a page without a way to run it fails ``test_every_command_is_known``.
They run in a scratch copy of the checkout's layout (the examples, the venv and ../shared linked in), so what they
write (``ranked.jsonl``, ``heads.json``, ...) lands there. Servers listen on 127.0.0.1 at a free port, which replaces
the pages' 8080.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
WAIT_S = 300.0  # bounds a hang (a cold start on two busy cores), never a speed check

KINDS = {
    "install": re.compile(r"^(pip install|bash scripts/setup\.sh$)"),
    "tests": re.compile(r"^\.venv/bin/python -m pytest"),
    "local": re.compile(r"^\.venv/bin/core-rerank (rank|batch)\b(?!.*--ray)"),
    "serve": re.compile(r"^\.venv/bin/core-rerank serve\b(?!.*--backend ray)"),
    "curl": re.compile(r"^curl "),
    "research": re.compile(r"^\.venv/bin/core-rerank (detect-heads|evaluate|calibrate)\b"),
    "ray": re.compile(r"^\.venv/bin/core-rerank (serve --backend ray|batch .*--ray)"),
    "bench": re.compile(r"^\.venv/bin/python benchmarks/bench_server\.py --quick$"),
}


def _blocks(text: str) -> list[list[str]]:
    return [b.split("\n") for b in re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL)]


def page_commands(page: Path) -> list[str]:
    """The commands of a page's bash blocks, comments dropped, continuations joined, ``a && b`` split."""
    out = []
    for block in _blocks(page.read_text(encoding="utf-8")):
        for line in "\n".join(block).replace("\\\n", " ").split("\n"):
            command = " ".join(_without_comment(line).split())
            out += [part.strip() for part in command.split(" && ") if part.strip()]
    return out


def _without_comment(line: str) -> str:
    """``line`` up to a ``#`` that starts a shell comment (after a space, outside quotes)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def kind_of(command: str) -> str | None:
    return next((name for name, pattern in KINDS.items() if pattern.search(command)), None)


def commands_of(kind: str) -> list[tuple[Path, str]]:
    return [(page, c) for page in PAGES for c in page_commands(page) if kind_of(c) == kind]


def test_every_command_is_known():
    unknown = [(p.name, c) for p in PAGES for c in page_commands(p) if kind_of(c) is None]
    assert not unknown, f"commands on the docs pages that no test runs: {unknown}"
    assert commands_of("local") and commands_of("serve") and commands_of("curl") and commands_of("research")


def test_install_commands_name_what_exists():
    """Install lines name extras pyproject.toml defines and the pinned packages scripts/setup.sh installs (CI runs
    setup.sh itself, from scratch)."""
    import tomllib

    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    for page, command in commands_of("install"):
        for named in re.findall(r"\[([a-z,\-]+)\]", command):
            assert set(named.split(",")) <= extras, (page.name, command)
        for pin in re.findall(r"([\w\-]+==[\d.]+)", command):
            assert pin in setup, (page.name, command, "not what setup.sh installs")


def test_the_test_command_is_the_one_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text()
    for page, command in commands_of("tests"):
        assert command in ci, (page.name, command)


@pytest.fixture
def scratch(tmp_path) -> Path:
    """A directory laid out like the checkout (examples, benchmarks, .venv) with ../shared beside it."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("examples", "benchmarks", ".venv", "studies", "core_rerank"):
        (repo / name).symlink_to(ROOT / name)
    shared = ROOT.parent / "shared"
    if shared.is_dir():
        (tmp_path / "shared").symlink_to(shared)
    return repo


def _run(command: str, cwd: Path, env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", command], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env or os.environ
    )


@pytest.mark.slow  # each command is a process of its own that loads the model
def test_rank_and_batch_commands(scratch):
    for page, command in commands_of("local"):
        out = _run(command, scratch)
        assert out.returncode == 0, (page.name, command, out.stdout[-2000:], out.stderr[-2000:])
        if " rank " in command and "--json" not in command:
            assert "Reranker(model=" in out.stdout, (page.name, command)
        if " batch " in command:
            written = (scratch / "ranked.jsonl").read_text().splitlines()
            assert len(written) == 3 and '"error"' in written[2], written


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(command: str, cwd: Path, port: int, log: Path) -> subprocess.Popen:
    command = re.sub(r"--port \d+", f"--port {port}", command)
    if "--port" not in command:
        command += f" --port {port}"
    return subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=cwd, stdout=log.open("w"), stderr=subprocess.STDOUT)


def _wait_healthy(proc: subprocess.Popen, port: int, log: Path) -> None:
    import httpx

    deadline = time.monotonic() + WAIT_S
    while True:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the server never became healthy"
        time.sleep(0.5)


def _stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)  # drains, then exits 0
    try:
        return proc.wait(timeout=WAIT_S)
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.slow
def test_serve_commands_and_the_curl_calls_against_them(scratch, tmp_path):
    """Each page's serve commands start and stop cleanly; the page's curl calls run against its first server and get
    JSON answers (no error)."""
    pytest.importorskip("fastapi", reason="the [server] extra is not installed")
    for page in PAGES:
        serves = [c for c in page_commands(page) if kind_of(c) == "serve"]
        curls = [c for c in page_commands(page) if kind_of(c) == "curl"]
        for i, command in enumerate(serves):
            port, log = _free_port(), tmp_path / f"{page.stem}-{i}.log"
            proc = _serve(command, scratch, port, log)
            try:
                _wait_healthy(proc, port, log)
                for call in curls if i == 0 else []:
                    call = call.replace("localhost:8080", f"127.0.0.1:{port}")
                    out = _run(call, scratch, env={**os.environ, "KEY": "unused"}, timeout=WAIT_S)
                    assert out.returncode == 0 and out.stdout.strip(), (page.name, call, out.stderr)
                    assert '"error"' not in out.stdout, (page.name, call, out.stdout)
            finally:
                assert _stop(proc) == 0, (page.name, command, log.read_text()[-3000:])
        assert curls == [] or serves, f"{page.name} shows curl calls but no server to send them to"


@pytest.mark.slow
def test_research_commands(scratch):
    """The detection, evaluation and calibration examples, in page order (evaluate reads what detect-heads wrote)."""
    if not (scratch.parent / "shared" / "data").is_dir():
        pytest.skip("../shared/data is absent: the labelled data sets live beside the checkout")
    for page, command in commands_of("research"):
        out = _run(command, scratch, timeout=1800)
        assert out.returncode == 0, (page.name, command, out.stdout[-2000:], out.stderr[-2000:])


@pytest.mark.ray
def test_ray_commands(scratch, tmp_path):
    pytest.importorskip("ray.serve", reason="the [ray] extra is not installed")
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    for page, command in commands_of("ray"):
        if " serve " in command:
            port, log = _free_port(), tmp_path / "ray-serve.log"
            proc = _serve(command, scratch, port, log)
            try:
                _wait_healthy(proc, port, log)
            finally:
                proc.send_signal(signal.SIGINT)
                assert proc.wait(timeout=WAIT_S) == 0, log.read_text()[-3000:]
        else:
            out = _run(command, scratch, env=env, timeout=1800)
            assert out.returncode == 0, (page.name, command, out.stderr[-2000:])


@pytest.mark.load
def test_the_quick_load_test(scratch):
    for page, command in commands_of("bench"):
        out = _run(command, scratch, timeout=1800)
        assert out.returncode == 0, (page.name, command, out.stdout[-2000:], out.stderr[-2000:])
