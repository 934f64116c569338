"""Issue 10, "query-token weighting": does weighting the attention's tokens by how distinctive they are across the
candidates (core_rerank/research/token_weighting.py, after ReAttn) rank better than the engine's plain mean?

Default model, its bundled CoRe heads, the order study's protocol (scripts/order_study.py: same parts, pools,
placements, cut). One forward pass per (query, pool, placement) keeps every query-span row; every variant is
scored from it:

- ``plain``: the engine's score (mean over query rows); ``q-entropy`` / ``q-idf``: query tokens weighted;
  ``d-idf``: document tokens weighted by their cross-document IDF; ``q-entropy+d-idf``: both.
- each alone and fused with the first stage's scores (the default list's fusion weight).

    python scripts/token_weight_study.py --part dev            # the choice
    python scripts/token_weight_study.py --part test           # the table, for the variant dev chose
Writes benchmarks/results/token_weight_study.json (one entry per part).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
OUT = ROOT / "benchmarks" / "results" / "token_weight_study.json"
VARIANTS = ("plain", "q-entropy", "q-idf", "d-idf", "q-entropy+d-idf")
CELLS = (("bm25", "fs"), ("dense", "fs"), ("bm25", "shuf"))


def variant_scores(sig, spans, ids) -> dict[str, list[float]]:
    """Raw scores of every variant from one prompt's signals (summed over the heads, as the engine does)."""
    from core_rerank.research.token_weighting import document_token_idf, query_token_weights, weighted_query_signal
    from core_rerank.scoring import document_scores

    s = sig.signals
    null = s.null.double().sum(0)
    rows = s.query_rows.double()
    ent = weighted_query_signal(rows, query_token_weights(rows, spans, "entropy")).sum(0)
    idf = weighted_query_signal(rows, query_token_weights(rows, spans, "idf")).sum(0)
    plain = s.query.double().sum(0)
    d_idf = document_token_idf(ids, spans, plain.shape[0])
    return {
        "plain": document_scores(plain, null, spans),
        "q-entropy": document_scores(ent, null, spans),
        "q-idf": document_scores(idf, null, spans),
        "d-idf": document_scores(plain * d_idf, null * d_idf, spans),
        "q-entropy+d-idf": document_scores(ent * d_idf, null * d_idf, spans),
    }


def collect(part: str, per_set: int, threads: int) -> dict:
    import numpy as np
    import torch
    from order_study import MAX_DOC_TOKENS, candidates, parts, placement, pool_order
    from study_analysis import ndcg10

    from core_rerank.research.datasets import first_stage
    from core_rerank.research.evaluation import DenseScorer, evaluation_reranker
    from core_rerank.scoring import fuse

    torch.set_num_threads(threads)
    rr = evaluation_reranker("default", heads=None, order="given", max_doc_tokens=MAX_DOC_TOKENS)
    dense = DenseScorer()
    weight = rr.fusion_weight
    ndcg: dict[str, dict[str, dict[str, float]]] = {}
    seconds: dict[str, list[float]] = {"plain": [], "rows": []}
    jobs = [(ds, qid) for ds, qids, _ in parts(part, per_set) for qid in qids]
    firsts = {ds.name: first_stage(ds)[0] for ds, _ in jobs}
    t0 = time.perf_counter()
    for n, (ds, qid) in enumerate(jobs, 1):
        rec = candidates(ds, qid, firsts[ds.name], dense)
        if rec is None or not any(g > 0 for g in rec["qrels"].values()):
            continue
        for pool, place in CELLS:
            order = pool_order(pool, rec)
            docs = rr._prepare([ds.doc_text(d) for d in order])
            placed = placement(place, len(order), f"{ds.name}/{qid}/{pool}")
            texts = [docs[i].scored_text for i in placed]
            timed = len(seconds["plain"]) < 20  # the cost of keeping rows, paired, on the first passes
            if timed:
                t = time.perf_counter()
                rr.attention_signals(rec["query"], texts)
                seconds["plain"].append(time.perf_counter() - t)
            t = time.perf_counter()
            sig = rr.attention_signals(rec["query"], texts, query_rows=True)
            scored = variant_scores(sig, sig.doc_spans, sig.ids_query)
            if timed:
                seconds["rows"].append(time.perf_counter() - t)
            first = [rec[pool][d] for d in order]
            cell = ndcg.setdefault(f"{pool}@{place}", {})
            key = f"{ds.name}/{qid}"
            cell.setdefault("first stage order", {})[key] = ndcg10(
                np.arange(len(order), 0, -1, dtype=float), order, rec["qrels"]
            )
            for variant, raw in scored.items():
                back = np.empty(len(order))
                back[placed] = raw  # prompt position -> first-stage index
                cell.setdefault(variant, {})[key] = ndcg10(back, order, rec["qrels"])
                fused = np.asarray(fuse(list(back), first, weight))
                cell.setdefault(f"{variant} + first stage", {})[key] = ndcg10(fused, order, rec["qrels"])
        if n % 10 == 0:
            print(f"{part}: {n}/{len(jobs)} queries, {(time.perf_counter() - t0) / n:.1f} s/query", flush=True)
    return {"ndcg": ndcg, "seconds": seconds, "fusion_weight": weight, "queries": len(jobs)}


def summarize(raw: dict) -> dict:
    from study_analysis import mean_se

    out = {}
    for cell, methods in raw["ndcg"].items():
        base = methods["plain"]
        fs = methods["first stage order"]
        rows = {}
        for label, per_q in methods.items():
            qs = sorted(per_q)
            m, _ = mean_se([per_q[q] for q in qs])
            d_plain = mean_se([per_q[q] - base[q] for q in qs])
            d_fs = mean_se([per_q[q] - fs[q] for q in qs])
            rows[label] = {"ndcg": m, "vs_plain": d_plain, "vs_first_stage": d_fs, "queries": len(qs)}
        out[cell] = rows
    s = raw["seconds"]
    cost = {
        "plain_s": sum(s["plain"]) / max(1, len(s["plain"])),
        "rows_and_weights_s": sum(s["rows"]) / max(1, len(s["rows"])),
    }
    return {"cells": out, "cost_per_pass": cost, "fusion_weight": raw["fusion_weight"], "queries": raw["queries"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["dev", "test"], default="dev")
    ap.add_argument("--per-set", type=int, default=40, help="queries per data set (test: per test set)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    result = summarize(collect(args.part, args.per_set, args.threads))
    report = json.loads(OUT.read_text()) if OUT.is_file() else {}
    report[args.part] = result
    OUT.write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    for cell, rows in result["cells"].items():
        print(cell)
        for label, r in rows.items():
            print(
                f"  {label:32s} {r['ndcg']:.3f}  vs plain {r['vs_plain'][0]:+.3f} ± {r['vs_plain'][1]:.3f}"
                f"  vs first stage {r['vs_first_stage'][0]:+.3f} ± {r['vs_first_stage'][1]:.3f}"
            )
    print(result["cost_per_pass"])


if __name__ == "__main__":
    main()
