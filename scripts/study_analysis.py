"""Analysis stage of scripts/order_study.py: every method of issue 10 from the collected per-head signals.

Reads WORK/{train,dev,test}.pkl, fits on train, chooses on dev, reports on test, and writes
benchmarks/results/order_study.json (+ docs/calibration_reliability.png). Pure numpy: seconds.
"""

from __future__ import annotations

import json
import math
import pickle
import statistics
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from core_rerank.research.calibration import fit_logistic, reliability

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


# ----------------------------------------------------------------- metrics
def ndcg10(scores: np.ndarray, doc_ids: list[str], qrels: Mapping[str, int]) -> float:
    """nDCG@10 with trec_eval's linear gain over the judged documents (ideal from every judged document),
    ties broken by first-stage position; equals pytrec_eval ``ndcg_cut.10`` on strictly decreasing runs."""
    order = sorted(range(len(doc_ids)), key=lambda i: (-scores[i] if math.isfinite(scores[i]) else math.inf, i))
    gains = [max(0, int(qrels.get(doc_ids[i], 0))) for i in order[:10]]
    dcg = sum(g / math.log2(r + 2) for r, g in enumerate(gains))
    ideal = sorted((max(0, int(g)) for g in qrels.values()), reverse=True)[:10]
    idcg = sum(g / math.log2(r + 2) for r, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def z(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=float)
    finite = np.isfinite(x)
    if finite.sum() < 2:
        return np.where(finite, 0.0, -1e9)
    m, s = x[finite].mean(), x[finite].std()
    return np.where(finite, (x - m) / (s if s > 0 else 1.0), -1e9)


def mean_se(d: list[float]) -> tuple[float, float]:
    return statistics.fmean(d), (statistics.stdev(d) / len(d) ** 0.5 if len(d) > 1 else float("nan"))


# ------------------------------------------------------------------- data
class Q:
    """One query of one pool: labels and every stored signal, columns in first-stage order."""

    def __init__(self, ds: str, qid: str, rec: dict, pool: str) -> None:
        self.ds, self.qid, self.pool = ds, qid, pool
        self.qrels = rec["qrels"]
        p = rec["pools"][(pool, "fs")]
        self.doc_ids = p["doc_ids"]
        self.n = len(self.doc_ids)
        self.fs_rank = np.arange(self.n, 0, -1, dtype=float)
        self.bm25 = np.array([rec["bm25"].get(d, np.nan) for d in self.doc_ids], dtype=float)
        self.dense = np.array([rec["dense"][d] for d in self.doc_ids], dtype=float)
        self.fs_score = self.bm25 if pool == "bm25" else self.dense
        self.places = {place: v for (pl, place), v in rec["pools"].items() if pl == pool}
        self.labels = np.array([1 if self.qrels.get(d, 0) > 0 else 0 for d in self.doc_ids])

    def ndcg(self, scores) -> float:
        return ndcg10(np.asarray(scores, dtype=float), self.doc_ids, self.qrels)

    def sets(self, place: str, name: str) -> np.ndarray:
        return np.array(self.places[place]["sets"][name], dtype=float)


def load(work: Path, part: str) -> dict:
    store = {}
    for path in sorted(work.glob(f"{part}*.pkl")):
        store.update(pickle.loads(path.read_bytes()))
    return store


def queries(store: dict, pools=("bm25", "dense")) -> list[Q]:
    out = []
    for (ds, qid), rec in store.items():
        if not rec["pools"] or "sets" not in next(iter(rec["pools"].values())):
            continue
        for pool in pools:
            if (pool, "fs") in rec["pools"] and any(g > 0 for g in rec["qrels"].values()):
                out.append(Q(ds, qid, rec, pool))
    return out


# --------------------------------------------------------------- methods
Method = Callable[[Q], np.ndarray]


def position_bias(train: list[Q], name: str = "core") -> np.ndarray:
    """Mean within-list z-score of the attention score by distance from the query (0 = nearest), from
    SHUFFLED training placements (where position is independent of relevance), irrelevant documents only."""
    sums, counts = np.zeros(100), np.zeros(100)
    for q in train:
        if "shuf" not in q.places:
            continue
        s = z(q.sets("shuf", name))
        pos = np.array(q.places["shuf"]["pos"])
        dist = q.n - 1 - pos
        for d, v, y in zip(dist, s, q.labels):
            if not y and v > -1e8:
                sums[d] += v
                counts[d] += 1
    return np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)


