"""Issue 20 study, analysis: both attention modes on test, and each mode's relevance map fitted on train.

    python -m studies.block_report [--work /work/block_study] [--out benchmarks/results/block_study.json]
    python -m studies.bundle relevance                  # the fitted maps into the bundled CoRe list

Reads what ``studies.block_collect`` stored (WORK/train.pkl, WORK/test.pkl) and computes, in seconds:

1. **Test tables** (``attention="full"`` and ``"block"``, the bundled CoRe and QR-16 lists, behind BM25 and behind
   the MiniLM bi-encoder, depth 20): nDCG@10 alone and fused with the first stage's own scores
   (``scoring.fuse`` at the list's fusion weight), shuffled input for the full prompt; paired differences against the
   full prompt passed best first and against the first stage, with standard errors.
2. **Relevance maps** per mode (:class:`core_rerank.heads.RelevanceMap`): the forms ``score`` (today's map: the raw
   score alone), ``list`` (+ log list size, score x log list size), ``length`` (+ log tokens) and ``context`` (all
   three), fitted on train (lists of 20, 10 and 5), each with its 5-fold cross-validated log loss on train (folds by
   query); the one shipped is the best of the forms that keep a list's order (``score``, ``list``): clients sort by
   relevance. Reported on test: ECE overall, per document-length bucket and per list size, for the chosen map and for
   the bundled map of today (score alone, fitted on the issue-10 train set in full mode).
"""

from __future__ import annotations

import argparse
import json
import math
import pickle
import random
import time
from pathlib import Path

from core_rerank import scoring
from core_rerank.research.calibration import (
    FORMS,
    ORDER_KEEPING,
    LabelledScores,
    fit_relevance_map,
    map_relevance,
    reliability,
)
from core_rerank.research.metrics import mean_se, paired, query_ndcg

from . import ROOT
from .doc_budget import cpu_name
from .protocol import DEPTH, MAX_DOC_TOKENS

MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
QUALITY_ID = "Qwen/Qwen2.5-Coder-1.5B-Instruct"  # the "quality" preset: WORK/test.quality.pkl when collected (--lite)
SETS = ("core", "qr")
LENGTH_BUCKETS = ((1, 49), (50, 149), (150, MAX_DOC_TOKENS))
STUDY_SETTINGS = {"max_doc_tokens": MAX_DOC_TOKENS, "order": "reverse"}


def _round(x: float | None, k: int = 4) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(x, k)


def _cell(values: dict, base: dict | None) -> dict:
    m = mean_se(list(values.values()))
    out = {"ndcg@10": _round(m.mean), "se": _round(m.se), "queries": m.n}
    if base is not None:
        d = paired(values, base)
        out["diff"] = [_round(d.mean), _round(d.se)]
    return out


def tables(test: dict, fusion_weight: float) -> dict:
    """nDCG@10 per (pool, method) with paired differences to the full prompt best first and to the first stage."""
    out: dict = {}
    pools = {p for rec in test.values() for (_, p, _, _) in rec["runs"]}
    for pool in [p for p in ("bm25", "dense") if p in pools]:
        per: dict[str, dict] = {}
        for key, rec in test.items():
            q = f"{key[0]}/{key[1]}"
            if ("full", pool, "fs", DEPTH) not in rec["runs"]:
                continue
            first = rec[pool]
            fs_ids = rec["runs"][("full", pool, "fs", DEPTH)]["doc_ids"]
            per.setdefault(pool, {})[q] = query_ndcg(fs_ids, [first[d] for d in fs_ids], rec["qrels"])
            for (mode, p, place, n), run in rec["runs"].items():
                if p != pool or n != DEPTH:
                    continue
                ids = run["doc_ids"]
                for name in SETS:
                    raw = run["scores"][name]
                    label = f"{mode}{'' if place == 'fs' else '@shuffled'} {name}"
                    per.setdefault(label, {})[q] = query_ndcg(ids, raw, rec["qrels"])
                    fused = scoring.fuse(raw, [first[d] for d in ids], fusion_weight)
                    per.setdefault(f"{label} + first stage", {})[q] = query_ndcg(ids, fused, rec["qrels"])
        rows = {}
        for label, values in per.items():
            mode_base = label.replace("block", "full").replace("@shuffled", "")
            row = _cell(values, per[pool])
            if label != pool:
                row["vs_full"] = _cell(values, per.get(mode_base))["diff"] if mode_base != label else None
            rows[label] = row
        by_set: dict = {}
        for label in ("full core", "block core", "full core + first stage", "block core + first stage"):
            for q, v in per[label].items():
                by_set.setdefault(q.rsplit("/", 1)[0], {}).setdefault(label, []).append(v)
        out[pool] = {
            "rows": rows,
            "by_set": {s: {k: round(sum(v) / len(v), 4) for k, v in d.items()} for s, d in sorted(by_set.items())},
        }
    return out


def labelled(store: dict, mode: str, head_set: str = "core") -> LabelledScores:
    """Every (score, tokens, list size, label) of ``mode``'s best-first runs (BM25 top 20/10/5, dense top 20)."""
    out = LabelledScores([], [], [], [], [])
    for key, rec in store.items():
        for (m, _pool, place, _n), run in rec["runs"].items():
            if m != mode or place != "fs":
                continue
            for d, s in zip(run["doc_ids"], run["scores"][head_set]):
                if math.isfinite(s):
                    out.scores.append(s)
                    out.tokens.append(rec["tokens"][d])
                    out.sizes.append(len(run["doc_ids"]))
                    out.labels.append(1 if rec["qrels"].get(d, 0) > 0 else 0)
                    out.queries.append(f"{key[0]}/{key[1]}")
    return out


