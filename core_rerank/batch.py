"""Offline batch re-ranking: ``core-rerank batch INPUT.jsonl --output OUT.jsonl``, embedded or on Ray Data.

Each input line is a JSON object ``{"id": ..., "query": "...", "documents": [str | {"text", "title"?, ...}]}``;
each output line is ``{"id": ..., "results": [{"index", "score", "relevance"}, ...]}``, best first, in input order.
``score`` is the engine's raw score (``null`` for an empty document, whose score is -inf), ``relevance`` the
calibrated [0, 1] relevance (``null`` for a head list without a relevance map). With ``highlights``
(``--highlights``) each result also has ``highlights``: its sentences with their scores
(:class:`~core_rerank.highlights.Highlight`), from the same pass.

A bad line never stops the job: it gets ``{"id": ... (null if it had none), "line": N, "error": message,
"error_type": kind}`` in its place and the job goes on (``error_type`` is ``InvalidRow`` for a line that is not an
object with a ``query`` string and a non-empty ``documents`` list, ``InvalidJSON``, or the engine's error class,
e.g. ``TooManyDocumentsError``). Blank lines are skipped.

:func:`score_line` is the one scoring function: the embedded loop calls it line by line, and each Ray Data actor
(:class:`RayScorer`) calls it on the lines of its batches. Nothing here imports Ray or torch at import time.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import CoreRerankError, DependencyMissingError, InvalidInputError
from .settings import EngineSettings

if TYPE_CHECKING:
    from .reranker import Reranker

__all__ = ["BatchSettings", "RayScorer", "read_input", "read_lines", "run_embedded", "run_ray", "score_line"]


@dataclass(frozen=True)
class BatchSettings:
    """How each process builds its reranker (the same for the embedded run and every Ray actor): the engine's
    settings, and ``threads``, torch's intra-op threads per process (``None`` leaves torch's default, every core;
    on Ray, one per CPU the actor reserves, so actors on one machine do not oversubscribe its cores), and
    ``highlights``, whether each result carries its sentences with their scores."""

    engine: EngineSettings = field(default_factory=EngineSettings)
    threads: int | None = None
    highlights: bool = False

    def build(self) -> Reranker:
        """Load the reranker these settings describe (in the calling process)."""
        if self.threads is not None:
            import torch

            torch.set_num_threads(self.threads)
        from .reranker import Reranker

        return Reranker.from_settings(self.engine)


def _error(row_id: Any, line_no: int, error_type: str, message: str) -> dict[str, Any]:
    return {"id": row_id, "line": line_no, "error": message, "error_type": error_type}


def score_line(reranker: Reranker, line: str, line_no: int, highlights: bool = False) -> dict[str, Any]:
    """Score one input line (``line_no`` counts from 1) and return its output row, or its error row.

    The one scoring function of both paths (embedded and Ray Data), so both produce the same rows. Never raises
    for bad input: a malformed line or an engine refusal becomes an error row (see the module docstring)."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        return _error(None, line_no, "InvalidJSON", f"line {line_no} is not JSON: {exc.msg}")
    if not isinstance(row, Mapping):
        return _error(None, line_no, "InvalidRow", f"line {line_no} is {type(row).__name__}, not a JSON object")
    row_id = row.get("id")
    query, documents = row.get("query"), row.get("documents")
    if not isinstance(query, str):
        return _error(row_id, line_no, "InvalidRow", "'query' is missing or not a string")
    if not isinstance(documents, list):
        return _error(row_id, line_no, "InvalidRow", "'documents' is missing or not a list")
    if not documents:
        return _error(row_id, line_no, "InvalidRow", "'documents' is empty: there is nothing to rank")
    try:
        results = reranker.rank(query, documents, show_progress_bar=False, highlights=highlights)
    except CoreRerankError as exc:
        return _error(row_id, line_no, type(exc).__name__, str(exc))
    ranked = []
    for r in results:
        item: dict[str, Any] = {"index": r.index, "score": r.json_score, "relevance": r.relevance}
        if highlights:
            item["highlights"] = [h.to_dict() for h in r.highlights or ()]
        ranked.append(item)
    return {"id": row_id, "results": ranked}


