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
from core_rerank.scoring import relevance

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
FUSION_GRID = [0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0]  # fusion weights tried on dev (0 = attention alone)


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


HEAD_COUNTS = (4, 8, 16, 32, 64)  # how many label-chosen heads to try on dev


def heads_chosen_on_shuffled(train: list[Q], dev: list[Q]) -> tuple[list[int], dict]:
    """Heads chosen with the labels for reading relevance where placement says nothing: every head ranked by
    the mean nDCG@10 of its own score over the SHUFFLED training placements, the count chosen on dev (mean
    over BM25 order in, shuffled, dense order in). Answers: is the 135M's shortfall on shuffled input a
    matter of which heads are read, or of what the model can read at all?"""
    per_head = [
        [q.ndcg(row) for row in q.places["shuf"]["cal"]] for q in train if q.pool == "bm25" and "shuf" in q.places
    ]
    order = list(np.argsort(-np.mean(per_head, axis=0), kind="stable"))
    cases = [("bm25", "fs"), ("bm25", "shuf"), ("dense", "fs")]

    def dev_mean(k: int) -> float:
        return statistics.fmean(
            statistics.fmean(evaluate([q for q in dev if q.pool == pool], summed_heads(place, order[:k])).values())
            for pool, place in cases
        )

    grid = {k: round(dev_mean(k), 4) for k in HEAD_COUNTS}
    best = max(HEAD_COUNTS, key=lambda k: grid[k])
    return [int(i) for i in order[:best]], {"dev_grid": {str(k): v for k, v in grid.items()}, "k": best}


def summed_heads(place: str, idx: list[int]) -> Method:
    """The sum of the heads' own calibrated, masked scores (the engine masks once over the summed signal)."""
    return lambda q: q.places[place]["cal"][idx].sum(0)


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


def calibrated(x: np.ndarray, a: float, b: float) -> np.ndarray:
    """The engine's relevance map (``core_rerank.scoring.relevance``) over an array of raw scores."""
    return np.array([relevance(float(v), a, b) for v in x])


def part_reliability(qs: list[Q], a: float, b: float):
    """Reliability of the map (a, b) over the documents of ``qs`` (None when they hold no finite score)."""
    if not qs:
        return None
    x, y = calibration_data(qs, features)
    return reliability(calibrated(x, a, b).tolist(), y.astype(int).tolist()) if len(x) else None


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
    chosen, report["shuffle_heads"] = heads_chosen_on_shuffled(train, dev)
    report["shuffle_heads"]["heads"] = [list(heads[i]) for i in chosen]
    print("heads chosen on shuffled train, count chosen on dev:", report["shuffle_heads"])
    ms["heads chosen on shuffled train"] = (summed_heads("fs", chosen), 1)
    ms["heads chosen on shuffled train@shuffled"] = (summed_heads("shuf", chosen), 1)

    # Fusion weight chosen on dev, per first stage kind (z-scored scores; 0 = attention alone).
    grid = FUSION_GRID
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
            rows, per_query = {}, {}
            for name, (m, passes) in ms.items():
                got = per_query[name] = evaluate(pq, m)
                if not got:
                    continue
                common = [k for k in got if k in base]
                d = [got[k] - base[k] for k in common]
                mu, se = mean_se(d) if d else (float("nan"), float("nan"))
                by_ds, diff_ds = {}, {}
                for key, v in got.items():
                    by_ds.setdefault(key[0], []).append(v)
                    if key in base:
                        diff_ds.setdefault(key[0], []).append(v - base[key])
                rows[name] = {
                    "ndcg": round(statistics.fmean(got.values()), 4),
                    "vs_first_stage": round(mu, 4),
                    "se": round(se, 4),
                    "queries": len(got),
                    "passes": passes,
                    "by_dataset": {k: round(statistics.fmean(v), 4) for k, v in by_ds.items()},
                    "by_dataset_vs_first_stage": {k: _mean_se_round(v) for k, v in sorted(diff_ds.items())},
                }
            # CoRe against ICR and QR on the same queries and passes: paired, so a tie reads as a tie.
            for suffix in ("", "@shuffled"):
                core_got = per_query[f"core{suffix}"]
                for other in ("icr", "qr"):
                    other_got = per_query[f"{other}{suffix}"]
                    d = [core_got[k] - other_got[k] for k in core_got if k in other_got]
                    if len(d) > 1 and f"core{suffix}" in rows:
                        rows[f"core{suffix}"].setdefault("vs_heads", {})[other] = _mean_se_round(d)[:2]
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
            p = np.clip(calibrated(x, af, bf), 1e-6, 1 - 1e-6)
            ll = float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())
            row[part] = {"ece": round(reliability(p.tolist(), y.astype(int).tolist()).ece, 4), "log_loss": round(ll, 4)}
        report["calibration_features"][fname] = row
        print("calibration feature", fname, row)

    # Calibration: fit on train (deployed placement, both pools), check on dev and test.
    xtr, ytr = calibration_data(train, features)
    a, b = fit_logistic(xtr, ytr)
    report["calibration"] = {"feature": "raw core score", "a": a, "b": b, "train_docs": len(xtr)}
    for part, qs in (("train", train), ("dev", dev), ("test", test)):
        rel = part_reliability(qs, a, b)
        if rel is None:
            continue
        report["calibration"][part] = rel.to_dict()
        print(f"calibration {part}: ECE {rel.ece:.4f}, P {rel.precision} R {rel.recall} over {rel.documents} docs")
        # per data set: is the map comparable across sets (different list sizes and topics)?
        by = {}
        for q in qs:
            by.setdefault(q.ds, []).append(q)
        for ds, group in sorted(by.items()):
            xg, yg = calibration_data(group, features)
            pg = calibrated(xg, a, b)
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
    report["models"] = compare_models(work, test, ms, one)
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