def log_loss(p: list[float], y: list[int]) -> float:
    eps = 1e-9
    return -sum(math.log(max(pi, eps)) if yi else math.log(max(1 - pi, eps)) for pi, yi in zip(p, y)) / len(y)


def cross_validated(data: LabelledScores, form: str, folds: int = 5) -> float | None:
    """Mean held-out log loss of ``form`` over ``folds`` folds of the queries (None when a fold cannot be fitted)."""
    queries = sorted(set(data.queries))
    random.Random(0).shuffle(queries)
    fold_of = {q: i % folds for i, q in enumerate(queries)}
    losses, n = 0.0, 0
    for k in range(folds):
        held = [fold_of[q] == k for q in data.queries]
        try:
            fit = fit_relevance_map(data.subset([not h for h in held]), STUDY_SETTINGS, "cv", form)
        except ValueError:
            return None
        part = data.subset(held)
        losses += log_loss(map_relevance(fit, part), part.labels) * len(part)
        n += len(part)
    return losses / n


def calibration(data: LabelledScores, fit) -> dict:
    """ECE of ``fit`` on ``data``: overall, per document-length bucket, per list size."""
    p = map_relevance(fit, data)
    out = {"all": reliability(p, data.labels).to_dict()}
    for lo, hi in LENGTH_BUCKETS:
        keep = [lo <= t <= hi for t in data.tokens]
        if any(keep):
            part = data.subset(keep)
            r = reliability([x for x, k in zip(p, keep) if k], part.labels)
            out[f"tokens {lo}-{hi}"] = {"documents": r.documents, "relevant": r.relevant, "ece": round(r.ece, 4)}
    for n in sorted(set(data.sizes)):
        keep = [s == n for s in data.sizes]
        r = reliability([x for x, k in zip(p, keep) if k], data.subset(keep).labels)
        out[f"n={n}"] = {"documents": r.documents, "relevant": r.relevant, "ece": round(r.ece, 4)}
    for k in ("all",):
        out[k].pop("bins", None)
    return out


def relevance_maps(train: dict, test: dict, bundled_map) -> dict:
    out = {}
    for mode in ("full", "block"):
        tr, te = labelled(train, mode), labelled(test, mode)
        cv = {form: cross_validated(tr, form) for form in FORMS}
        # Only forms under which relevance keeps a list's order are shipped: clients (TEI's, LlamaIndex's) sort by it.
        form = min((f for f in ORDER_KEEPING if cv[f] is not None), key=lambda f: cv[f])
        sets = sorted({q.rsplit("/", 1)[0] for q in tr.queries})
        fitted_on = (
            f"train: {', '.join(sets)} ({len(set(tr.queries))} q); BM25 top 20, 10 and 5, best first; attention={mode}"
        )
        fit = fit_relevance_map(tr, STUDY_SETTINGS, fitted_on, form)
        out[mode] = {
            "cv_log_loss": {f: _round(v) for f, v in cv.items()},
            "form": form,
            "map": {k: v for k, v in fit.to_dict().items()},
            "train": {"documents": len(tr), "relevant": sum(tr.labels), "queries": len(set(tr.queries))},
            "test": calibration(te, fit),
            "test_bundled_map": calibration(te, bundled_map),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/work/block_study"))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "block_study.json")
    args = ap.parse_args()
    from core_rerank.heads import find_bundled_head_list

    core = find_bundled_head_list(MODEL_ID, "core")
    train = pickle.loads((args.work / "train.pkl").read_bytes())
    test = pickle.loads((args.work / "test.pkl").read_bytes())
    report = {
        "study": "studies.block_collect + studies.block_report",
        "made": time.strftime("%Y-%m-%d"),
        "cpu": cpu_name(),
        "model": MODEL_ID,
        "queries": {"train": len(train), "test": len(test)},
        "test_sets": sorted({r["set"] for r in test.values()}),
        "fusion_weight": core.fusion.weight,
        "tables": tables(test, core.fusion.weight),
        "relevance": relevance_maps(train, test, core.relevance_map),
    }
    quality = args.work / "test.quality.pkl"
    if quality.is_file():
        q_test = pickle.loads(quality.read_bytes())
        q_core = find_bundled_head_list(QUALITY_ID, "core")
        report["quality"] = {
            "model": QUALITY_ID,
            "queries": len(q_test),
            "fusion_weight": q_core.fusion.weight,
            "tables": tables(q_test, q_core.fusion.weight),
        }
    args.out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    for name, tabs in (("default", report["tables"]), ("quality", report.get("quality", {}).get("tables", {}))):
        for pool, t in tabs.items():
            print(name, pool)
            for label, row in t["rows"].items():
                print(f"  {label:40s} {row['ndcg@10']}  vs fs {row.get('diff')}  vs full {row.get('vs_full')}")
    for mode, r in report["relevance"].items():
        ece, old = r["test"]["all"]["ece"], r["test_bundled_map"]["all"]["ece"]
        print(mode, r["form"], r["cv_log_loss"], "ECE test", ece, "bundled map", old)


if __name__ == "__main__":
    main()
