"""Input rows for the batch tests: tiny, varied, deterministic (a seeded pick of short real sentences), so a 200-row
job runs in minutes on two CPU cores."""

from __future__ import annotations

import itertools
import json
import math
import random
from pathlib import Path

SENTENCES = [
    "cp copies files and directories.",
    "mv moves or renames files.",
    "Bananas are rich in potassium.",
    "The Bastille fell on 14 July 1789.",
    "Plants turn light into sugar.",
    "Everest is the highest mountain.",
    "Mitochondria make ATP.",
    "append() adds an item to a list.",
    "Paris is the capital of France.",
    "Rust has no garbage collector.",
]
QUERIES = [
    "how do I copy files?",
    "which fruit has potassium?",
    "when did the French Revolution start?",
    "what is the tallest mountain?",
    "how do cells get energy?",
    "how do I add to a Python list?",
]


def make_rows(n: int, seed: int = 0) -> list[dict]:
    """``n`` rows ``{id, query, documents}`` of 3 to 5 short documents; every fifth row gives its documents as
    ``{"text", "title"}`` objects, ids alternate between ints and strings."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        docs: list = rng.sample(SENTENCES, rng.randint(3, 5))
        if i % 5 == 4:
            docs = [{"text": d, "title": f"t{k}"} for k, d in enumerate(docs)]
        rows.append({"id": i if i % 2 else f"row-{i}", "query": rng.choice(QUERIES), "documents": docs})
    return rows


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def assert_same_rows(got: list[dict], want: list[dict], tol: float = 1e-5) -> None:
    """Equal rows in the same order: the same ids and errors, every document's score and relevance within ``tol``
    (different processes may differ in the last digits), and the same order wherever two scores are further apart
    than ``tol`` (a near-tie may swap)."""
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g["id"] == w["id"]
        assert ("error" in g) == ("error" in w), (g, w)
        if "error" in w:
            assert g == w
            continue
        assert sorted(r["index"] for r in g["results"]) == sorted(r["index"] for r in w["results"])
        by_index = {r["index"]: r for r in w["results"]}
        for r in g["results"]:
            ref = by_index[r["index"]]
            for key in ("score", "relevance"):
                if ref[key] is None:
                    assert r[key] is None
                else:
                    assert math.isclose(r[key], ref[key], rel_tol=tol, abs_tol=tol), (key, r, ref)
        order = [by_index[r["index"]]["score"] for r in g["results"]]
        finite = [s for s in order if s is not None]
        assert all(a >= b - tol for a, b in itertools.pairwise(finite)), f"row {g['id']} is out of order: {order}"
