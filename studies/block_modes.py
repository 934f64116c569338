"""Block attention against the full prompt, and which block position scheme to ship, measured on dev.

    python -m studies.block_modes [--part dev] [--per-set 20] [--out benchmarks/results/block_modes_dev.json]

Data as every study (``studies.protocol``): dev is the held-out 25% of SciFact train and NFCorpus dev; each query's
BM25 top 20, cut to the shipped ``max_doc_tokens``. Modes, on the default model and its bundled heads, every other
setting as shipped:

- ``full``: today's list-wise prompt (``attention="full"``), passed best first (``fs``) and shuffled (``shuf``);
- ``block-end``: ``attention="block"``, every document ending right before the query (the shipped layout);
- ``block-start``: ``attention="block"``, every document starting right after the prefix.

A block mode's scores do not depend on the input order (tests check it), so it runs once per query, and its
shuffled row is the same ranking. Each is scored alone and fused with the BM25 scores (``scoring.fuse`` at the head
list's fusion weight). Reported: nDCG@10 per mode and placement with paired differences against ``full``/``fs`` and
their standard errors, overall and per set.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
from pathlib import Path

from core_rerank import scoring
from core_rerank.research.datasets import first_stage
from core_rerank.research.metrics import mean_se, paired, per_query_ndcg, ranking_to_run

from . import DATA, ROOT
from .doc_budget import cpu_features, cpu_name
from .protocol import DEPTH, parts

MODES = ("full", "block-end", "block-start")


def rerankers() -> dict:
    from core_rerank import Reranker

    full = Reranker()
    end = full.with_options(attention="block")
    start = end.__copy__()
    start.block_layout = dataclasses.replace(end.block_layout, align="start")
    return {"full": full, "block-end": end, "block-start": start}


def run(part: str, data: Path, per_set: int, out: Path) -> dict:
    models = rerankers()
    runs: dict = {}
    qrels, per_set_ids = {}, {}
    for ds, qids, _ in parts(part, per_set, data=data):
        cands, _ = first_stage(ds)
        name = f"{ds.name}/{ds.split}"
        per_set_ids[name] = []
        for q in qids:
            c = cands.get(q)
            pairs = [(d, s) for d, s in zip(c.doc_ids, c.scores) if d in ds.corpus][:DEPTH] if c else []
            if not pairs:
                continue
            key = f"{ds.name}/{q}"
            qrels[key], bm25_of = ds.qrels[q], dict(pairs)
            per_set_ids[name].append(key)
            shuffled = [d for d, _ in pairs]
            random.Random(key).shuffle(shuffled)
            for mode, rr in models.items():
                placements = {"fs": [d for d, _ in pairs], "shuf": shuffled} if mode == "full" else {"fs": shuffled}
                for place, ids in placements.items():
                    raw = rr.score(ds.queries[q], [ds.doc_text(d) for d in ids])
                    fused = scoring.fuse(raw, [bm25_of[d] for d in ids], rr.fusion_weight)
                    places = (place,) if mode == "full" else ("fs", "shuf")
                    for p in places:
                        runs.setdefault((mode, p, "alone"), {})[key] = ranking_to_run(ids, raw)
                        runs.setdefault((mode, p, "fused"), {})[key] = ranking_to_run(ids, fused)
            print(key, flush=True)
    ndcg = {k: per_query_ndcg(qrels, r) for k, r in runs.items()}
    stats = models["block-end"].loaded_model.kv_cache.stats()
    report: dict = {
        "study": "studies.block_modes",
        "part": part,
        "cpu": cpu_name(),
        "cpu_features": cpu_features(),
        "queries": len(qrels),
        "sets": {n: len(ids) for n, ids in per_set_ids.items()},
        "first_stage": f"BM25 top {DEPTH}",
        "kv_cache": stats.to_dict(),
        "rows": {},
    }
    for (mode, place, kind), by_q in sorted(ndcg.items()):
        base = ndcg[("full", "fs", kind)]
        row: dict = {"ndcg@10": mean_se(list(by_q.values())).round()}
        if (mode, place) != ("full", "fs"):
            d = paired(by_q, base)
            row["vs_full_fs"] = [round(d.mean, 4), None if d.se is None else round(d.se, 4)]
            row["vs_full_fs_by_set"] = {
                n: round(paired({q: by_q[q] for q in ids}, base).mean, 4) for n, ids in per_set_ids.items()
            }
        report["rows"][f"{mode}/{place}/{kind}"] = row
    out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", default="dev", choices=["dev", "test"])
    ap.add_argument("--data", type=Path, default=DATA, help="the labelled data sets (../shared/data)")
    ap.add_argument("--per-set", type=int, default=20, help="queries sampled per data set")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    out = args.out or ROOT / "benchmarks" / "results" / f"block_modes_{args.part}.json"
    report = run(args.part, args.data, args.per_set, out)
    print(json.dumps(report["rows"], indent=1))


if __name__ == "__main__":
    main()
