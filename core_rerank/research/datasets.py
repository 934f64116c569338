"""Labelled re-ranking data in the BEIR layout, and the first-stage candidates to re-rank.

A data set folder holds ``corpus.jsonl`` ({"_id", "title", "text"}), ``queries.jsonl`` ({"_id", "text"}),
``qrels/<split>.tsv`` (header ``query-id corpus-id score``), and optionally ``candidates_<split>.jsonl``
(a fixed pool per query) and ``runs/*.trec`` (first-stage TREC runs). See ../shared/data/README.md.

First stage, in order of preference (:func:`first_stage`):

1. a TREC run of the split (``runs/*.<split>.trec``, else a split-less run such as TREC DL's
   ``runs/BM25.top100.trec``): candidates in run order with the run's scores;
2. a candidate file: the pool of each query, ordered by BM25 (bm25s, over the whole corpus) so that
   "first-stage order" means the same thing everywhere (the file's own order is kept for ties);
3. neither: bm25s retrieval of the top 100 over the whole corpus.

This module needs no model; bm25s is imported only when BM25 scores are needed.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

__all__ = [
    "BM25Index",
    "Candidates",
    "Dataset",
    "first_stage",
    "load_dataset",
    "read_trec_run",
    "sample_queries",
    "write_trec_run",
]


@dataclass
class Candidates:
    """First-stage candidates of one query: doc ids best first, with first-stage scores."""

    doc_ids: list[str]
    scores: list[float]


@dataclass
class Dataset:
    """One split of a BEIR-layout folder. ``qrels[qid][doc_id] = grade``; only queries in qrels are evaluated."""

    name: str
    path: Path
    split: str
    corpus: dict[str, dict[str, str]]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    extra: dict[str, object] = field(default_factory=dict)

    def doc_text(self, doc_id: str) -> str:
        """``title\\ntext`` when a title exists (docs/method.md, section 1), else the text."""
        doc = self.corpus[doc_id]
        title = (doc.get("title") or "").strip()
        return f"{title}\n{doc['text']}" if title else doc["text"]

    @property
    def query_ids(self) -> list[str]:
        """Evaluated queries (in qrels, with text and at least one relevant document), in qrels file order."""
        return [q for q, rel in self.qrels.items() if q in self.queries and any(g > 0 for g in rel.values())]

    @cached_property
    def bm25(self) -> BM25Index:
        return BM25Index(self.corpus)


def sample_queries(query_ids: Sequence[str], max_queries: int | None, seed: int = 1234) -> list[str]:
    """The first ``max_queries`` of ``query_ids`` in a seeded shuffle, kept in their given order: a fixed, unbiased
    sample (all of them when ``max_queries`` is ``None`` or not smaller)."""
    qids = list(query_ids)
    if max_queries is None or max_queries >= len(qids):
        return qids
    import random

    ids = sorted(qids)
    random.Random(seed).shuffle(ids)
    keep = set(ids[:max_queries])
    return [q for q in qids if q in keep]


def _read_jsonl(path: Path) -> Iterable[dict]:
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    with path.open(encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader)
        if header[:2] != ["query-id", "corpus-id"]:
            raise ValueError(f"{path}: expected a 'query-id<TAB>corpus-id<TAB>score' header, got {header}")
        for row in reader:
            if len(row) >= 3:
                qrels.setdefault(row[0], {})[row[1]] = int(float(row[2]))
    return qrels


def load_dataset(path: str | Path, split: str = "test", qrels_file: str | None = None) -> Dataset:
    """Load ``path`` (a BEIR-layout folder) for ``split``; ``qrels_file`` overrides ``qrels/<split>.tsv``."""
    root = Path(path)
    qpath = root / "qrels" / (qrels_file or f"{split}.tsv")
    if not qpath.is_file():
        have = sorted(p.name for p in (root / "qrels").glob("*.tsv")) if (root / "qrels").is_dir() else []
        raise FileNotFoundError(f"{qpath} does not exist (qrels there: {have})")
    corpus = {
        str(d["_id"]): {"title": d.get("title") or "", "text": d.get("text") or ""}
        for d in _read_jsonl(root / "corpus.jsonl")
    }
    queries = {str(q["_id"]): q["text"] for q in _read_jsonl(root / "queries.jsonl")}
    return Dataset(root.name, root, split, corpus, queries, read_qrels(qpath))


def read_trec_run(path: Path) -> dict[str, Candidates]:
    """A TREC run (``qid Q0 doc rank score tag``), each query's documents by score (rank breaks ties)."""
    rows: dict[str, list[tuple[float, int, str]]] = {}
    with Path(path).open(encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 5:
                rows.setdefault(parts[0], []).append((float(parts[4]), int(parts[3]), parts[2]))
    out = {}
    for qid, items in rows.items():
        items.sort(key=lambda t: (-t[0], t[1]))
        out[qid] = Candidates([d for _, _, d in items], [s for s, _, _ in items])
    return out


def write_trec_run(run: dict[str, dict[str, float]], path: Path, tag: str) -> None:
    """Write ``run[qid][doc] = score`` as a TREC run (best first)."""
    with Path(path).open("w", encoding="utf-8") as f:
        for qid, docs in run.items():
            for rank, (doc, score) in enumerate(sorted(docs.items(), key=lambda t: -t[1]), start=1):
                f.write(f"{qid} Q0 {doc} {rank} {score:.6f} {tag}\n")


class BM25Index:
    """bm25s (Lucene BM25, k1=1.5, b=0.75, English stop words) over a whole corpus."""

    def __init__(self, corpus: dict[str, dict[str, str]]) -> None:
        import bm25s

        self._bm25s = bm25s
        self.doc_ids = list(corpus)
        self._pos = {d: i for i, d in enumerate(self.doc_ids)}
        texts = [f"{corpus[d]['title']} {corpus[d]['text']}".strip() for d in self.doc_ids]
        tokens = bm25s.tokenize(texts, stopwords="en", show_progress=False)
        self.retriever = bm25s.BM25()
        self.retriever.index(tokens, show_progress=False)

    def _all_scores(self, query: str):
        tokens = self._bm25s.tokenize([query], stopwords="en", show_progress=False, return_ids=False)[0]
        return self.retriever.get_scores(tokens)

    def score(self, query: str, doc_ids: Sequence[str]) -> list[float]:
        scores = self._all_scores(query)
        return [float(scores[self._pos[d]]) for d in doc_ids]

    def search(self, query: str, depth: int = 100) -> Candidates:
        """The ``depth`` best documents of the corpus for ``query`` (a first stage)."""
        scores = self._all_scores(query)
        order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:depth]
        return Candidates([self.doc_ids[i] for i in order], [float(scores[i]) for i in order])