# Other packaged models, collected with `collect --model NAME` into WORK/<name>/ (their CoRe heads only).
MIN_PER_SET = 5  # queries per test set before "below BM25 on a set by more than its s.e." is judged
MIN_DEV = 20  # (query, first stage) pairs on dev before a model gets its own fusion weight
MODEL_METHODS = ("first_stage", "core", "core + first-stage scores", "core@shuffled")
TIMING_FILES = {"qwen2.5-coder-1.5b-instruct": "qwen15", "qwen2.5-coder-0.5b-instruct": "qwen", "gemma-3-270m": "gemma"}


def compare_models(work: Path, default_test: list[Q], default_ms: dict, default_w: float) -> dict:
    """Per other model: the key methods on its test queries (fusion weight chosen on ITS dev queries when
    enough were collected, else the default's ``default_w``), each paired with the first-stage order and with the
    default model's same method (``default_ms``, its fused entry at ``default_w``) on the same queries."""
    out = {}
    default_by = {name: evaluate(default_test, default_ms[name][0]) for name in MODEL_METHODS}
    grid = FUSION_GRID
    for sub in sorted(p for p in work.iterdir() if p.is_dir() and any(p.glob("test*.pkl"))):
        test, dev, train = (queries(load(sub, part)) for part in ("test", "dev", "train"))
        att = lambda q: q.sets("fs", "core")
        w, dev_grid = default_w, None
        if len(dev) >= MIN_DEV:  # else the default model's weight: a weight chosen on a handful is noise
            dev_grid = {str(x): round(statistics.fmean(evaluate(dev, fused(att, x)).values()), 4) for x in grid}
            w = float(max(grid, key=lambda x: dev_grid[str(x)]))
        ms = {
            "first_stage": lambda q: q.fs_rank,
            "core": att,
            "core + first-stage scores": fused(att, w),
            "core@shuffled": lambda q: q.sets("shuf", "core"),
        }
        rows: dict = {}
        for pool in ("bm25", "dense"):
            pq = [q for q in test if q.pool == pool]
            base = evaluate(pq, ms["first_stage"])
            for name, m in ms.items():
                got = evaluate(pq, m)
                if not got:
                    continue
                d = [got[k] - base[k] for k in got if k in base]
                mu, se = mean_se(d)
                common = [k for k in got if k in default_by[name]]
                dd = [got[k] - default_by[name][k] for k in common]
                mu_d, se_d = mean_se(dd) if len(dd) > 1 else (float("nan"), float("nan"))
                by_ds: dict = {}
                diff_ds: dict = {}
                for key, v in got.items():
                    by_ds.setdefault(key[0], []).append(v)
                    diff_ds.setdefault(key[0], []).append(v - base[key])
                rows.setdefault(pool, {})[name] = {
                    "ndcg": round(statistics.fmean(got.values()), 4),
                    "vs_first_stage": round(mu, 4),
                    "se": round(se, 4),
                    "queries": len(got),
                    "vs_default": round(mu_d, 4),
                    "vs_default_se": round(se_d, 4),
                    "common_queries": len(common),
                    "by_dataset": {k: round(statistics.fmean(v), 4) for k, v in sorted(by_ds.items())},
                    "by_dataset_vs_first_stage": {k: _mean_se_round(v) for k, v in sorted(diff_ds.items())},
                }
        timing = _read_json(RESULTS / f"quality_test_{TIMING_FILES.get(sub.name, sub.name)}.json")
        calibration, bundled = None, _bundled_relevance(sub.name)
        if train:
            x, y = calibration_data(train, features)
            a, b = fit_logistic(x, y)
            calibration = {"a": a, "b": b, "train_docs": len(x), "train_queries": len(train)}
        elif bundled is not None:  # fitted by `core-rerank calibrate` (one pass per training query)
            a, b = bundled["a"], bundled["b"]
            calibration = {"a": a, "b": b, "fitted_on": bundled.get("fitted_on"), "source": "bundled head list"}
        for part, qs in (("train", train), ("dev", dev), ("test", test)) if calibration else ():
            if (rel := part_reliability(qs, a, b)) is not None:
                calibration[part] = rel.to_dict()
        out[sub.name] = {
            "fusion_weight": w,
            "fusion_dev_grid": dev_grid,
            "calibration": calibration,
            "counts": {part: _count(qs) for part, qs in (("train", train), ("dev", dev), ("test", test))},
            "dev_queries": len(dev),
            "seconds_per_query": (timing or {}).get("timing", {}).get("core", {}).get("seconds_per_query"),
            "pools": rows,
        }
        print(f"\n== model {sub.name} (fusion weight {w}, dev grid {dev_grid})")
        for pool, r in rows.items():
            for name, v in r.items():
                print(
                    f"  {pool:5s} {name:28s} {v['ndcg']:.4f} {v['vs_first_stage']:+.4f} ({v['se']:.4f}) "
                    f"vs default {v['vs_default']:+.4f} ({v['vs_default_se']:.4f}) n={v['queries']}"
                )
    return out


