"""Command line: ``core-rerank rank --query ... --docs FILE.jsonl``."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .errors import CoreRerankError
from .inputs import DEFAULT_MAX_DOCUMENTS

MODEL_HELP = (
    "'default' (fast, embedded) or 'quality' (Qwen2.5-Coder-1.5B, packaged), another packaged model's name, "
    "a Hugging Face id or directory, or a .gguf file."
)
app = typer.Typer(help="Re-rank documents with the attention heads of a decoder LLM.", no_args_is_help=True)
console = Console()


@contextmanager
def progress_bar(description: str, total: int) -> Iterator[Callable[[int, int], None]]:
    """A rich progress bar (count, elapsed, time left) on stderr; yields the ``progress(n, total)``
    callback that detection and evaluation call after each sample or query."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, TimeRemainingColumn(), console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n, t: bar.update(task, completed=n, total=t)


def read_documents(path: Path) -> list[Any]:
    """Documents from a .jsonl file (objects with 'text' and optional 'title', or plain strings), or one
    document per line of a plain text file."""
    if not path.is_file():
        raise typer.BadParameter(f"{path} does not exist", param_hint="--docs")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise typer.BadParameter(
            f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})", param_hint="--docs"
        ) from exc
    # Only "\n" ends a line: str.splitlines() would also split at U+2028 and other separators that JSON
    # strings may hold raw.
    lines = [ln.removesuffix("\r") for ln in text.split("\n") if ln.strip()]
    if path.suffix.lower() not in (".jsonl", ".json"):
        return lines
    docs = []
    for n, line in enumerate(lines, start=1):
        try:
            docs.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise typer.BadParameter(f"{path}:{n} is not JSON ({exc.msg})", param_hint="--docs") from exc
    return docs


@app.callback()
def main() -> None:
    """core-rerank: CoRe-head attention re-ranking."""