def methods(bias: np.ndarray, core_weights: np.ndarray, core_idx: list[int]) -> dict[str, tuple[Method, int]]:
    """name -> (scores of a query, forward passes it costs)."""

    def att(place: str, name: str = "core") -> Method:
        return lambda q: q.sets(place, name)

    def debiased(place: str) -> Method:
        def f(q: Q) -> np.ndarray:
            dist = q.n - 1 - np.array(q.places[place]["pos"])
            return z(q.sets(place, "core")) - bias[dist]

        return f

    def head_z(place: str, weights: np.ndarray | None) -> Method:
        def f(q: Q) -> np.ndarray:
            cal = q.places[place]["cal"][core_idx]
            zs = np.stack([z(r) for r in cal])
            w = np.ones(len(core_idx)) if weights is None else weights
            return (w[:, None] * zs).sum(0) / w.sum()

        return f

    out: dict[str, tuple[Method, int]] = {
        "first_stage": (lambda q: q.fs_rank, 0),
        "core": (att("fs"), 1),
        "icr": (att("fs", "icr"), 1),
        "qr": (att("fs", "qr"), 1),
        "core@shuffled": (att("shuf"), 1),
        "icr@shuffled": (att("shuf", "icr"), 1),
        "qr@shuffled": (att("shuf", "qr"), 1),
        "core@reversed": (att("rev"), 1),
        "core debiased": (debiased("fs"), 1),
        "core@shuffled debiased": (debiased("shuf"), 1),
        "core mean of 2 placements": (lambda q: z(q.sets("fs", "core")) + z(q.sets("shuf", "core")), 2),
        "core per-head z": (head_z("fs", None), 1),
        "core per-head z, detection-weighted": (head_z("fs", core_weights), 1),
    }
    return out


def fused(base: Method, w: float, kind: str = "z") -> Method:
    """Attention fused with the first stage's own scores: z(attention) + w * z(first-stage score)."""

    def f(q: Q) -> np.ndarray:
        fs = q.fs_score if kind == "z" else q.fs_rank
        fs = np.where(np.isfinite(fs), fs, np.nanmin(fs) if np.isfinite(fs).any() else 0.0)
        return z(base(q)) + w * z(fs)

    return f


def evaluate(qs: list[Q], m: Method) -> dict[tuple[str, str, str], float]:
    out = {}
    for q in qs:
        try:
            out[(q.ds, q.qid, q.pool)] = q.ndcg(m(q))
        except KeyError:  # placement not collected for this part
            pass
    return out


# ------------------------------------------------------------ calibration
def features(q: Q, place: str = "fs") -> np.ndarray:
    """The document's own evidence: the engine's raw CoRe score (the attention mass the query moves onto
    the document beyond the content-free query's), times the list size (uniform share = 1/n)."""
    raw = q.sets(place, "core")
    return raw