def _bundled_relevance(name: str) -> dict | None:
    from core_rerank.heads import find_bundled_head_list
    from core_rerank.packaged import find_packaged

    packaged = find_packaged(name)
    core = find_bundled_head_list(packaged.model_id if packaged else name, "core")
    return (core.calibration or {}).get("relevance") if core is not None else None


def _count(qs: list[Q]) -> str:
    by: dict = {}
    for q in qs:
        by.setdefault(q.ds, set()).add(q.qid)
    return ", ".join(f"{ds} {len(v)} q" for ds, v in sorted(by.items())) or "none"


def _mean_se_round(v: list[float]) -> list:
    """[mean, standard error (None for one value), count]."""
    mu, se = mean_se(v)
    return [round(mu, 4), round(se, 4) if se == se else None, len(v)]


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def write_calibration(report: dict, counts: dict) -> None:
    """Store the train-fitted relevance map and the dev-chosen fusion weight in the bundled CoRe list of the
    default model and of every other collected model that has training data."""
    cal = report["calibration"]
    grid = report["fusion_dev_grid"]
    weights = list(next(iter(grid.values())))
    weight = max(weights, key=lambda w: sum(grid[p][w] for p in grid) / len(grid))
    _store_calibration("HuggingFaceTB/SmolLM2-135M-Instruct", cal, float(weight), counts["train"], counts["dev"])
    for name, m in report.get("models", {}).items():
        from core_rerank.sources import resolve_source

        model_id = resolve_source(name).model_id
        counts_m = m["counts"]
        if m.get("calibration") and m["calibration"].get("source") != "bundled head list":
            _store_calibration(model_id, m["calibration"], m["fusion_weight"], counts_m["train"], counts_m["dev"])
        elif m.get("fusion_dev_grid"):  # the relevance map came from `core-rerank calibrate`: keep it
            _store_fusion(model_id, m["fusion_weight"], counts_m["dev"])


