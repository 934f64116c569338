"""A small synthetic stand-in for what ``studies.order_collect`` writes (WORK/{train,dev,test}.pkl, heads.pkl and a
WORK/<model>/ for another model), with attention scores that carry the labels plus noise, so the whole analysis runs
in seconds on a machine without the collected passes (tens of MB, hours of forward passes)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from core_rerank.heads import find_bundled_head_list

N_DOCS = 12
SETS = {
    "train": ["scifact", "wikiqa_tok"],
    "dev": ["scifact", "nfcorpus_tokenized"],
    "test": ["scifact", "trec-dl19-passage", "nfcorpus_tokenized", "cranfield", "wikiqa_tok", "adi"],
}


def _record(rng: np.random.Generator, heads: list[tuple[int, int]], core_rows: list[int], places: dict) -> dict:
    doc_ids = [f"d{i}" for i in range(N_DOCS)]
    relevant = set(rng.choice(N_DOCS, size=int(rng.integers(1, 3)), replace=False).tolist())
    qrels = {d: (1 if i in relevant else 0) for i, d in enumerate(doc_ids)}
    label = np.array([1.0 if i in relevant else 0.0 for i in range(N_DOCS)])
    bm25 = {d: float(10 - 0.5 * i + 2 * label[i] + rng.normal()) for i, d in enumerate(doc_ids)}
    dense = {d: float(0.5 + 0.1 * label[i] + 0.05 * rng.normal()) for i, d in enumerate(doc_ids)}
    rec = {"query": "q", "qrels": qrels, "bm25": dict(sorted(bm25.items(), key=lambda kv: -kv[1])), "dense": dense}
    rec["pools"] = {}
    for pool, pool_places in places.items():
        order = list(rec["bm25"]) if pool == "bm25" else sorted(doc_ids, key=lambda d: -dense[d])
        lab = np.array([label[doc_ids.index(d)] for d in order])
        for place in pool_places:
            pos = list(range(N_DOCS)) if place == "fs" else rng.permutation(N_DOCS).tolist()
            cal = (0.02 * lab[None, :] + 0.03 * rng.normal(size=(len(heads), N_DOCS))).astype("float32")
            qm = (np.abs(cal) + 0.1).astype("float32")
            nm = (qm - cal).astype("float32")
            sets = {
                "icr": cal.sum(0).tolist(),
                "core": cal[core_rows].sum(0).tolist(),
                "qr": cal[core_rows[: len(core_rows) // 2]].sum(0).tolist(),
            }
            rec["pools"][(pool, place)] = {
                "doc_ids": order,
                "pos": pos,
                "tokens": rng.integers(50, 200, size=N_DOCS).tolist(),
                "qm": qm,
                "nm": nm,
                "cal": cal,
                "sets": sets,
            }
    return rec


def write_store(work: Path, queries_per_set: int = 6, seed: int = 0, other_model: str = "gemma-3-270m") -> Path:
    """Write a synthetic WORK directory; returns it."""
    rng = np.random.default_rng(seed)
    core = find_bundled_head_list("HuggingFaceTB/SmolLM2-135M-Instruct", "core")
    heads = [(layer, h) for layer in range(30) for h in range(9)]
    core_rows = [heads.index(tuple(h)) for h in core.heads]
    places = {"bm25": ("fs", "shuf"), "dense": ("fs",)}
    work.mkdir(parents=True, exist_ok=True)
    (work / "heads.pkl").write_bytes(pickle.dumps(heads))
    for part, sets in SETS.items():
        store = {
            (ds, f"{part}-{k}"): _record(rng, heads, core_rows, places) for ds in sets for k in range(queries_per_set)
        }
        (work / f"{part}.pkl").write_bytes(pickle.dumps(store))
    other = work / other_model
    other.mkdir(exist_ok=True)
    small = [(0, 0), (1, 1)]
    for part, sets in SETS.items():
        n = queries_per_set if part != "train" else 2
        store = {(ds, f"{part}-{k}"): _record(rng, small, [0, 1], places) for ds in sets for k in range(n)}
        for rec in store.values():
            for p in rec["pools"].values():
                p["sets"] = {"core": p["sets"]["core"]}
        (other / f"{part}.pkl").write_bytes(pickle.dumps(store))
    return work
