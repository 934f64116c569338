"""Heads for block attention: CoRe heads detected under ``attention="block"`` against the bundled list, on dev.

    python -m studies.block_heads [--samples-scifact 120] [--samples-wikiqa 80] [--per-set 20]
                                  [--work /tmp/block_heads] [--out benchmarks/results/block_heads_dev.json]

1. Detection (training data only: ``default_detection_samples``, SciFact train's detection part and WikiQA train) on
   the default model with every head, ``attention="block"``, documents cut to the shipped ``max_doc_tokens``: the
   per-head attention masses, saved to WORK/detection_block.npz (resumable).
2. Dev (``studies.protocol``: SciFact train's held-out part, NFCorpus dev; BM25 top 20): nDCG@10 of the bundled list
   (detected in full mode) and of block-detected CoRe lists (tau 0.1; k 8, 16, 32) and QR-16, all scored in block mode
   from the same passes (``evaluate_dataset`` over an all-heads block reranker), with BM25 and ICR as baselines.
The choice (which list block attention ships with) is made on these dev numbers only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from . import DATA, ROOT
from .doc_budget import cpu_name
from .protocol import DEPTH, MAX_DOC_TOKENS, parts


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def detect(work: Path, caps: dict[str, int]):
    from core_rerank import Reranker
    from core_rerank.research.detection import DetectionResult, collect_masses, default_detection_samples

    path = work / "detection_block.npz"
    if path.is_file():
        return DetectionResult.load(path)
    rr = Reranker(heads="all", max_doc_tokens=MAX_DOC_TOKENS, attention="block", kv_cache_mb=0)
    samples = default_detection_samples(DATA, caps)
    log(f"detect: {len(samples)} samples")
    res = collect_masses(rr, samples, MAX_DOC_TOKENS, lambda n, t: n % 20 == 0 and log(f"  {n}/{t}"))
    res.save(path)
    return res


def head_sets(det) -> dict[str, list]:
    from core_rerank.heads import find_bundled_head_list
    from core_rerank.research.detection import make_head_list

    bundled = find_bundled_head_list("HuggingFaceTB/SmolLM2-135M-Instruct", "core")
    sets = {"bundled_core16": [tuple(h) for h in bundled.heads]}
    for k in (8, 16, 32):
        sets[f"block_core_t0.1_k{k}"] = list(make_head_list(det, "core", k, 0.1).heads)
    sets["block_qr16"] = list(make_head_list(det, "qr", 16).heads)
    return sets


def dev(sets: dict, per_set: int) -> dict:
    from core_rerank.research.evaluation import evaluate_dataset, evaluation_reranker
    from core_rerank.settings import EngineSettings

    rr = evaluation_reranker(EngineSettings(max_doc_tokens=MAX_DOC_TOKENS, attention="block"))
    out = []
    for ds, qids, _ in parts("dev", per_set, data=DATA):
        res = evaluate_dataset(rr, ds, sets, depth=DEPTH, query_ids=qids)
        log(f"dev {ds.name}/{ds.split}: {res.queries} queries, {res.seconds:.0f} s")
        out.append(res.to_dict(per_query=True))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples-scifact", type=int, default=120)
    ap.add_argument("--samples-wikiqa", type=int, default=80)
    ap.add_argument("--per-set", type=int, default=20)
    ap.add_argument("--work", type=Path, default=Path("/tmp/block_heads"))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "block_heads_dev.json")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    det = detect(args.work, {"scifact": args.samples_scifact, "wikiqa_tok": args.samples_wikiqa})
    sets = head_sets(det)
    runs = dev(sets, args.per_set)
    methods = list(runs[0]["ndcg@10"])
    report = {
        "study": "studies.block_heads",
        "cpu": cpu_name(),
        "detection_samples": len(det.masses),
        "attention": "block",
        "head_sets": {k: [list(h) for h in v] for k, v in sets.items()},
        "mean_ndcg@10": {m: round(statistics.fmean(r["ndcg@10"][m] for r in runs), 4) for m in methods},
        "runs": runs,
    }
    args.out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(report["mean_ndcg@10"], indent=1))


if __name__ == "__main__":
    main()