def _store_fusion(model_id: str, weight: float, dev: str) -> None:
    from dataclasses import replace

    from core_rerank.heads import find_bundled_head_list

    core = find_bundled_head_list(model_id, "core")
    fusion = {"weight": weight, "chosen_on": f"dev: {dev} (mean over BM25 and dense)"}
    calibration = {**(core.calibration or {}), "fusion": fusion}
    path = ROOT / "core_rerank" / "head_lists" / (model_id.replace("/", "__") + ".core.json")
    replace(core, calibration=calibration).save(path)
    print("wrote", path, calibration)


def _store_calibration(model_id: str, cal: dict, weight: float, train: str, dev: str) -> None:
    from dataclasses import replace

    from core_rerank.heads import find_bundled_head_list

    core = find_bundled_head_list(model_id, "core")
    calibration = {
        "relevance": {
            "a": round(cal["a"], 6),
            "b": round(cal["b"], 6),
            "fitted_on": f"train: {train}; BM25 and dense top 20, first-stage order in; max_doc_tokens 200",
            "documents": cal["train"]["documents"],
            "relevant": cal["train"]["relevant"],
            "ece_dev": cal.get("dev", {}).get("ece"),
            "ece_test": cal.get("test", {}).get("ece"),
            "note": "calibrated for lists with few relevant documents (SciFact / WikiQA-like); under-confident "
            "where many candidates are relevant (docs/retriever_study.md)",
        },
        "fusion": {"weight": weight, "chosen_on": f"dev: {dev} (mean over BM25 and dense)"},
    }
    path = ROOT / "core_rerank" / "head_lists" / (model_id.replace("/", "__") + ".core.json")
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
    """CoRe >= ICR and QR? Where not, by how much against the paired standard error."""
    cases = [("bm25", ""), ("dense", ""), ("bm25", "@shuffled")]
    lost = []
    for pool, suffix in cases:
        row = t[pool][f"core{suffix}"]
        for other in ("icr", "qr"):
            if row["ndcg"] >= t[pool][f"{other}{suffix}"]["ndcg"]:
                continue
            where = f"{other} ahead {'on shuffled input' if suffix else 'behind ' + pool}"
            paired = row.get("vs_heads", {}).get(other)
            if paired:
                mu, se = paired
                where += f" by {-mu:.3f} (paired s.e. {se:.3f}{': within it' if -mu <= se else ''})"
            lost.append(where)
    return "yes" if not lost else "no: " + ", ".join(lost)


def _shuffled_ok(t: dict) -> bool:
    return t["bm25"]["core@shuffled"]["ndcg"] >= t["bm25"]["first_stage"]["ndcg"]


def _beats(r: dict) -> bool:
    return r["vs_first_stage"] > 2 * r["se"]


CONFIGS = {"alone": "core", "fused": "core + first-stage scores"}  # rank() without / with first-stage scores


def target_verdicts(t: dict) -> dict[str, dict[str, bool | None]]:
    """The issue's first four targets for one model's test rows (pool -> method -> row), judged for each
    configuration a user can run: target -> {"alone" | "fused": met (None: too few queries to tell)}.
    Shuffled input has no first-stage scores to fuse, so both configurations read the attention's own."""
    out: dict[str, dict[str, bool | None]] = {"dense": {}, "bm25": {}, "sets": {}, "shuf": {}}
    for config, m in CONFIGS.items():
        sets = t["bm25"][m].get("by_dataset_vs_first_stage", {})
        out["dense"][config] = _beats(t["dense"][m])
        out["bm25"][config] = t["bm25"][m]["vs_first_stage"] >= 0.03
        out["sets"][config] = None if _fewest(sets) < MIN_PER_SET else not _below(sets)
        out["shuf"][config] = _shuffled_ok(t)
    return out


def _below(sets: dict) -> list[str]:
    return [ds for ds, (mu, se, _) in sets.items() if se is not None and mu < -se]


def _fewest(sets: dict) -> int:
    return min((n for _, _, n in sets.values()), default=0)


