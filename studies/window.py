"""Issue 10, "shorter lists per prompt": does re-ranking 20 candidates as 2 or 4 shorter prompts (the engine's
round-robin windows, ``max_tokens``) rank better than one 20-document prompt? Dev only (the choice), default model,
BM25 top 20 passed best first, documents cut to 200 tokens.

    python -m studies.window [--per-set 10]    # writes benchmarks/results/window_study.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from core_rerank.research.metrics import mean_se, query_ndcg

from . import ROOT
from .protocol import DEPTH, MAX_DOC_TOKENS, parts

BUDGETS = {"1 prompt of 20": None, "2 prompts of ~10": 2300, "4 prompts of ~5": 1300}


def main() -> None:
    from core_rerank import Reranker
    from core_rerank.research.datasets import first_stage

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--per-set", type=int, default=10)
    args = ap.parse_args()
    rankers = {
        name: Reranker(max_doc_tokens=MAX_DOC_TOKENS, max_documents=None, **({"max_tokens": b} if b else {}))
        for name, b in BUDGETS.items()
    }
    rows: dict[str, dict] = {name: {} for name in ["first_stage", *BUDGETS]}
    seconds: dict[str, list[float]] = {name: [] for name in BUDGETS}
    windows: dict[str, list[int]] = {name: [] for name in BUDGETS}
    for ds, qids, _ in parts("dev", args.per_set):
        cands = first_stage(ds)[0]
        for qid in qids:
            c = cands.get(qid)
            ids = [d for d in (c.doc_ids if c else []) if d in ds.corpus][:DEPTH]
            qrels = ds.qrels.get(qid, {})
            if not ids or not any(g > 0 for g in qrels.values()):
                continue
            key = f"{ds.name}/{qid}"
            rows["first_stage"][key] = query_ndcg(ids, [float(len(ids) - i) for i in range(len(ids))], qrels)
            texts = [ds.doc_text(d) for d in ids]
            for name, rr in rankers.items():
                t0 = time.perf_counter()
                res = rr.rank(ds.queries[qid], texts)
                seconds[name].append(time.perf_counter() - t0)
                windows[name].append(res.num_windows)
                rows[name][key] = query_ndcg(ids, [res.by_index(i).score for i in range(len(ids))], qrels)
            print(key, {n: round(v[key], 3) for n, v in rows.items()}, flush=True)
    base = rows["first_stage"]
    report = {"queries": len(base), "part": "dev", "methods": {}}
    for name, got in rows.items():
        d = mean_se([got[k] - base[k] for k in got])
        report["methods"][name] = {
            "ndcg": round(statistics.fmean(got.values()), 4),
            "vs_first_stage": round(d.mean, 4),
            "se": None if d.se is None else round(d.se, 4),
            "seconds_per_query": round(statistics.fmean(seconds[name]), 3) if name in seconds else None,
            "windows": round(statistics.fmean(windows[name]), 2) if name in windows else None,
        }
    out = ROOT / "benchmarks" / "results" / "window_study.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