def calibration_data(qs: list[Q], feature: Callable[[Q], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for q in qs:
        x = feature(q)
        keep = np.isfinite(x)
        xs.append(x[keep])
        ys.append(q.labels[keep])
    return np.concatenate(xs), np.concatenate(ys).astype(float)


# ------------------------------------------------------------------ main
def analyze(args) -> None:
    work = args.work
    train_store, dev_store, test_store = (load(work, p) for p in ("train", "dev", "test"))
    heads = pickle.loads((work / "heads.pkl").read_bytes())
    from core_rerank.heads import find_bundled_head_list

    core = find_bundled_head_list("HuggingFaceTB/SmolLM2-135M-Instruct", "core")
    row = {tuple(h): i for i, h in enumerate(heads)}
    core_idx = [row[tuple(h)] for h in core.heads]
    core_w = np.array(core.scores, dtype=float)
    train, dev, test = queries(train_store), queries(dev_store), queries(test_store)
    print(f"queries x pools: train {len(train)}, dev {len(dev)}, test {len(test)}")
    bias = position_bias(train)
    ms = methods(bias, core_w, core_idx)
    report: dict = {"bias_by_distance": [round(float(b), 4) for b in bias[:20]], "parts": {}}

    # Fusion weight chosen on dev, per first stage kind (z-scored scores; 0 = attention alone).
    grid = [0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0]
    chosen_w = {}
    for pool in ("bm25", "dense"):
        dq = [q for q in dev if q.pool == pool]
        best = max(grid, key=lambda w: statistics.fmean(evaluate(dq, fused(ms["core"][0], w)).values()))
        chosen_w[pool] = best
        report.setdefault("fusion_dev_grid", {})[pool] = {
            str(w): round(statistics.fmean(evaluate(dq, fused(ms["core"][0], w)).values()), 4) for w in grid
        }
    # One weight for every retriever (the engine cannot tell BM25 from dense scores): best mean over both pools.
    grid_dev = report["fusion_dev_grid"]
    one = max(grid, key=lambda w: statistics.fmean(grid_dev[p][str(w)] for p in grid_dev))
    chosen_w = {pool: one for pool in chosen_w}
    print("fusion weight chosen on dev:", one, grid_dev)

    def fuse_chosen(base: Method) -> Method:
        return lambda q: fused(base, chosen_w[q.pool])(q)

    ms["core + first-stage scores"] = (fuse_chosen(ms["core"][0]), 1)
    ms["core debiased + first-stage scores"] = (fuse_chosen(ms["core debiased"][0]), 1)
    ms["core@shuffled + first-stage scores"] = (fuse_chosen(ms["core@shuffled"][0]), 1)
    ms["first-stage scores + rrf core"] = (
        lambda q: _rrf(q.fs_rank) + _rrf(ms["core"][0](q)),
        1,
    )

    for part, qs in (("dev", dev), ("test", test)):
        res = {}
        for pool in ("bm25", "dense"):
            pq = [q for q in qs if q.pool == pool]
            base = evaluate(pq, ms["first_stage"][0])
            rows = {}
            for name, (m, passes) in ms.items():
                got = evaluate(pq, m)
                if not got:
                    continue
                common = [k for k in got if k in base]
                d = [got[k] - base[k] for k in common]
                mu, se = mean_se(d) if d else (float("nan"), float("nan"))
                by_ds = {}
                for (ds, _, _), v in got.items():
                    by_ds.setdefault(ds, []).append(v)
                rows[name] = {
                    "ndcg": round(statistics.fmean(got.values()), 4),
                    "vs_first_stage": round(mu, 4),
                    "se": round(se, 4),
                    "queries": len(got),
                    "passes": passes,
                    "by_dataset": {k: round(statistics.fmean(v), 4) for k, v in by_ds.items()},
                }
            res[pool] = rows
            print(f"\n== {part} / {pool} ({len(pq)} queries)")
            for name, r in sorted(rows.items(), key=lambda kv: -kv[1]["ndcg"]):
                print(f"  {name:42s} {r['ndcg']:.4f}  {r['vs_first_stage']:+.4f} ({r['se']:.4f})  n={r['queries']}")
        report["parts"][part] = res

    # Which evidence calibrates best across data sets? Fit each on train, compare ECE / log-loss on dev and test.
    def logratio(q: Q) -> np.ndarray:
        p = q.places["fs"]
        qm, nm = p["qm"][core_idx].sum(0), p["nm"][core_idx].sum(0)
        return np.log(np.maximum(qm, 1e-9) / np.maximum(nm, 1e-9))

    def per_token(q: Q) -> np.ndarray:
        return q.sets("fs", "core") / np.maximum(np.array(q.places["fs"]["tokens"], dtype=float), 1.0)

    candidates = {"raw score": features, "log(query mass / N/A mass)": logratio, "raw score per token": per_token}
    report["calibration_features"] = {}
    for fname, feat in candidates.items():
        xf, yf = calibration_data(train, feat)
        af, bf = fit_logistic(xf, yf)
        row = {}
        for part, qs in (("dev", dev), ("test", test)):
            x, y = calibration_data(qs, feat)
            if not len(x):
                continue
            p = np.clip(1 / (1 + np.exp(-np.clip(af * x + bf, -40, 40))), 1e-6, 1 - 1e-6)
            ll = float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())
            row[part] = {"ece": round(reliability(p.tolist(), y.astype(int).tolist()).ece, 4), "log_loss": round(ll, 4)}
        report["calibration_features"][fname] = row
        print("calibration feature", fname, row)

    # Calibration: fit on train (deployed placement, both pools), check on dev and test.
    xtr, ytr = calibration_data(train, features)
    a, b = fit_logistic(xtr, ytr)
    report["calibration"] = {"feature": "raw core score", "a": a, "b": b, "train_docs": len(xtr)}
    for part, qs in (("train", train), ("dev", dev), ("test", test)):
        x, y = calibration_data(qs, features)
        if not len(x):
            continue
        p = 1 / (1 + np.exp(-np.clip(a * x + b, -40, 40)))
        rel = reliability(p.tolist(), y.astype(int).tolist())
        report["calibration"][part] = rel.to_dict()
        print(f"calibration {part}: ECE {rel.ece:.4f}, P {rel.precision} R {rel.recall} over {len(x)} docs")
        # per data set: is the map comparable across sets (different list sizes and topics)?
        by = {}
        for q in qs:
            by.setdefault(q.ds, []).append(q)
        for ds, group in sorted(by.items()):
            xg, yg = calibration_data(group, features)
            pg = 1 / (1 + np.exp(-np.clip(a * xg + b, -40, 40)))
            report["calibration"].setdefault(f"{part}_by_dataset", {})[ds] = {
                "mean_relevance": round(float(pg.mean()), 4),
                "frac_relevant": round(float(yg.mean()), 4),
                "ece": round(reliability(pg.tolist(), yg.astype(int).tolist()).ece, 4),
            }
    counts = {}
    for part, store in (("train", train_store), ("dev", dev_store), ("test", test_store)):
        by = {}
        for ds, _ in store:
            by[ds] = by.get(ds, 0) + 1
        counts[part] = ", ".join(f"{ds} {n} q" for ds, n in sorted(by.items())) or "none"
    report["counts"] = counts
    out = RESULTS / "order_study.json"
    out.write_text(json.dumps(report, indent=1, default=float) + "\n")
    print("wrote", out)
    docs = ROOT / "docs"
    (docs / "retriever_study.md").write_text(render(report, counts))
    curves = {part: report["calibration"][part]["bins"] for part in ("dev", "test") if part in report["calibration"]}
    if curves:
        from core_rerank.research.plots import plot_reliability

        plot_reliability(curves, docs / "calibration_reliability.png", "SmolLM2-135M CoRe: calibrated relevance")
    print("wrote", docs / "retriever_study.md")
    if getattr(args, "write_calibration", False):
        write_calibration(report, counts)


def write_calibration(report: dict, counts: dict) -> None:
    """Store the train-fitted relevance map and the dev-chosen fusion weight in the bundled default list."""
    from dataclasses import replace

    from core_rerank.heads import find_bundled_head_list

    core = find_bundled_head_list("HuggingFaceTB/SmolLM2-135M-Instruct", "core")
    cal = report["calibration"]
    grid = report["fusion_dev_grid"]
    weights = list(next(iter(grid.values())))
    weight = max(weights, key=lambda w: sum(grid[p][w] for p in grid) / len(grid))
    calibration = {
        "relevance": {
            "a": round(cal["a"], 6),
            "b": round(cal["b"], 6),
            "fitted_on": f"train: {counts['train']}; BM25 and dense top 20, first-stage order in; max_doc_tokens 200",
            "documents": cal["train"]["documents"],
            "relevant": cal["train"]["relevant"],
            "ece_dev": cal.get("dev", {}).get("ece"),
            "ece_test": cal.get("test", {}).get("ece"),
            "note": "calibrated for lists with few relevant documents (SciFact / WikiQA-like); under-confident "
            "where many candidates are relevant (docs/retriever_study.md)",
        },
        "fusion": {"weight": float(weight), "chosen_on": f"dev: {counts['dev']} (mean over BM25 and dense)"},
    }
    path = ROOT / "core_rerank" / "head_lists" / "HuggingFaceTB__SmolLM2-135M-Instruct.core.json"
    replace(core, calibration=calibration).save(path)
    print("wrote", path, calibration)


def _rrf(scores: np.ndarray) -> np.ndarray:
    return np.array([1 / (60 + r) for r in _ranks(scores)])


def _ranks(scores: np.ndarray) -> list[int]:
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    r = [0] * len(scores)
    for k, i in enumerate(order, start=1):
        r[i] = k
    return r


# ------------------------------------------------------------------ report
KEY_METHODS = [
    "first_stage",
    "core",
    "core + first-stage scores",
    "core@shuffled",
    "icr",
    "qr",
    "icr@shuffled",
    "qr@shuffled",
]


def _core_vs(t: dict) -> str:
    cases = [("bm25", ""), ("dense", ""), ("bm25", "@shuffled")]
    lost = [
        f"{other} {'shuffled' if suffix else 'behind ' + pool}"
        for pool, suffix in cases
        for other in ("icr", "qr")
        if t[pool][f"core{suffix}"]["ndcg"] < t[pool][f"{other}{suffix}"]["ndcg"]
    ]
    return "yes" if not lost else "no: " + ", ".join(lost) + " ahead"


def _shuffled_ok(t: dict) -> bool:
    return t["bm25"]["core@shuffled"]["ndcg"] >= t["bm25"]["first_stage"]["ndcg"]


def _beats(r: dict) -> bool:
    return r["vs_first_stage"] > 2 * r["se"]


def _cell(r: dict | None) -> str:
    if r is None:
        return "-"
    se = r["se"]
    return f"{r['ndcg']:.3f} ({r['vs_first_stage']:+.3f} ± {se:.3f})" if se == se else f"{r['ndcg']:.3f}"


def render(report: dict, counts: dict) -> str:
    """docs/retriever_study.md from the study's JSON (a pure function of it)."""
    lines = [
        "# Behind the retriever: what the attention adds, and what makes it robust",
        "",
        "Generated by `python scripts/order_study.py analyze` from `benchmarks/results/order_study.json`",
        "(the forward passes: `python scripts/order_study.py collect --part train|dev|test`).",
        "",
        "## Protocol",
        "- Model and heads: the default (SmolLM2-135M-Instruct, its bundled 16 CoRe heads), with ICR (all heads)",
        "  and the bundled QR-16 list scored from the same forward passes; documents cut to 200 tokens; depth 20.",
        "- First stages: `bm25` = the split's BM25 run (WikiQA / HotpotQA: their pools ordered by bm25s) top 20;",
        "  `dense` = the same top-100 pool re-ordered by all-MiniLM-L6-v2 (the retriever the examples use), top 20.",
        "- Input order: `first-stage` = passed best first as a pipeline does (the engine's default placement puts",
        "  the best nearest the query); `shuffled` (`@shuffled`) = a seeded shuffle: what the attention reads with",
        "  no first-stage order to lean on.",
        "- `core + first-stage scores` = `rank(first_stage_scores=...)`: z(attention) + w * z(retriever's own",
        "  score: BM25 score or cosine); w chosen on dev.",
        f"- Data: train (fits: calibration, position bias) = {counts['train']}; dev (every choice) = {counts['dev']};",
        f"  test (these tables only) = {counts['test']}. Each cell: nDCG@10 (paired difference to the first-stage",
        "  order ± its standard error). Samples are small (forward passes cost ~5-60 s each on the 2 shared CPU",
        "  cores of this study): read the standard errors.",
        "",
    ]
    for part in ("test", "dev"):
        res = report["parts"].get(part)
        if not res:
            continue
        lines += [f"## {part.capitalize()}: mean nDCG@10 (difference to the first-stage order ± s.e.)", ""]
        lines += ["| method | forward passes | behind BM25 | behind dense |", "|---|---:|---:|---:|"]
        names = [m for m in KEY_METHODS if m in res["bm25"]]
        names += [m for m in res["bm25"] if m not in names]
        for m in names:
            passes = res["bm25"][m]["passes"]
            lines.append(f"| {m} | {passes} | {_cell(res['bm25'].get(m))} | {_cell(res['dense'].get(m))} |")
        lines.append("")
        if part == "test":
            sets = sorted(res["bm25"]["first_stage"]["by_dataset"])
            lines += ["### Test, per data set (nDCG@10)", ""]
            head = "| pool | method | " + " | ".join(sets) + " |"
            lines += [head, "|---|---|" + "---:|" * len(sets)]
            for pool in ("bm25", "dense"):
                for m in ("first_stage", "core", "core + first-stage scores", "core@shuffled"):
                    r = res[pool].get(m)
                    if r is None:
                        continue
                    cells = " | ".join(f"{r['by_dataset'].get(s, float('nan')):.3f}" for s in sets)
                    lines.append(f"| {pool} | {m} | {cells} |")
            lines.append("")
    t = report["parts"].get("test")
    if t:

        def diff(pool: str, m: str) -> str:
            r = t[pool][m]
            return f"{r['vs_first_stage']:+.3f} (s.e. {r['se']:.3f})"

        fused, core = "core + first-stage scores", "core"
        below = [
            ds for ds, v in t["bm25"][fused]["by_dataset"].items() if v < t["bm25"]["first_stage"]["by_dataset"][ds]
        ]
        lines += [
            "## The issue's targets (test, default model and configuration)",
            "",
            "| target | measured | met? |",
            "|---|---|---|",
            f"| behind dense: re-ranked > dense order by > 2 s.e. | attention alone {diff('dense', core)}; fused "
            f"{diff('dense', fused)} | {'yes' if _beats(t['dense'][fused]) else 'no'} |",
            f"| behind BM25: >= +0.03 over the BM25 order | attention alone {diff('bm25', core)}; fused "
            f"{diff('bm25', fused)} | {'yes' if t['bm25'][fused]['vs_first_stage'] >= 0.03 else 'no'} |",
            f"| behind BM25: no set below BM25 by more than its s.e. | fused below BM25 on {len(below)} of "
            f"{len(t['bm25'][fused]['by_dataset'])} sets ({', '.join(below) or 'none'}); per-set samples too small "
            "for a per-set s.e. | not shown |",
            f"| shuffled input >= the BM25 order | {t['bm25']['core@shuffled']['ndcg']:.3f} vs "
            f"{t['bm25']['first_stage']['ndcg']:.3f} | "
            f"{'yes' if _shuffled_ok(t) else 'no'} |",
            f"| CoRe >= ICR and QR (same settings) | BM25 order in: {t['bm25']['core']['ndcg']:.3f} / "
            f"{t['bm25']['icr']['ndcg']:.3f} / {t['bm25']['qr']['ndcg']:.3f}; dense in: "
            f"{t['dense']['core']['ndcg']:.3f} / {t['dense']['icr']['ndcg']:.3f} / "
            f"{t['dense']['qr']['ndcg']:.3f}; shuffled: "
            f"{t['bm25']['core@shuffled']['ndcg']:.3f} / {t['bm25']['icr@shuffled']['ndcg']:.3f} / "
            f"{t['bm25']['qr@shuffled']['ndcg']:.3f} | {_core_vs(t)} |",
            "",
        ]
    cal = report.get("calibration", {})
    if cal:
        lines += [
            "## Calibrated relevance",
            "",
            f"`relevance = 1 / (1 + exp(-(a * score + b)))`, a = {cal['a']:.4g}, b = {cal['b']:.4g}, fitted on",
            f"{cal['train_docs']} training documents (the engine's raw `score`, first-stage order in).",
            "",
            "| part | documents | relevant | ECE | precision of relevance >= 0.5 | recall |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for part in ("train", "dev", "test"):
            c = cal.get(part)
            if c:
                p = "-" if c["precision@0.5"] is None else f"{c['precision@0.5']:.3f}"
                r = "-" if c["recall@0.5"] is None else f"{c['recall@0.5']:.3f}"
                lines.append(f"| {part} | {c['documents']} | {c['relevant']} | {c['ece']:.3f} | {p} | {r} |")
        lines += ["", "![reliability](calibration_reliability.png)", ""]
        by = cal.get("test_by_dataset", {})
        if by:
            lines += ["Per test set: mean predicted relevance vs fraction judged relevant (BM25 and dense top 20):", ""]
            lines += ["| data set | mean relevance | fraction relevant | ECE |", "|---|---:|---:|---:|"]
            for ds, v in by.items():
                lines.append(f"| {ds} | {v['mean_relevance']:.3f} | {v['frac_relevant']:.3f} | {v['ece']:.3f} |")
            lines.append("")
        feats = report.get("calibration_features", {})
        if feats:
            lines += ["Evidence compared (each fitted on train): ECE / log-loss", ""]
            lines += ["| evidence | dev ECE | dev log-loss | test ECE | test log-loss |", "|---|---:|---:|---:|---:|"]
            for name, row in feats.items():
                d, t = row.get("dev", {}), row.get("test", {})
                lines.append(
                    f"| {name} | {d.get('ece', float('nan')):.3f} | {d.get('log_loss', float('nan')):.3f} | "
                    f"{t.get('ece', float('nan')):.3f} | {t.get('log_loss', float('nan')):.3f} |"
                )
            lines.append("")
    grid = report.get("fusion_dev_grid", {})
    if grid:
        lines += ["## Fusion weight (dev, nDCG@10 of z(attention) + w * z(first-stage score))", ""]
        ws = list(next(iter(grid.values())))
        lines += ["| pool | " + " | ".join(f"w={w}" for w in ws) + " |", "|---|" + "---:|" * len(ws)]
        for pool, row in grid.items():
            lines.append(f"| {pool} | " + " | ".join(f"{row[w]:.3f}" for w in ws) + " |")
        lines.append("")
    bias = report.get("bias_by_distance")
    if bias:
        lines += [
            "## Position bias (train, shuffled input)",
            "",
            "Mean within-list z-score of the CoRe score of NON-relevant documents by distance from the query",
            "(0 = nearest): " + ", ".join(f"{b:+.2f}" for b in bias) + ".",
            "",
        ]
    return "\n".join(lines) + "\n"