@app.command()
def rank(
    query: Annotated[str, typer.Option("--query", "-q", help="The query to rank the documents for.")],
    docs: Annotated[Path, typer.Option("--docs", "-d", help="JSONL file: {'text', 'title'?} per line, or .txt lines.")],
    model: Annotated[str, typer.Option(help=MODEL_HELP)] = "default",
    heads: Annotated[str | None, typer.Option(help="Head list: JSON path or 'all'. Default: bundled.")] = None,
    top_n: Annotated[int | None, typer.Option("--top-n", "-n", min=1, help="Show only the best N.")] = None,
    quantization: Annotated[
        str, typer.Option(help="'auto' (4-bit for 1B+ models on CUDA), 'none', '4bit' or '8bit'.")
    ] = "auto",
    device: Annotated[str | None, typer.Option(help="'cpu' or 'cuda'. Default: CUDA if available.")] = None,
    max_documents: Annotated[
        int, typer.Option(min=1, help="Refuse lists longer than this (a guard against ranking a whole corpus).")
    ] = DEFAULT_MAX_DOCUMENTS,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Rank the documents of DOCS for QUERY and print the ranking."""
    from transformers.utils import logging as hf_logging

    from .reranker import Reranker

    documents = read_documents(docs)
    hf_logging.disable_progress_bar()  # the status spinner below covers loading
    try:
        with console.status(f"loading {model} ..."):
            quant = None if quantization.lower() == "none" else quantization
            reranker = Reranker(model, heads=heads, quantization=quant, device=device, max_documents=max_documents)
        results = reranker.rank(query, documents, top_n=top_n)
    except CoreRerankError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from exc
    if as_json:
        print(json.dumps(results.to_dicts(), indent=1, allow_nan=False))
        return
    table = Table(title=escape(repr(query)), caption=escape(repr(reranker)), expand=True)
    for col in ("rank", "doc", "score", "relevance", "norm"):
        table.add_column(col, justify="right", no_wrap=True, min_width=len(col))
    table.add_column("text", overflow="ellipsis", no_wrap=True, ratio=1)
    for r in results:
        text = escape(r.text.replace("\n", " "))  # document text is data, not rich markup
        table.add_row(
            str(r.rank),
            str(r.index),
            f"{r.score:.4f}" if r.json_score is not None else "empty",
            "-" if r.relevance is None else f"{r.relevance:.3f}",
            f"{r.normalized_score:.3f}",
            text + (" [dim](truncated)[/dim]" if r.truncated else ""),
        )
    console.print(table)


@app.command()
def serve(
    model: Annotated[str, typer.Option(help=MODEL_HELP)] = "default",
    heads: Annotated[str | None, typer.Option(help="Head list: JSON path or 'all'. Default: bundled.")] = None,
    host: Annotated[str, typer.Option(help="Interface to listen on (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8080,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="CORE_RERANK_API_KEY",
            help="Require 'Authorization: Bearer KEY' on every endpoint but /health and /metrics.",
        ),
    ] = None,
    max_concurrent_requests: Annotated[
        int, typer.Option(min=1, help="Requests scored at once (one model runs one forward pass at a time).")
    ] = 1,
    max_queue: Annotated[int, typer.Option(min=0, help="Requests that may wait; one more gets 429 Overloaded.")] = 16,
    max_batch_requests: Annotated[
        int,
        typer.Option(
            min=1, help="Waiting requests with the same documents scored together in one pass (1: no batching)."
        ),
    ] = 8,
    max_client_batch_size: Annotated[
        int, typer.Option(min=1, help="Most documents in one request (422 beyond).")
    ] = DEFAULT_MAX_DOCUMENTS,
    max_doc_tokens: Annotated[
        int, typer.Option(min=1, help="Per-document token budget; longer documents are cut.")
    ] = 400,
    timeout: Annotated[
        float, typer.Option(min=0, help="Seconds from arrival to answer before a 504 (0: no limit).")
    ] = 60.0,
    payload_limit: Annotated[int, typer.Option(min=1, help="Largest request body in bytes (413 beyond).")] = 2_000_000,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
    backend: Annotated[
        str, typer.Option(help="'uvicorn' (one process) or 'ray' (Ray Serve replicas: the 'ray' extra).")
    ] = "uvicorn",
    replicas: Annotated[
        int | None, typer.Option(min=1, help="With --backend ray: replicas, each loading the model (default 1).")
    ] = None,
    deployment_config: Annotated[
        Path | None,
        typer.Option(help="With --backend ray: a YAML of Ray Serve deployment options (docs/serving.md)."),
    ] = None,
    ray_address: Annotated[
        str | None, typer.Option(help="With --backend ray: a running cluster ('auto'). Default: a local one.")
    ] = None,
) -> None:
    """Serve re-ranking over HTTP (TEI, Infinity, Jina / Cohere v1 / vLLM and Cohere v2 formats): needs the
    'server' extra. The port opens at once; /health answers 503 until the model is loaded. With --backend ray,
    the same app runs on Ray Serve replicas (each answer names its replica in X-Replica)."""
    import logging

    from .server import ServerSettings, server_dependencies_missing

    missing = server_dependencies_missing()
    if missing:
        console.print(f"[red]error:[/red] serve needs {', '.join(missing)}: pip install 'core-rerank[server]'")
        raise typer.Exit(2)
    import uvicorn

    from .server import create_app

    try:
        settings = ServerSettings(
            model=model,
            heads=heads,
            max_concurrent_requests=max_concurrent_requests,
            max_queue=max_queue,
            max_batch_requests=max_batch_requests,
            max_client_batch_size=max_client_batch_size,
            max_doc_tokens=max_doc_tokens,
            timeout=timeout or None,
            payload_limit=payload_limit,
            api_key=api_key,
        )
    except CoreRerankError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from exc
    if backend not in ("uvicorn", "ray"):
        raise typer.BadParameter("use 'uvicorn' or 'ray'", param_hint="--backend")
    if backend == "uvicorn" and (replicas is not None or deployment_config is not None or ray_address is not None):
        raise typer.BadParameter("--replicas, --deployment-config and --ray-address need --backend ray")
    if backend == "ray":
        import importlib.util

        if importlib.util.find_spec("ray") is None or importlib.util.find_spec("ray.serve") is None:
            console.print("[red]error:[/red] --backend ray needs Ray Serve: pip install 'core-rerank[ray]'")
            raise typer.Exit(2)
        from .server import ray_serve

        try:
            deployment = ray_serve.load_deployment_config(deployment_config, replicas)
        except (CoreRerankError, OSError) as exc:
            console.print(f"[red]error:[/red] {escape(str(exc))}")
            raise typer.Exit(2) from exc
        if host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
            console.print(f"[yellow]warning:[/yellow] listening on {host} without an API key")
        ray_serve.run(settings, deployment, host, port, ray_address)
        return
    logging.basicConfig(level=log_level.upper(), format="%(levelname)s:     %(name)s: %(message)s")
    if host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        logging.getLogger("core_rerank.server").warning(
            "listening on %s without an API key: anyone who can reach this port can use it", host
        )
    failed: list[str] = []

    def stop(error: str) -> None:
        failed.append(error)
        server.should_exit = True

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a server's log gets a line when the model is ready, not a progress bar
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings, on_load_failure=stop, freeze_heap=True), host=host, port=port, log_level=log_level
        )
    )
    server.run()
    if failed:
        console.print(f"[red]error:[/red] {escape(failed[0])}")
        raise typer.Exit(2)


@app.command()
def batch(
    input_path: Annotated[
        Path, typer.Argument(metavar="INPUT.jsonl", help="One {'id', 'query', 'documents'} object per line.")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="JSONL to write: {'id', 'results'} per input line.")],
    model: Annotated[str, typer.Option(help=MODEL_HELP)] = "default",
    heads: Annotated[str | None, typer.Option(help="Head list: JSON path or 'all'. Default: bundled.")] = None,
    max_doc_tokens: Annotated[int, typer.Option(min=1, help="Per-document token budget; longer are cut.")] = 400,
    max_documents: Annotated[
        int, typer.Option(min=1, help="Most documents in one row (an error row beyond).")
    ] = DEFAULT_MAX_DOCUMENTS,
    quantization: Annotated[
        str, typer.Option(help="'auto' (4-bit for 1B+ models on CUDA), 'none', '4bit' or '8bit'.")
    ] = "auto",
    device: Annotated[str | None, typer.Option(help="'cpu' or 'cuda'. Default: CUDA if available.")] = None,
    use_ray: Annotated[
        bool, typer.Option("--ray", help="Run on Ray Data (the 'ray' extra): map_batches over an actor pool.")
    ] = False,
    actors: Annotated[int, typer.Option(min=1, help="With --ray: actors, each loading the model once.")] = 2,
    cpus_per_actor: Annotated[
        int, typer.Option(min=1, help="With --ray: CPUs each actor reserves (and its torch threads).")
    ] = 1,
    gpus_per_actor: Annotated[float, typer.Option(min=0, help="With --ray: GPUs each actor reserves.")] = 0.0,
    batch_size: Annotated[int, typer.Option(min=1, help="With --ray: input rows per map_batches batch.")] = 8,
    ray_address: Annotated[
        str | None,
        typer.Option(help="With --ray: a running cluster ('auto', 'ray://host:10001'). Default: a local one."),
    ] = None,
) -> None:
    """Re-rank every row of INPUT.jsonl ({'id', 'query', 'documents'} per line) and write {'id', 'results':
    [{'index', 'score', 'relevance'}, ...]} rows, best first, in input order. A bad row gets an 'error' field in
    its output row; the job goes on. Embedded with a progress bar, or on Ray Data with --ray --actors N."""
    import importlib.util

    from .batch import BatchSettings, read_lines, run_embedded, run_ray

    if not input_path.is_file():
        raise typer.BadParameter(f"{input_path} does not exist", param_hint="INPUT.jsonl")
    try:
        lines = read_lines(input_path)
    except UnicodeDecodeError as exc:
        raise typer.BadParameter(f"{input_path} is not UTF-8 text ({exc.reason})", param_hint="INPUT.jsonl") from exc
    settings = BatchSettings(
        model=model,
        heads=heads,
        max_doc_tokens=max_doc_tokens,
        max_documents=max_documents,
        quantization=None if quantization.lower() == "none" else quantization,
        device=device,
        threads=cpus_per_actor if use_ray else None,
    )
    err = Console(stderr=True)
    try:
        if use_ray:
            if importlib.util.find_spec("ray") is None:
                console.print("[red]error:[/red] --ray needs Ray: pip install 'core-rerank[ray]'")
                raise typer.Exit(2)
            if ray_address is not None:
                import ray

                ray.init(address=ray_address, log_to_driver=False)
            errors = run_ray(
                settings,
                lines,
                output,
                actors=actors,
                cpus_per_actor=cpus_per_actor,
                gpus_per_actor=gpus_per_actor,
                batch_size=batch_size,
            )
        else:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
            with progress_bar("re-ranking rows", len(lines)) as progress:
                errors = run_embedded(settings, lines, output, progress)
    except CoreRerankError as exc:  # the model or head list could not load: nothing was scored
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from exc
    note = f", {errors} with an error (see their 'error' field)" if errors else ""
    err.print(f"wrote {output}: {len(lines)} rows{note}")


def _data_spec(spec: str, default_split: str) -> tuple[Path, str]:
    """'DIR' or 'DIR:SPLIT' -> (folder, split)."""
    path, _, split = spec.partition(":") if ":" in Path(spec).name else (spec, "", "")
    folder = Path(path)
    if not folder.is_dir():
        raise typer.BadParameter(f"{folder} is not a data set folder", param_hint="--data")
    return folder, split or default_split


@app.command("detect-heads")
def detect_heads(
    data: Annotated[
        list[str],
        typer.Option("--data", help="Detection data: DIR[:SPLIT] (BEIR layout), repeatable. Never a test split."),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Head-list JSON to write.")],
    split: Annotated[str, typer.Option(help="Split of every --data DIR given without :SPLIT.")] = "train",
    model: Annotated[str, typer.Option(help=MODEL_HELP)] = "default",
    method: Annotated[str, typer.Option(help="'core' (contrastive SCoRe) or 'qr' (mass on the positive).")] = "core",
    k: Annotated[int, typer.Option(min=1, help="Number of heads to keep.")] = 8,
    tau: Annotated[float, typer.Option(help="SCoRe temperature (core only).")] = 0.1,
    negatives: Annotated[int, typer.Option(min=1, help="Hard negatives per sample (first-stage, not relevant).")] = 9,
    max_samples: Annotated[int | None, typer.Option(min=1, help="At most this many samples per data set.")] = None,
    max_doc_tokens: Annotated[int, typer.Option(min=8, help="Per-document token cap in detection prompts.")] = 200,
    seed: Annotated[int, typer.Option(help="Seed of the positive's position.")] = 0,
    max_layers: Annotated[
        int | None,
        typer.Option(min=1, help="Choose heads only in the first N layers (the engine then runs N layers at most)."),
    ] = None,
    masses: Annotated[Path | None, typer.Option(help="Also save the per-sample head masses (.npz) for sweeps.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Also write a PNG head map (needs matplotlib).")] = None,
    device: Annotated[str | None, typer.Option(help="'cpu' or 'cuda'. Default: CUDA if available.")] = None,
) -> None:
    """Detect CoRe (or QR) heads of MODEL on labelled data and write a head list the engine loads."""
    from .reranker import Reranker
    from .research.datasets import load_dataset
    from .research.detection import build_samples, collect_masses, make_head_list

    if method not in ("core", "qr"):
        raise typer.BadParameter("method must be 'core' or 'qr'", param_hint="--method")
    samples = []
    for spec in data:
        folder, part = _data_spec(spec, split)
        if part == "test":
            console.print(f"[yellow]warning:[/yellow] detecting on a test split ({spec}) leaks into evaluation")
        samples += build_samples(load_dataset(folder, part), None, negatives, max_samples, seed)
    if not samples:
        console.print("[red]error:[/red] no detection sample (queries need a relevant and non-relevant candidates)")
        raise typer.Exit(2)
    try:
        reranker = Reranker(model, heads="all", device=device, quantization=None)
    except (CoreRerankError, ValueError, TypeError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    with progress_bar("detecting heads", len(samples)) as progress:
        result = collect_masses(reranker, samples, max_doc_tokens, progress)
    if masses is not None:
        result.save(masses)
    if max_layers is not None:
        result = result.below_layer(max_layers)
    head_list = make_head_list(result, method, k, tau, extra={"negatives": negatives, "seed": seed})
    head_list.save(out)
    if plot is not None:
        from .research.plots import plot_head_map

        plot_head_map(head_list, plot)
    console.print(f"wrote {out}: {', '.join(f'{a}-{b}' for a, b in head_list.heads)} ({len(samples)} samples)")


@app.command()
def calibrate(
    data: Annotated[
        list[str],
        typer.Option(
            "--data", help="Labelled training data: DIR[:SPLIT] (BEIR layout), repeatable; never a test split."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Head-list JSON to write (the list + its relevance map).")],
    split: Annotated[str, typer.Option(help="Split of every --data DIR given without :SPLIT.")] = "train",
    model: Annotated[str, typer.Option(help=MODEL_HELP)] = "default",
    heads: Annotated[
        str | None, typer.Option(help="Head list to calibrate (path or 'all'). Default: the model's bundled list.")
    ] = None,
    depth: Annotated[int, typer.Option(min=2, help="First-stage candidates per query, passed best first.")] = 20,
    max_queries: Annotated[int | None, typer.Option(min=1, help="A fixed seeded sample of queries per set.")] = None,
    max_doc_tokens: Annotated[int, typer.Option(min=8, help="Per-document token cap, as you will rank.")] = 400,
    device: Annotated[str | None, typer.Option(help="'cpu' or 'cuda'. Default: CUDA if available.")] = None,
) -> None:
    """Fit the calibrated `relevance` of a head list on labelled data: a logistic map of each document's raw
    score to the probability that it is relevant, written into the head list (load it with --heads / heads=)."""
    from dataclasses import replace

    from .reranker import Reranker
    from .research.calibration import fit_logistic, labelled_scores, reliability
    from .research.datasets import load_dataset
    from .research.evaluation import _select
    from .scoring import relevance

    sets = []
    for spec in data:
        folder, part = _data_spec(spec, split)
        if part == "test":
            console.print(f"[yellow]warning:[/yellow] calibrating on a test split ({spec}) leaks into evaluation")
        ds = load_dataset(folder, part)
        sets.append((ds, _select(ds.query_ids, max_queries)))
    try:
        reranker = Reranker(model, heads=heads, device=device, max_doc_tokens=max_doc_tokens, max_documents=None)
    except (CoreRerankError, ValueError, TypeError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    total = sum(len(q) for _, q in sets)
    with progress_bar("scoring labelled candidates", total) as progress:
        xs, ys = labelled_scores(reranker, sets, depth, progress)
    try:
        a, b = fit_logistic(xs, ys)
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    check = reliability([relevance(x, a, b) for x in xs], ys)
    fitted_on = ", ".join(f"{ds.name}/{ds.split} ({len(q)} q)" for ds, q in sets)
    fit = {
        "a": a,
        "b": b,
        "fitted_on": f"{fitted_on}; first-stage top {depth}, best first; max_doc_tokens {max_doc_tokens}",
        "documents": check.documents,
        "relevant": check.relevant,
        "ece_fit": round(check.ece, 4),
    }
    calibrated = replace(reranker.head_list, calibration={**reranker.head_list.calibration, "relevance": fit})
    calibrated.save(out)
    console.print(
        f"wrote {out}: relevance = 1 / (1 + exp(-({a:.4g} * score + {b:.4g}))) from {check.documents} documents "
        f"({check.relevant} relevant); ECE on the fitting data {check.ece:.3f}"
    )


_SHAPE = ("num_layers", "num_heads", "num_kv_heads")


def _paired_cell(p) -> str:
    return f"{p.mean:+.4f}" + (f" ({p.se:.4f})" if p.se is not None else "")


@app.command()
def evaluate(
    data_dirs: Annotated[
        list[str] | None, typer.Argument(metavar="DATA_DIR...", help="Data set folders (BEIR layout), DIR[:SPLIT].")
    ] = None,
    data: Annotated[
        list[str] | None, typer.Option("--data", help="DIR[:SPLIT] in BEIR layout, repeatable (as DATA_DIR).")
    ] = None,
    split: Annotated[str, typer.Option(help="Split of every data set given without :SPLIT.")] = "test",
    methods: Annotated[
        str | None,
        typer.Option(help="Comma list of methods to report, e.g. bm25,dense,icr,qr,core (default: all computed)."),
    ] = None,
    heads: Annotated[
        list[str] | None,
        typer.Option(
            "--heads", help="NAME=PATH of a head list (or NAME=all), repeatable; icr and the bundled list always run."
        ),
    ] = None,
    model: Annotated[str, typer.Option(help=MODEL_HELP)] = "default",
    depth: Annotated[
        int | None, typer.Option(min=1, help="Re-rank this many first-stage candidates.  [default: 20]")
    ] = None,
    top_k: Annotated[
        int | None, typer.Option("--top-k", min=1, hidden=True, help="Deprecated name of --depth.")
    ] = None,
    max_doc_tokens: Annotated[int, typer.Option(min=8, help="Per-document token cap.")] = 200,
    order: Annotated[
        str, typer.Option(help="Engine placement: 'reverse' (first input nearest the query) or 'given'.")
    ] = "reverse",
    first_stage: Annotated[
        str,
        typer.Option(
            "--first-stage",
            help="Retriever whose top candidates are re-ranked: 'bm25' (the split's run) or 'dense' "
            "(all-MiniLM-L6-v2 over the same top-100 pool).",
        ),
    ] = "bm25",
    input_order: Annotated[
        str,
        typer.Option(
            "--input-order",
            help="Order the candidates are passed in: 'first-stage' (best first, as a pipeline does), "
            "'reversed', or 'shuffled' (seeded: what the attention reads without the first stage's order).",
        ),
    ] = "first-stage",
    seed: Annotated[int, typer.Option(help="Seed of --input-order shuffled.")] = 0,
    max_queries: Annotated[int | None, typer.Option(min=1, help="Evaluate a fixed seeded sample of queries.")] = None,
    dense: Annotated[bool, typer.Option(help="Also score the all-MiniLM-L6-v2 dense baseline.")] = True,
    out: Annotated[Path | None, typer.Option("--out", "--json", "-o", help="Write the results as JSON.")] = None,
    device: Annotated[str | None, typer.Option(help="'cpu' or 'cuda'. Default: CUDA if available.")] = None,
) -> None:
    """nDCG@10, MRR@10 and recall@depth (pytrec_eval) of BM25, dense and attention re-ranking with each
    head list (icr = all heads, the bundled list under its method's name, and --heads NAME=PATH)."""
    specs = [*(data_dirs or []), *(data or [])]
    if not specs:
        raise typer.BadParameter("give at least one data set folder", param_hint="DATA_DIR")
    if top_k is not None:
        if depth is not None:
            raise typer.BadParameter("give --depth only (--top-k is its deprecated name)", param_hint="--top-k")
        Console(stderr=True).print(
            "[yellow]warning:[/yellow] --top-k is deprecated: use --depth (the number of first-stage candidates "
            "re-ranked; top_n means results kept)"
        )
        depth = top_k
    depth = 20 if depth is None else depth
    from .research.evaluation import INPUT_ORDERS, RETRIEVERS

    if first_stage not in RETRIEVERS:
        raise typer.BadParameter(f"use one of {', '.join(RETRIEVERS)}", param_hint="--first-stage")
    if input_order not in INPUT_ORDERS:
        raise typer.BadParameter(f"use one of {', '.join(INPUT_ORDERS)}", param_hint="--input-order")
    if first_stage == "dense" and not dense:
        raise typer.BadParameter("--first-stage dense needs the dense model: drop --no-dense", param_hint="--no-dense")
    wanted = None if methods is None else {m.strip() for m in methods.split(",") if m.strip()}
    from .heads import load_head_list
    from .research.datasets import load_dataset
    from .research.evaluation import DenseScorer, evaluate_dataset, evaluation_reranker, paired

    try:
        reranker = evaluation_reranker(model, order=order, max_doc_tokens=max_doc_tokens, device=device)
        sets: dict[str, list[tuple[int, int]]] = {"icr": list(reranker.head_list.heads)}
        from .heads import find_bundled_head_list

        bundled = find_bundled_head_list(reranker.model_id)
        if bundled is not None and bundled.method != "all":
            bundled.check_fits(reranker.model_id, *(getattr(reranker.head_list, a) for a in _SHAPE))
            sets[bundled.method] = list(bundled.heads)
        for spec in heads or []:
            name, _, path = spec.partition("=")
            if not path:
                raise typer.BadParameter(f"{spec!r}: use NAME=PATH or NAME=all", param_hint="--heads")
            if path == "all":
                sets[name] = list(reranker.head_list.heads)
                continue
            hl = load_head_list(path)
            hl.check_fits(reranker.model_id, *(getattr(reranker.head_list, a) for a in _SHAPE))
            sets[name] = list(hl.heads)
        if wanted is not None:
            sets = {name: hs for name, hs in sets.items() if name in wanted}
        want_dense = first_stage == "dense" or wanted is None or "dense" in wanted
        scorer = DenseScorer() if dense and want_dense else None
    except (CoreRerankError, ValueError, TypeError, ImportError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    results = []
    for spec in specs:
        folder, part = _data_spec(spec, split)
        ds = load_dataset(folder, part)
        with progress_bar(f"{ds.name}/{part}", len(ds.query_ids)) as progress:
            res = evaluate_dataset(
                reranker,
                ds,
                sets,
                depth=depth,
                max_queries=max_queries,
                dense=scorer,
                progress=progress,
                retriever=first_stage,
                input_order=input_order,
                seed=seed,
            )
        if wanted is not None:
            keep = {m for m in res.metrics if m in wanted or (m == "first_stage" and "bm25" in wanted)}
            res.metrics = {m: v for m, v in res.metrics.items() if m in keep}
            res.ndcg = {m: v for m, v in res.ndcg.items() if m in keep}
        results.append(res)
        title = f"{ds.name}/{part}: {res.queries} queries, {res.first_stage}, depth {depth}, input {input_order}"
        table = Table(title=title)
        table.add_column("method")
        names = next(iter(res.metrics.values()), {}).keys()
        for metric in names:
            table.add_column(metric, justify="right")
        base = first_stage if first_stage in res.per_query else next(iter(res.per_query), None)
        table.add_column(f"nDCG@10 vs {base} (s.e.)", justify="right")
        for m, values in res.metrics.items():
            diff = "" if m == base or base is None else _paired_cell(paired(res.per_query[m], res.per_query[base]))
            table.add_row(m, *(f"{values[k]:.4f}" for k in names), diff)
        table.caption = f"{res.seconds / max(res.queries, 1):.2f} s per query"
        console.print(table)
    if out is not None:
        out.write_text(json.dumps([r.to_dict() for r in results], indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    app()