def target_cells(t: dict) -> list[tuple[str, str]]:
    """The issue's first four targets for one model's test rows: (target, cell), each configuration judged."""
    ok = target_verdicts(t)

    def yes(v: bool | None, fewest: int = 0) -> str:
        return {True: "**met**", False: "not met", None: f"too few queries per set to tell (fewest {fewest})"}[v]

    def both(target: str, pool: str) -> str:
        return "; ".join(f"{c} {_diff(t[pool][m])}: {yes(ok[target][c])}" for c, m in CONFIGS.items())

    def per_set(config: str) -> str:
        sets = t["bm25"][CONFIGS[config]].get("by_dataset_vs_first_stage", {})
        below = _below(sets)
        worst = min(sets.items(), key=lambda kv: kv[1][0]) if sets else ("-", (float("nan"), None, 0))
        return (
            f"{config} below on {len(below)} of {len(sets)} sets ({', '.join(below) or 'none'}, lowest "
            f"{worst[0]} {worst[1][0]:+.3f} ± {worst[1][1] or 0:.3f}): {yes(ok['sets'][config], _fewest(sets))}"
        )

    return [
        ("behind dense: re-ranked > dense order by > 2 s.e.", both("dense", "dense")),
        ("behind BM25: >= +0.03 over the BM25 order", both("bm25", "bm25")),
        ("behind BM25: no set below BM25 by more than its s.e.", "; ".join(per_set(c) for c in CONFIGS)),
        (
            "shuffled input >= the BM25 order",
            f"{t['bm25']['core@shuffled']['ndcg']:.3f} vs {t['bm25']['first_stage']['ndcg']:.3f}: "
            f"{yes(ok['shuf']['alone'])}",
        ),
    ]


def targets_met(t: dict) -> str:
    """How many of the four targets each configuration meets."""
    ok = target_verdicts(t)
    return "; ".join(f"{c} {sum(v[c] is True for v in ok.values())} of {len(ok)}" for c in CONFIGS)


def _diff(r: dict) -> str:
    return f"{r['vs_first_stage']:+.3f} ± {r['se']:.3f}"


def _cell(r: dict | None) -> str:
    if r is None:
        return "-"
    return f"{r['ndcg']:.3f} ({_diff(r)})" if r["se"] == r["se"] else f"{r['ndcg']:.3f}"


def render_targets(report: dict) -> list[str]:
    """The issue's targets table: the default model and every other collected model, met or not."""
    t = report["parts"].get("test")
    if not t:
        return []
    lines: list[str] = []
    models = {"SmolLM2-135M (default)": t, **{k: v["pools"] for k, v in report.get("models", {}).items()}}
    cells = {name: target_cells(pools) for name, pools in models.items()}
    targets = next(iter(cells.values()))
    lines += [
        "## The issue's targets (test; each cell: what was measured, then met or not)",
        "",
        "Alone = `rank(query, docs)` (the attention's own order); fused = `rank(first_stage_scores=...)` with",
        "the model's fusion weight (default model: the bundled list's; other models: their own dev choice where",
        "collected, else the default's; see the models table). Each configuration is judged on its own.",
        "Paired differences to the first-stage",
        "order ± standard error; a set counts as below BM25 when its mean difference is below minus its s.e.",
        "",
        "| target | " + " | ".join(models) + " |",
        "|---|" + "---|" * len(models),
    ]
    for i, (target, _) in enumerate(targets):
        lines.append(f"| {target} | " + " | ".join(cells[name][i][1] for name in models) + " |")
    met = " | ".join(targets_met(t) for t in models.values())
    lines.append(f"| **targets met in one configuration** | {met} |")
    lines += [
        "",
        "| target (default model) | measured | met? |",
        "|---|---|---|",
        f"| CoRe >= ICR and QR (same settings) | BM25 order in: {t['bm25']['core']['ndcg']:.3f} / "
        f"{t['bm25']['icr']['ndcg']:.3f} / {t['bm25']['qr']['ndcg']:.3f}; dense in: "
        f"{t['dense']['core']['ndcg']:.3f} / {t['dense']['icr']['ndcg']:.3f} / "
        f"{t['dense']['qr']['ndcg']:.3f}; shuffled: "
        f"{t['bm25']['core@shuffled']['ndcg']:.3f} / {t['bm25']['icr@shuffled']['ndcg']:.3f} / "
        f"{t['bm25']['qr@shuffled']['ndcg']:.3f} | {_core_vs(t)} |",
        "",
    ]
    return lines


