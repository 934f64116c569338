"""``core-rerank mcp``: the engine as Model Context Protocol tools, for agents.

Two tools over one loaded :class:`~core_rerank.Reranker`:

- ``rerank(query, documents, top_n?)``: the documents best first, each ``{index, score, relevance, text}``
  (``index`` into the given list; what ``Reranker.rank`` returns).
- ``compress(query, documents, top_n?, keep?, keep_tokens?, scope?, min_sentence_score?)``: the same ranking with
  each returned document pruned to its best sentences (``Reranker.compress``), plus the kept share of tokens: what an
  agent hands its generator instead of whole chunks.

Served over stdio (an agent framework starts ``core-rerank mcp`` as a subprocess) or streamable HTTP on loopback,
with the official ``mcp`` SDK (the ``mcp`` extra). The model loads before the server answers, so a bad model name
fails the command (exit status 2) instead of every tool call. One forward pass runs at a time (one model); tool
calls wait their turn on a worker thread, so the event loop keeps answering pings and listings meanwhile. Bad
arguments come back as tool errors (``isError``) carrying the engine's message, never a crash of the server.
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, Field

from .errors import CoreRerankError, DependencyMissingError
from .settings import DEFAULT_MAX_DOCUMENTS

if TYPE_CHECKING:
    from mcp.server.fastmcp import FastMCP

    from .reranker import Reranker
    from .results import RankedResults

__all__ = ["CompressOutput", "RerankOutput", "build_server", "require_mcp", "run"]

T = TypeVar("T")

INSTRUCTIONS = (
    "Re-rank retrieved passages by their relevance to a query with a language model's retrieval attention heads. "
    "Call 'rerank' to order candidate passages (best first) before reading them; call 'compress' to also cut each "
    "returned passage down to its sentences that matter for the query, to save context."
)


class RankedDocument(BaseModel):
    """One document of a ranking."""

    index: int = Field(description="Position of the document in the given list (0-based).")
    score: float | None = Field(description="Raw attention score, higher is more relevant; null for an empty one.")
    relevance: float | None = Field(description="Calibrated relevance in [0, 1] (null without a fitted map).")
    text: str = Field(description="The document's text as scored.")


class RerankOutput(BaseModel):
    """A ranking, best first."""

    results: list[RankedDocument]


class CompressedDocument(RankedDocument):
    """One document of a ranking, pruned to its best sentences."""

    text: str = Field(description="The kept sentences in their original order; ' [...] ' marks dropped text.")
    kept_ratio: float = Field(description="Share of the document's tokens kept.")


class CompressOutput(BaseModel):
    """A ranking, best first, each document pruned."""

    results: list[CompressedDocument]
    kept_tokens: int = Field(description="Tokens kept over all returned documents.")
    tokens: int = Field(description="Tokens of all returned documents before pruning.")


Query = Annotated[str, Field(description="What the documents are ranked for (a question or a search request).")]
Documents = Annotated[list[str], Field(description="The candidate passages' texts, e.g. a retriever's results.")]
TopN = Annotated[int | None, Field(ge=1, description="Return only the best N (default: all).")]


def require_mcp() -> None:
    """Raise :class:`~core_rerank.DependencyMissingError` (with the pip command) unless the ``mcp`` SDK is
    installed."""
    if importlib.util.find_spec("mcp") is None:
        raise DependencyMissingError("core-rerank mcp needs the MCP SDK: pip install 'core-rerank[mcp]'")


def _ranked(results: RankedResults) -> list[RankedDocument]:
    return [RankedDocument(index=r.index, score=r.json_score, relevance=r.relevance, text=r.text) for r in results]


def _compressed(results: RankedResults) -> CompressOutput:
    docs = [
        CompressedDocument(
            index=r.index,
            score=r.json_score,
            relevance=r.relevance,
            text=r.compression.text,
            kept_ratio=r.compression.ratio,
        )
        for r in results
    ]
    return CompressOutput(
        results=docs,
        kept_tokens=sum(r.compression.kept_tokens for r in results),
        tokens=sum(r.compression.tokens for r in results),
    )


def build_server(
    reranker: Reranker,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    path: str = "/mcp",
    max_documents: int = DEFAULT_MAX_DOCUMENTS,
    log_level: str = "warning",
) -> FastMCP:
    """An MCP server (``mcp.server.fastmcp.FastMCP``) whose ``rerank`` and ``compress`` tools call ``reranker``.

    ``host``, ``port`` and ``path`` matter only for streamable HTTP (on loopback the SDK also checks the Host and
    Origin headers, against DNS rebinding); ``max_documents`` bounds one call's list (a tool error beyond);
    ``log_level`` is the SDK's (its log goes to stderr: a line per request at "info")."""
    require_mcp()
    import anyio.to_thread
    from mcp.server.fastmcp import FastMCP
    from mcp.server.fastmcp.exceptions import ToolError
    from mcp.types import ToolAnnotations

    server = FastMCP(
        "core-rerank",
        instructions=INSTRUCTIONS,
        host=host,
        port=port,
        streamable_http_path=path,
        log_level=log_level.upper(),  # type: ignore[arg-type]
    )
    lock = threading.Lock()  # one model: one forward pass at a time
    read_only = ToolAnnotations(readOnlyHint=True, idempotentHint=True, openWorldHint=False)

    async def engine(documents: list[str], call: Callable[[], T]) -> T:
        if len(documents) > max_documents:
            raise ToolError(f"{len(documents)} documents in one call; at most {max_documents}")

        def locked() -> T:
            with lock:
                return call()

        try:
            return await anyio.to_thread.run_sync(locked)
        except CoreRerankError as exc:  # bad input or a scoring failure: the client reads why
            raise ToolError(str(exc)) from exc

    @server.tool(title="Re-rank documents", annotations=read_only)
    async def rerank(query: Query, documents: Documents, top_n: TopN = None) -> RerankOutput:
        """Order documents by relevance to the query, best first."""
        ranked = await engine(documents, lambda: reranker.rank(query, documents, top_n, show_progress_bar=False))
        return RerankOutput(results=_ranked(ranked))

    @server.tool(title="Re-rank and prune documents", annotations=read_only)
    async def compress(
        query: Query,
        documents: Documents,
        top_n: TopN = None,
        keep: Annotated[
            float, Field(gt=0, le=1, description="Share of each document's tokens to keep (its best sentences).")
        ] = 0.5,
        keep_tokens: Annotated[
            int | None, Field(ge=1, description="Keep this many tokens instead of a share (overrides keep).")
        ] = None,
        scope: Annotated[
            Literal["list", "document"],
            Field(description="'list': one budget over all returned documents; 'document': each keeps its share."),
        ] = "list",
        min_sentence_score: Annotated[
            float | None, Field(description="Also drop sentences scoring below this (attention score units).")
        ] = None,
        rank_by: Annotated[
            Literal["density", "score"],
            Field(description="Which sentences go first: 'density' (score per token) or 'score' (one long document)."),
        ] = "density",
    ) -> CompressOutput:
        """Order documents by relevance to the query, best first, each cut down to its sentences that matter for
        the query (original order kept, dropped text marked ' [...] ')."""
        budget: float | int = keep_tokens if keep_tokens is not None else keep
        ranked = await engine(
            documents,
            lambda: reranker.compress(
                query,
                documents,
                top_n,
                keep=budget,
                scope=scope,
                min_sentence_score=min_sentence_score,
                rank_by=rank_by,
                show_progress_bar=False,
            ),
        )
        return _compressed(ranked)

    return server


def run(server: FastMCP, transport: Literal["stdio", "http"]) -> None:
    """Serve ``server`` until the client closes stdin (stdio) or the process is stopped (HTTP)."""
    import anyio

    if transport == "stdio":
        anyio.run(server.run_stdio_async)
        return
    import uvicorn

    settings: Any = server.settings
    config = uvicorn.Config(
        server.streamable_http_app(), host=settings.host, port=settings.port, log_level=settings.log_level.lower()
    )
    anyio.run(uvicorn.Server(config).serve)