def _find_run(root: Path, split: str, run: str | None) -> Path | None:
    runs = root / "runs"
    if run:
        p = Path(run) if Path(run).is_file() else runs / run
        if not p.is_file():
            raise FileNotFoundError(f"run {run!r} not found (looked at {p})")
        return p
    if not runs.is_dir():
        return None
    for pattern in (f"bm25s_top100.{split}.trec", f"*.{split}.trec", "BM25.top100.trec"):
        found = sorted(runs.glob(pattern))
        if found:
            return found[0]
    return None


def first_stage(ds: Dataset, run: str | None = None, depth: int = 100) -> tuple[dict[str, Candidates], str]:
    """Candidates per evaluated query (best first, at most ``depth``) and a description of their source."""
    qids = ds.query_ids
    run_path = _find_run(ds.path, ds.split, run)
    if run_path is not None:
        got = read_trec_run(run_path)
        out = {q: Candidates(got[q].doc_ids[:depth], got[q].scores[:depth]) for q in qids if q in got}
        missing = [q for q in qids if q not in got]
        for q in missing:  # a query absent from the run gets no candidates: it scores 0
            out[q] = Candidates([], [])
        return out, f"run {run_path.relative_to(ds.path)}"
    cand_path = ds.path / f"candidates_{ds.split}.jsonl"
    if cand_path.is_file():
        pools = {str(r["query_id"]): [str(d) for d in r["candidates"]] for r in _read_jsonl(cand_path)}
        out = {}
        for q in qids:
            pool = [d for d in pools.get(q, []) if d in ds.corpus]
            scores = ds.bm25.score(ds.queries[q], pool) if pool else []
            order = sorted(range(len(pool)), key=lambda i: (-scores[i], i))[:depth]
            out[q] = Candidates([pool[i] for i in order], [scores[i] for i in order])
        return out, f"{cand_path.name} pools ordered by bm25s"
    out = {q: ds.bm25.search(ds.queries[q], depth) for q in qids}
    return out, f"bm25s top-{depth} over the corpus"