def render_models(report: dict) -> list[str]:
    """The larger packaged models under the same protocol, each method paired with the default's."""
    models = report.get("models") or {}
    if not models:
        return []
    lines = [
        "## Larger packaged models, same protocol (test)",
        "",
        "Each model's bundled CoRe list (`collect --model NAME`: the pass stops at the list's deepest layer), the",
        "same queries as the default where collected. Cells: nDCG@10; `vs first stage` and `vs default` are paired",
        "differences ± s.e. (`vs default` over the queries both models ran). s/query = `Reranker.rank` on 20",
        "candidates of 200 tokens, bf16, 2 CPU threads (docs/quality.md).",
        "",
        "| model | s/query | fusion w (dev) | pool | method | queries | nDCG@10 | vs first stage | vs default |",
        "|---|---:|---:|---|---|---:|---:|---:|---:|",
    ]
    for name, m in models.items():
        secs = "-" if m["seconds_per_query"] is None else f"{m['seconds_per_query']:.2f}"
        for pool, rows in m["pools"].items():
            for method, r in rows.items():
                vs_fs = "" if method == "first_stage" else f"{r['vs_first_stage']:+.3f} ± {r['se']:.3f}"
                vs_d = "" if method == "first_stage" else f"{r['vs_default']:+.3f} ± {r['vs_default_se']:.3f}"
                lines.append(
                    f"| {name} | {secs} | {m['fusion_weight']} | {pool} | {method} | {r['queries']} | "
                    f"{r['ndcg']:.3f} | {vs_fs} | {vs_d} |"
                )
    lines.append("")
    for name, m in models.items():
        cal = m.get("calibration")
        if not cal or "test" not in cal:
            lines += [f"{name}: no calibrated relevance map yet.", ""]
            continue
        t = cal["test"]
        p = "-" if t["precision@0.5"] is None else f"{t['precision@0.5']:.3f}"
        r = "-" if t["recall@0.5"] is None else f"{t['recall@0.5']:.3f}"
        lines += [
            f"{name}: calibrated relevance a = {cal['a']:.4g}, b = {cal['b']:.4g} "
            f"({cal.get('fitted_on') or 'study train'}); on these test lists ECE {t['ece']:.3f}, precision / "
            f"recall of relevance >= 0.5: {p} / {r} over {t['documents']} documents ({t['relevant']} relevant).",
            "",
        ]
    return lines


