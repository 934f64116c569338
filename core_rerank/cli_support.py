"""What every command of the CLI shares: the engine's options (generated from :class:`EngineSettings`), the one
error path, progress bars and reading document files.

``@engine_options()`` adds one ``--option`` per :class:`~core_rerank.EngineSettings` field to a command (its help
is the field's), and hands the command one checked ``engine: EngineSettings``: an option added to the settings is
an option of every command. ``@reports_errors`` is the one error path: an error core-rerank raises on purpose
prints ``error: <message>`` and exits with status 2 (usage errors are typer's own, also status 2).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import types
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.console import Console
from rich.markup import escape

from .errors import CoreRerankError
from .settings import EngineSettings

__all__ = ["console", "engine_options", "err_console", "progress_bar", "read_documents", "reports_errors"]

console = Console()
err_console = Console(stderr=True)


def fail(message: str) -> typer.Exit:
    """Print ``error: message`` on stderr (stdout carries results, and protocol messages under ``mcp``) and
    return the exit to raise (status 2)."""
    err_console.print(f"[red]error:[/red] {escape(message)}")
    return typer.Exit(2)


def reports_errors(command: Callable) -> Callable:
    """The one error path of the CLI: a :class:`CoreRerankError` (bad input, a model or head list that cannot load,
    a missing optional package) becomes ``error: <message>`` and exit status 2, never a traceback."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except CoreRerankError as exc:
            raise fail(str(exc)) from exc

    return run


def _cli_type(hint: Any) -> type:
    """The plain type typer parses a setting as (``Literal`` choices and ``X | None`` read as ``X``)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    origin = typing.get_origin(hint)
    if origin is Literal or (args and typing.get_origin(args[0]) is Literal):
        return str
    if origin in (typing.Union, types.UnionType):
        plain = [a for a in args if a in (str, int, float, bool)]
        return plain[0] if plain else str
    return hint if hint in (str, int, float, bool) else str


def _choices(hint: Any) -> list[str]:
    lits = [hint, *typing.get_args(hint)]
    return [str(v) for lit in lits if typing.get_origin(lit) is Literal for v in typing.get_args(lit)]


def _option_parameters(exclude: frozenset[str]) -> list[inspect.Parameter]:
    hints = typing.get_type_hints(EngineSettings)
    params = []
    for f in dataclasses.fields(EngineSettings):
        if f.name in exclude:
            continue
        kind = _cli_type(hints[f.name])
        default = f.default
        if f.name == "quantization":
            kind, default = str, "auto"  # 'none' on the command line is None
        help_text = f.metadata["cli"]
        choices = _choices(hints[f.name])
        if choices and f.name != "quantization":
            help_text += f" [{'|'.join(choices)}]"
        flag = "--" + f.name.replace("_", "-")
        decls = [f"{flag}/--no-{flag[2:]}"] if kind is bool else [flag]
        annotation = Annotated[kind if default is not None else kind | None, typer.Option(*decls, help=help_text)]
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation))
    return params


def engine_options(exclude: tuple[str, ...] = ()) -> Callable[[Callable], Callable]:
    """Give a command every engine option (but ``exclude``) as ``--options``; it receives them as one checked
    ``engine: EngineSettings`` keyword argument (with the excluded ones at their defaults)."""
    excluded = frozenset(exclude)

    def decorate(command: Callable) -> Callable:
        signature = inspect.signature(command)
        hints = typing.get_type_hints(command, include_extras=True)
        own = [p.replace(annotation=hints[n]) for n, p in signature.parameters.items() if n != "engine"]
        added = _option_parameters(excluded)
        names = [p.name for p in added]

        @functools.wraps(command)
        def run(**kwargs: Any) -> Any:
            options = {name: kwargs.pop(name) for name in names}
            try:
                engine = EngineSettings.from_options(options)
            except CoreRerankError as exc:
                raise fail(str(exc)) from exc
            return command(engine=engine, **kwargs)

        run.__signature__ = signature.replace(parameters=[*own, *added])  # type: ignore[attr-defined]
        hints = typing.get_type_hints(command, include_extras=True)
        run.__annotations__ = {
            **{k: v for k, v in hints.items() if k != "engine"},
            **{p.name: p.annotation for p in added},
        }
        del run.__wrapped__  # typer reads the signature above, not the wrapped function's
        return run

    return decorate


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
    with Progress(*columns, TimeRemainingColumn(), console=err_console, transient=False) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n, t: bar.update(task, completed=n, total=t)


def read_text(path: Path, param: str) -> str:
    """A UTF-8 text file's contents, or a usage error naming ``param``."""
    if not path.is_file():
        raise typer.BadParameter(f"{path} does not exist", param_hint=param)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise typer.BadParameter(
            f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})", param_hint=param
        ) from exc


def read_documents(path: Path) -> list[Any]:
    """Documents from a .jsonl file (objects with 'text' and optional 'title', or plain strings), or one
    document per line of a plain text file."""
    text = read_text(path, "--docs")
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


def data_spec(spec: str, default_split: str) -> tuple[Path, str]:
    """'DIR' or 'DIR:SPLIT' -> (folder, split)."""
    path, _, split = spec.partition(":") if ":" in Path(spec).name else (spec, "", "")
    folder = Path(path)
    if not folder.is_dir():
        raise typer.BadParameter(f"{folder} is not a data set folder", param_hint="--data")
    return folder, split or default_split


def quiet_transformers() -> None:
    """No transformers progress bars: the CLI shows its own status."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
