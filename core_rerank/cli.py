"""Command line: ``core-rerank rank --query ... --docs FILE.jsonl``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from .errors import CoreRerankError

app = typer.Typer(help="Re-rank documents with the attention heads of a decoder LLM.", no_args_is_help=True)
console = Console()


def read_documents(path: Path) -> list[Any]:
    """Documents from a .jsonl file (objects with 'text' and optional 'title', or plain strings), or one
    document per line of a plain text file."""
    if not path.is_file():
        raise typer.BadParameter(f"{path} does not exist", param_hint="--docs")
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
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
    model: Annotated[str, typer.Option(help="'default', a Hugging Face id or directory, or a .gguf file.")] = "default",
    heads: Annotated[str | None, typer.Option(help="Head list: JSON path or 'all'. Default: bundled.")] = None,
    top_n: Annotated[int | None, typer.Option("--top-n", "-n", min=1, help="Show only the best N.")] = None,
    quantization: Annotated[
        str, typer.Option(help="'auto' (4-bit for 1B+ models on CUDA), 'none', '4bit' or '8bit'.")
    ] = "auto",
    device: Annotated[str | None, typer.Option(help="'cpu' or 'cuda'. Default: CUDA if available.")] = None,
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
            reranker = Reranker(model, heads=heads, quantization=quant, device=device)
        results = reranker.rank(query, documents, top_n=top_n)
    except (CoreRerankError, ValueError, TypeError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    if as_json:
        print(json.dumps(results.to_dicts(), indent=1))
        return
    table = Table(title=f"{query!r}", caption=repr(reranker), expand=True)
    for col in ("rank", "doc", "score", "norm"):
        table.add_column(col, justify="right", no_wrap=True, min_width=len(col))
    table.add_column("text", overflow="ellipsis", no_wrap=True, ratio=1)
    for r in results:
        text = r.text.replace("\n", " ")
        table.add_row(
            str(r.rank),
            str(r.index),
            f"{r.score:.4f}",
            f"{r.normalized_score:.3f}",
            text + (" [dim](truncated)[/dim]" if r.truncated else ""),
        )
    console.print(table)


if __name__ == "__main__":
    app()