def render_windows(w: dict | None) -> list[str]:
    """Shorter lists per prompt (scripts/window_study.py, dev): the engine's round-robin windows."""
    if not w:
        return []
    lines = [
        f"## Shorter lists per prompt ({w['part']}, {w['queries']} queries, BM25 top 20, default model)",
        "",
        "The same 20 candidates scored as one prompt or dealt round-robin into shorter prompts (the engine's",
        "windows, `max_tokens`); `scripts/window_study.py`. s/query measured while other jobs shared the 2 cores:",
        "compare within the column only.",
        "",
        "| prompts | windows (mean) | nDCG@10 | vs first stage | s/query |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in w["methods"].items():
        if name == "first_stage":
            lines.append(f"| BM25 order | - | {r['ndcg']:.3f} | | |")
            continue
        lines.append(
            f"| {name} | {r['windows']:.2f} | {r['ndcg']:.3f} | {r['vs_first_stage']:+.3f} ± {r['se']:.3f} | "
            f"{r['seconds_per_query']:.1f} |"
        )
    lines += ["", "Not kept: shorter prompts did not rank better on dev (four prompts ranked worse).", ""]
    return lines


def render_token_weights(tw: dict | None) -> list[str]:
    """Query- and document-token weighting (scripts/token_weight_study.py): dev chooses, test reports."""
    if not tw:
        return []
    lines = [
        "## Token weighting (ReAttn-style, arXiv 2602.19969)",
        "",
        "Each query token's own attention row is kept (`Reranker.attention_signals(query_rows=True)`) and the query",
        "signal becomes a weighted mean of the rows instead of the plain mean: `q-entropy` weights a token by",
        "1 - H/log n of its attention over the n candidates (0 when it attends alike to every document), `q-idf` by",
        "log(n / df) (df = documents drawing at least an even share); `d-idf` scales each document token by its",
        "cross-candidate IDF. Nothing is fitted. Default model, bundled CoRe heads, the protocol above;",
        "`scripts/token_weight_study.py` (core_rerank/research/token_weighting.py).",
        "",
    ]
    for part in ("dev", "test"):
        res = tw.get(part)
        if not res:
            continue
        cost = res["cost_per_pass"]
        lines += [
            f"### {part.capitalize()} ({res['queries']} queries): nDCG@10, difference to the plain mean ± s.e.",
            "",
            "| variant | " + " | ".join(res["cells"]) + " |",
            "|---|" + "---:|" * len(res["cells"]),
        ]
        variants = ["plain", "q-entropy", "q-idf", "d-idf", "q-entropy+d-idf"]
        present = next(iter(res["cells"].values()))
        labels = ["first stage order", *variants, *(f"{v} + first stage" for v in variants)]
        labels = [v for v in labels if v in present]
        for label in labels:
            cells = []
            for cell in res["cells"].values():
                r = cell.get(label)
                if r is None:
                    cells.append("-")
                elif label in ("plain", "first stage order"):
                    cells.append(f"{r['ndcg']:.3f}")
                else:
                    cells.append(f"{r['ndcg']:.3f} ({r['vs_plain'][0]:+.3f} ± {r['vs_plain'][1]:.3f})")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        alone = [v for v in labels if v not in ("plain", "first stage order") and "+ first stage" not in v]
        gain = {v: statistics.fmean(c[v]["vs_plain"][0] for c in res["cells"].values()) for v in alone}
        best = max(gain, key=gain.get)
        lines += [
            "",
            f"Cost: {cost['plain_s']:.1f} s per plain pass, {cost['rows_and_weights_s']:.1f} s keeping the rows and",
            "scoring every variant (paired, the first passes, on 2 shared cores): keeping the rows costs ~2%.",
            f"Mean gain over plain across the cells: best {best} {gain[best]:+.3f}.",
            "",
        ]
    lines += [
        "Not kept: query-token weighting lifts the attention alone a little in every dev cell (entropy: +0.003 to",
        "+0.025, each under 1.5 s.e.), and nothing once fused with the retriever's scores in the cells a pipeline",
        "runs (first-stage order in); document-token IDF hurts behind BM25. A new score would also need its own",
        "relevance map. The rows stay available to research (`attention_signals(query_rows=True)`).",
        "",
    ]
    return lines


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
    lines += render_targets(report)
    lines += render_models(report)
    lines += render_windows(_read_json(RESULTS / "window_study.json"))
    lines += render_token_weights(_read_json(RESULTS / "token_weight_study.json"))
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
    sh = report.get("shuffle_heads")
    test = report["parts"].get("test", {})
    if sh and "heads chosen on shuffled train@shuffled" in test.get("bm25", {}):
        b, d = test["bm25"], test["dense"]
        lines += [
            "## Heads chosen for shuffled input (default model)",
            "",
            "Can other heads of the 135M read relevance without the first-stage order? Every head ranked by the",
            "nDCG@10 of its own score on the shuffled training placements, the count chosen on dev (mean of BM25",
            "order in, shuffled, dense order in): "
            + ", ".join(f"{k} heads {v:.3f}" for k, v in sh["dev_grid"].items()),
            f"-> {sh['k']} heads: " + ", ".join(f"L{layer}.H{head}" for layer, head in sh["heads"]) + ".",
            "",
            "| test | bundled CoRe heads | heads chosen on shuffled train | first-stage order |",
            "|---|---:|---:|---:|",
            f"| shuffled input (BM25 pool) | {b['core@shuffled']['ndcg']:.3f} | "
            f"{b['heads chosen on shuffled train@shuffled']['ndcg']:.3f} | {b['first_stage']['ndcg']:.3f} |",
            f"| BM25 order in | {b['core']['ndcg']:.3f} | {b['heads chosen on shuffled train']['ndcg']:.3f} | "
            f"{b['first_stage']['ndcg']:.3f} |",
            f"| dense order in | {d['core']['ndcg']:.3f} | {d['heads chosen on shuffled train']['ndcg']:.3f} | "
            f"{d['first_stage']['ndcg']:.3f} |",
            "",
            "Paired with the first-stage order: shuffled input "
            f"{_diff(b['heads chosen on shuffled train@shuffled'])} (bundled {_diff(b['core@shuffled'])}); BM25 "
            f"order in {_diff(b['heads chosen on shuffled train'])} (bundled {_diff(b['core'])}); dense order in "
            f"{_diff(d['heads chosen on shuffled train'])} (bundled {_diff(d['core'])}). A diagnostic, not a",
            "candidate head list (the bundled list is the CoRe detection's, docs/method.md): it measures how much",
            "of the shortfall on shuffled input a choice of heads can recover in this model.",
            "",
        ]
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
