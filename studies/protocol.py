"""The data discipline every study follows: which queries fit, which choose, which report.

- train: the detection part of SciFact train (75% of its queries: the seeded split head detection uses) and WikiQA
  train. It fits what is fitted (relevance maps, position bias, per-head choices).
- dev: the held-out 25% of SciFact train and NFCorpus dev. It makes every choice (fusion weights, budgets, counts).
- test: the shared test splits of twelve collections. It only reports.

Each query's candidates are its first stage's top ``DEPTH``, cut to the shipped ``max_doc_tokens``.
"""

from __future__ import annotations

from pathlib import Path

from core_rerank.research.datasets import Dataset, load_dataset, sample_queries
from core_rerank.research.detection import split_queries
from core_rerank.settings import EngineSettings

from . import DATA

__all__ = ["DEPTH", "MAX_DOC_TOKENS", "PLACES", "TEST_SETS", "parts"]

DEPTH = 20
MAX_DOC_TOKENS = EngineSettings().max_doc_tokens  # the studies measure what Reranker() ships
PLACES = {"bm25": ("fs", "shuf"), "dense": ("fs",)}  # shuffled input once per query: the diagnostic
TEST_SETS = [
    "scifact",
    "trec-dl19-passage",
    "trec-dl20-passage",
    "hotpotqa_distractor_dev500",
    "dbpedia_entity_sub50",
    "nfcorpus_tokenized",
    "wikiqa_tok",
    "cranfield",
    "cisi",
    "med",
    "cacm",
    "adi",
]


def parts(
    part: str, per_set: int, shard: int | None = None, data: Path = DATA
) -> list[tuple[Dataset, list[str], dict[str, tuple[str, ...]]]]:
    """(data set, sampled query ids, {pool: placements}) of a part; ``shard`` 0 or 1 takes every other test set."""
    if part == "train":
        sci = load_dataset(data / "scifact", "train")
        det, _ = split_queries(sci.query_ids, 0.25, seed=0)
        wiki = load_dataset(data / "wikiqa_tok", "train")
        return [
            (sci, sample_queries(det, per_set), PLACES),
            (wiki, sample_queries(wiki.query_ids, per_set // 2), {"bm25": ("fs", "shuf")}),
        ]
    if part == "dev":
        sci = load_dataset(data / "scifact", "train")
        _, held = split_queries(sci.query_ids, 0.25, seed=0)
        nf = load_dataset(data / "nfcorpus_tokenized", "dev")
        return [(sci, sample_queries(held, per_set), PLACES), (nf, sample_queries(nf.query_ids, per_set), PLACES)]
    if part != "test":
        raise ValueError(f"part must be 'train', 'dev' or 'test', got {part!r}")
    names = TEST_SETS if shard is None else TEST_SETS[shard::2]
    out = []
    for name in names:
        ds = load_dataset(data / name, "test")
        out.append((ds, sample_queries(ds.query_ids, per_set), PLACES))
    return out