def read_lines(path: Path) -> list[tuple[int, str]]:
    """The non-blank lines of a UTF-8 JSONL file with their 1-based line numbers (only ``\\n`` ends a line: JSON
    strings may hold U+2028 raw)."""
    text = path.read_text(encoding="utf-8")
    lines = (ln.removesuffix("\r") for ln in text.split("\n"))
    return [(n, ln) for n, ln in enumerate(lines, start=1) if ln.strip()]


def read_input(path: Path) -> list[tuple[int, str]]:
    """:func:`read_lines` of an input file, with an :class:`InvalidInputError` when it is missing or not UTF-8."""
    if not path.is_file():
        raise InvalidInputError(f"{path} does not exist")
    try:
        return read_lines(path)
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc


def _dump(row: Mapping[str, Any]) -> str:
    return json.dumps(row, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def run_embedded(
    settings: BatchSettings,
    lines: list[tuple[int, str]],
    out: Path,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Score every line in this process, writing ``out`` in input order; returns the number of error rows.
    ``progress(done, total)`` is called after each line."""
    reranker = settings.build()
    errors = 0
    with out.open("w", encoding="utf-8") as f:
        for done, (n, line) in enumerate(lines, start=1):
            row = score_line(reranker, line, n, settings.highlights)
            errors += "error" in row
            f.write(_dump(row) + "\n")
            if progress is not None:
                progress(done, len(lines))
    return errors


class RayScorer:
    """The Ray Data callable class: each actor loads the reranker once (``__init__``) and scores the lines of each
    batch it is given with :func:`score_line`. Batches are ``{"n": line numbers, "line": texts}``; the output is
    ``{"n": ..., "row": the output row as a JSON string}`` (a string column: ids of mixed types, nested results and
    error rows all cross Arrow unchanged)."""

    def __init__(self, settings: BatchSettings) -> None:
        self.reranker = settings.build()
        self.highlights = settings.highlights

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        rows = [
            _dump(score_line(self.reranker, str(line), int(n), self.highlights))
            for n, line in zip(batch["n"], batch["line"])
        ]
        return {"n": list(batch["n"]), "row": rows}


def start_local_ray(num_cpus: int | None) -> None:
    """Start a Ray instance on this machine, on 127.0.0.1 only, without the dashboard or usage reporting (a no-op
    when Ray is already initialised in this process). ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` makes Ray bind its
    services to the loopback address instead of the machine's network address; it must be set before Ray is
    imported, and the processes Ray starts inherit it."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)


def run_ray(
    settings: BatchSettings,
    lines: list[tuple[int, str]],
    out: Path,
    *,
    actors: int,
    cpus_per_actor: float = 1.0,
    gpus_per_actor: float = 0.0,
    batch_size: int = 8,
    address: str | None = None,
) -> int:
    """Score every line with Ray Data ``map_batches`` over a fixed pool of ``actors`` :class:`RayScorer` actors
    (each loads the model once), writing ``out`` in input order; returns the number of error rows.

    Connects to the Ray cluster at ``address`` (``"auto"``, ``"ray://host:10001"``), else to the instance this
    process is attached to (``ray.init(address=...)`` beforehand, or ``RAY_ADDRESS``), else starts a local one with
    :func:`start_local_ray`."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        raise DependencyMissingError("--ray needs Ray: pip install 'core-rerank[ray]'")
    import ray

    if address is not None and not ray.is_initialized():
        ray.init(address=address, log_to_driver=False)
    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):
            ray.init(log_to_driver=False)
        else:
            start_local_ray(None)
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # output rows in input order (a setting of this driver process)
    ds = ray.data.from_items([{"n": n, "line": line} for n, line in lines])
    scored = ds.map_batches(
        RayScorer,
        fn_constructor_kwargs={"settings": settings},
        compute=ray.data.ActorPoolStrategy(size=actors),
        batch_size=batch_size,
        batch_format="numpy",
        num_cpus=cpus_per_actor,
        num_gpus=gpus_per_actor,
    )
    errors = 0
    expected = iter(n for n, _ in lines)
    with out.open("w", encoding="utf-8") as f:
        for item in scored.iter_rows():
            n = int(item["n"])
            if n != next(expected, None):  # a defect (preserve_order is set), never silently misaligned output
                raise RuntimeError(f"Ray Data returned line {n} out of order")
            row = str(item["row"])
            errors += "error" in json.loads(row)
            f.write(row + "\n")
    if next(expected, None) is not None:
        raise RuntimeError("Ray Data returned fewer rows than it was given")
    return errors
