"""Command line: ``core-rerank rank --query ... --docs FILE.jsonl`` and the other commands.

Each command parses its arguments and calls the package: every engine option comes from
:class:`~core_rerank.EngineSettings` (``@engine_options``), and every error takes one path (``@reports_errors``:
``error: <message>``, exit status 2). docs/cli.md shows each command.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from .cli_support import (
    console,
    data_spec,
    engine_options,
    err_console,
    fail,
    progress_bar,
    quiet_transformers,
    read_documents,
    reports_errors,
)
from .settings import EngineSettings

LOOPBACK = ("127.0.0.1", "localhost", "::1")
"""Host names that listen on this machine only: the servers warn when told to listen anywhere else."""

app = typer.Typer(help="Re-rank documents with the attention heads of a decoder LLM.", no_args_is_help=True)

DataSpecs = Annotated[
    list[str], typer.Option("--data", help="Labelled data: DIR[:SPLIT] (BEIR layout), repeatable. Never a test split.")
]


@app.callback()
def main() -> None:
    """core-rerank: CoRe-head attention re-ranking."""


@app.command()
@engine_options()
@reports_errors
def rank(
    query: Annotated[str, typer.Option("--query", "-q", help="The query to rank the documents for.")],
    docs: Annotated[Path, typer.Option("--docs", "-d", help="JSONL file: {'text', 'title'?} per line, or .txt lines.")],
    top_n: Annotated[int | None, typer.Option("--top-n", "-n", min=1, help="Show only the best N.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    highlights: Annotated[
        bool,
        typer.Option("--highlights", help="Mark each document's best sentence (with --json: every sentence's score)."),
    ] = False,
    *,
    engine: EngineSettings,
) -> None:
    """Rank the documents of DOCS for QUERY and print the ranking."""
    from .reranker import Reranker

    documents = read_documents(docs)
    quiet_transformers()  # the status spinner below covers loading
    with console.status(f"loading {engine.model} ..."):
        reranker = Reranker.from_settings(engine)
    results = reranker.rank(query, documents, top_n=top_n, highlights=highlights)
    if as_json:
        print(json.dumps(results.to_dicts(), indent=1, allow_nan=False))
        return
    table = Table(title=escape(repr(query)), caption=escape(repr(reranker)), expand=True)
    for col in ("rank", "doc", "score", "relevance", "norm"):
        table.add_column(col, justify="right", no_wrap=True, min_width=len(col))
    table.add_column("text", overflow="ellipsis", no_wrap=True, ratio=1)
    for r in results:
        text = _marked(r) if highlights else escape(r.text.replace("\n", " "))  # document text is data, not markup
        table.add_row(
            str(r.rank),
            str(r.index),
            f"{r.score:.4f}" if r.json_score is not None else "empty",
            "-" if r.relevance is None else f"{r.relevance:.3f}",
            f"{r.normalized_score:.3f}",
            text + (" [dim](truncated)[/dim]" if r.truncated else ""),
        )
    console.print(table)


def _marked(result) -> str:
    """A result's text as rich markup with its best sentence marked, shown from that sentence on (what an
    ellipsized one-line cell should not hide)."""
    best = result.best_sentence
    flat = result.text.replace("\n", " ")
    if best is None:
        return escape(flat)
    head = "... " if flat[: best.start].strip() else ""
    return f"{head}[bold yellow]{escape(flat[best.start : best.end])}[/bold yellow]{escape(flat[best.end :])}"


@app.command()
@engine_options()
@reports_errors
def serve(
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
        int, typer.Option(min=1, help="Waiting requests with the same documents scored in one pass (1: no batching).")
    ] = 8,
    max_client_batch_size: Annotated[int, typer.Option(min=1, help="Most documents in one request (422 beyond).")] = (
        1000
    ),
    timeout: Annotated[
        float, typer.Option(min=0, help="Seconds from arrival to answer before a 504, and of the drain on SIGTERM.")
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
        Path | None, typer.Option(help="With --backend ray: a YAML of Ray Serve deployment options (docs/serving.md).")
    ] = None,
    ray_address: Annotated[
        str | None, typer.Option(help="With --backend ray: a running cluster ('auto'). Default: a local one.")
    ] = None,
    *,
    engine: EngineSettings,
) -> None:
    """Serve re-ranking over HTTP (TEI, Infinity, Jina / Cohere v1 / vLLM and Cohere v2 formats): needs the
    'server' extra. The port opens at once; /health answers 503 until the model is loaded. SIGTERM drains: new
    requests get 503, those in flight finish. With --backend ray, the same app runs on Ray Serve replicas (each
    answer names its replica in X-Replica)."""
    import logging

    from .server import ServerSettings, require_server

    if backend not in ("uvicorn", "ray"):
        raise typer.BadParameter("use 'uvicorn' or 'ray'", param_hint="--backend")
    if backend == "uvicorn" and (replicas is not None or deployment_config is not None or ray_address is not None):
        raise typer.BadParameter("--replicas, --deployment-config and --ray-address need --backend ray")
    require_server(ray=backend == "ray")
    settings = ServerSettings(
        engine=engine,
        max_concurrent_requests=max_concurrent_requests,
        max_queue=max_queue,
        max_batch_requests=max_batch_requests,
        max_client_batch_size=max_client_batch_size,
        timeout=timeout or None,
        payload_limit=payload_limit,
        api_key=api_key,
    )
    if host not in LOOPBACK and api_key is None:
        err_console.print(
            f"[yellow]warning:[/yellow] listening on {host} without an API key: anyone who can reach it can use it"
        )
    if backend == "ray":
        from .server import ray_serve

        ray_serve.run(settings, ray_serve.load_deployment_config(deployment_config, replicas), host, port, ray_address)
        return
    from .server.main import serve as serve_uvicorn

    logging.basicConfig(level=log_level.upper(), format="%(levelname)s:     %(name)s: %(message)s")
    quiet_transformers()  # a server's log gets a line when the model is ready, not a progress bar
    failed = serve_uvicorn(settings, host, port, log_level)
    if failed:
        raise fail(failed)


@app.command()
@engine_options()
@reports_errors
def batch(
    input_path: Annotated[
        Path, typer.Argument(metavar="INPUT.jsonl", help="One {'id', 'query', 'documents'} object per line.")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="JSONL to write: {'id', 'results'} per input line.")],
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
    highlights: Annotated[
        bool, typer.Option("--highlights", help="Give each result its sentences with their scores ('highlights').")
    ] = False,
    *,
    engine: EngineSettings,
) -> None:
    """Re-rank every row of INPUT.jsonl ({'id', 'query', 'documents'} per line) and write {'id', 'results':
    [{'index', 'score', 'relevance'}, ...]} rows, best first, in input order. A bad row gets an 'error' field in
    its output row; the job goes on. Embedded with a progress bar, or on Ray Data with --ray --actors N."""
    from .batch import BatchSettings, read_input, run_embedded, run_ray

    lines = read_input(input_path)
    settings = BatchSettings(engine=engine, threads=cpus_per_actor if use_ray else None, highlights=highlights)
    if use_ray:
        errors = run_ray(
            settings,
            lines,
            output,
            actors=actors,
            cpus_per_actor=cpus_per_actor,
            gpus_per_actor=gpus_per_actor,
            batch_size=batch_size,
            address=ray_address,
        )
    else:
        quiet_transformers()
        with progress_bar("re-ranking rows", len(lines)) as progress:
            errors = run_embedded(settings, lines, output, progress)
    note = f", {errors} with an error (see their 'error' field)" if errors else ""
    err_console.print(f"wrote {output}: {len(lines)} rows{note}")


@app.command()
@engine_options()
@reports_errors
def mcp(
    transport: Annotated[
        str, typer.Option(help="'stdio' (the client starts this command) or 'http' (streamable HTTP).")
    ] = "stdio",
    host: Annotated[str, typer.Option(help="With --transport http: interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="With --transport http: port to listen on.")] = 8000,
    path: Annotated[str, typer.Option(help="With --transport http: the MCP endpoint's path.")] = "/mcp",
    max_call_documents: Annotated[
        int, typer.Option(min=1, help="Most documents in one tool call (a tool error beyond).")
    ] = 1000,
    log_level: Annotated[str, typer.Option(help="Log level (stderr): 'info' logs every request.")] = "warning",
    *,
    engine: EngineSettings,
) -> None:
    """Serve the tools 'rerank' and 'compress' over the Model Context Protocol (the 'mcp' extra), for agents.
    The model loads first (a bad one exits with status 2); on stdio nothing but protocol messages reaches stdout."""
    from .mcp_server import build_server, require_mcp, run

    if transport not in ("stdio", "http"):
        raise typer.BadParameter("use 'stdio' or 'http'", param_hint="--transport")
    if not path.startswith("/"):
        raise typer.BadParameter("a path starts with '/'", param_hint="--path")
    if log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise typer.BadParameter("use debug, info, warning, error or critical", param_hint="--log-level")
    require_mcp()
    from .reranker import Reranker

    quiet_transformers()
    reranker = Reranker.from_settings(engine)
    server = build_server(
        reranker, host=host, port=port, path=path, max_documents=max_call_documents, log_level=log_level
    )
    if transport == "http":
        if host not in LOOPBACK:
            err_console.print(f"[yellow]warning:[/yellow] listening on {host}: anyone who can reach it can use it")
        err_console.print(f"MCP server ({reranker!r}) on http://{host}:{port}{path}")
    run(server, "http" if transport == "http" else "stdio")


def _datasets(specs: list[str], split: str, what: str, max_queries: int | None = None) -> list[tuple]:
    """``(data set, sampled query ids)`` of each ``DIR[:SPLIT]``, warning on a test split."""
    from .research.datasets import load_dataset, sample_queries

    out = []
    for spec in specs:
        folder, part = data_spec(spec, split)
        if part == "test":
            err_console.print(f"[yellow]warning:[/yellow] {what} on a test split ({spec}) leaks into evaluation")
        ds = load_dataset(folder, part)
        out.append((ds, sample_queries(ds.query_ids, max_queries)))
    return out


@app.command("detect-heads")
@engine_options(exclude=("heads",))
@reports_errors
def detect_heads(
    data: DataSpecs,
    out: Annotated[Path, typer.Option("--out", "-o", help="Head-list JSON to write.")],
    split: Annotated[str, typer.Option(help="Split of every --data DIR given without :SPLIT.")] = "train",
    method: Annotated[str, typer.Option(help="'core' (contrastive SCoRe) or 'qr' (mass on the positive).")] = "core",
    k: Annotated[int, typer.Option(min=1, help="Number of heads to keep.")] = 8,
    tau: Annotated[float, typer.Option(help="SCoRe temperature (core only).")] = 0.1,
    negatives: Annotated[int, typer.Option(min=1, help="Hard negatives per sample (first-stage, not relevant).")] = 9,
    max_samples: Annotated[int | None, typer.Option(min=1, help="At most this many samples per data set.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the positive's position.")] = 0,
    max_layers: Annotated[
        int | None,
        typer.Option(min=1, help="Choose heads only in the first N layers (the engine then runs N layers at most)."),
    ] = None,
    masses: Annotated[Path | None, typer.Option(help="Also save the per-sample head masses (.npz) for sweeps.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Also write a PNG head map (needs matplotlib).")] = None,
    *,
    engine: EngineSettings,
) -> None:
    """Detect CoRe (or QR) heads of MODEL on labelled data and write a head list the engine loads (every head is
    captured; --max-doc-tokens cuts the detection prompts' documents)."""
    from .reranker import Reranker
    from .research.detection import build_samples, collect_masses, make_head_list

    if method not in ("core", "qr"):
        raise typer.BadParameter("method must be 'core' or 'qr'", param_hint="--method")
    samples = []
    for ds, _ in _datasets(data, split, "detecting"):
        samples += build_samples(ds, None, negatives, max_samples, seed)
    if not samples:
        raise fail("no detection sample (queries need a relevant and non-relevant candidates)")
    reranker = Reranker.from_settings(engine.replace(heads="all"))
    with progress_bar("detecting heads", len(samples)) as progress:
        result = collect_masses(reranker, samples, engine.max_doc_tokens, progress)
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
@engine_options()
@reports_errors
def calibrate(
    data: DataSpecs,
    out: Annotated[Path, typer.Option("--out", "-o", help="Head-list JSON to write (the list + its relevance map).")],
    split: Annotated[str, typer.Option(help="Split of every --data DIR given without :SPLIT.")] = "train",
    depth: Annotated[int, typer.Option(min=2, help="First-stage candidates per query, passed best first.")] = 20,
    max_queries: Annotated[int | None, typer.Option(min=1, help="A fixed seeded sample of queries per set.")] = None,
    form: Annotated[
        str,
        typer.Option(
            help="What the map reads: 'list' (the score and the list's size: relevance keeps the list's order), "
            "'context' (also the document's length), 'length' (the score and the length) or 'score' (alone)."
        ),
    ] = "score",
    *,
    engine: EngineSettings,
) -> None:
    """Fit the calibrated `relevance` of a head list (--heads, default the model's bundled one) on labelled data: a
    logistic map of each document's raw score (with, by --form, its token count and its list's size) to the
    probability that it is relevant, fitted with the engine settings given (it records them) for the --attention
    mode given, and written into the head list (load it with --heads / heads=)."""
    from .reranker import Reranker
    from .research.calibration import FORMS
    from .research.calibration import calibrate as fit

    if form not in FORMS:
        raise typer.BadParameter(f"must be one of {', '.join(FORMS)}", param_hint="--form")
    sets = _datasets(data, split, "calibrating", max_queries)
    reranker = Reranker.from_settings(engine.replace(max_documents=None))
    with progress_bar("scoring labelled candidates", sum(len(q) for _, q in sets)) as progress:
        head_list, check = fit(reranker, sets, depth, progress, form=form)
    head_list.save(out)
    m = head_list.relevance_map_for(reranker.settings.attention)
    console.print(
        f"wrote {out}: relevance = 1 / (1 + exp(-(({m.a:.4g} + {m.score_list_size:.4g} log n) * score + {m.b:.4g} "
        f"+ {m.length:.4g} log tokens + {m.list_size:.4g} log n))) for attention={reranker.settings.attention!r}, "
        f"from {check.documents} documents ({check.relevant} relevant); ECE on the fitting data {check.ece:.3f}"
    )


def _evaluation_table(res, first_stage: str, depth: int, input_order: str) -> Table:
    from .research.metrics import paired

    title = f"{res.dataset}/{res.split}: {res.queries} queries, {res.first_stage}, depth {depth}, input {input_order}"
    table = Table(title=title)
    table.add_column("method")
    names = next(iter(res.metrics.values()), {}).keys()
    for metric in names:
        table.add_column(metric, justify="right")
    base = first_stage if first_stage in res.per_query else next(iter(res.per_query), None)
    table.add_column(f"nDCG@10 vs {base} (s.e.)", justify="right")
    for m, values in res.metrics.items():
        diff = ""
        if m != base and base is not None:
            p = paired(res.per_query[m], res.per_query[base])
            diff = f"{p.mean:+.4f}" + (f" ({p.se:.4f})" if p.se is not None else "")
        table.add_row(m, *(f"{values[k]:.4f}" for k in names), diff)
    table.caption = f"{res.seconds / max(res.queries, 1):.2f} s per query"
    return table


@app.command()
@engine_options(exclude=("heads",))
@reports_errors
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
    depth: Annotated[int, typer.Option(min=1, help="Re-rank this many first-stage candidates.")] = 20,
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
    *,
    engine: EngineSettings,
) -> None:
    """nDCG@10, MRR@10 and recall@depth (pytrec_eval) of BM25, dense and attention re-ranking with each
    head list (icr = all heads, the bundled list under its method's name, and --heads NAME=PATH), all scored from
    the same forward passes of the engine with the settings given."""
    from .research.datasets import load_dataset
    from .research.evaluation import INPUT_ORDERS, RETRIEVERS, DenseScorer, evaluate_dataset, evaluation_reranker
    from .research.evaluation import head_sets as evaluated_head_sets

    specs = [*(data_dirs or []), *(data or [])]
    if not specs:
        raise typer.BadParameter("give at least one data set folder", param_hint="DATA_DIR")
    if first_stage not in RETRIEVERS:
        raise typer.BadParameter(f"use one of {', '.join(RETRIEVERS)}", param_hint="--first-stage")
    if input_order not in INPUT_ORDERS:
        raise typer.BadParameter(f"use one of {', '.join(INPUT_ORDERS)}", param_hint="--input-order")
    if first_stage == "dense" and not dense:
        raise typer.BadParameter("--first-stage dense needs the dense model: drop --no-dense", param_hint="--no-dense")
    wanted = None if methods is None else {m.strip() for m in methods.split(",") if m.strip()}
    reranker = evaluation_reranker(engine)
    sets = evaluated_head_sets(reranker, heads or [])
    if wanted is not None:
        sets = {name: hs for name, hs in sets.items() if name in wanted}
    want_dense = first_stage == "dense" or wanted is None or "dense" in wanted
    scorer = DenseScorer() if dense and want_dense else None
    results = []
    for spec in specs:
        folder, part = data_spec(spec, split)
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
            res.keep(wanted)
        results.append(res)
        console.print(_evaluation_table(res, first_stage, depth, input_order))
    if out is not None:
        out.write_text(json.dumps([r.to_dict() for r in results], indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    app()
