"""The analysis of the order study (``studies.order_collect``): every method from the collected per-head signals.

    python -m studies.order_analysis [--work /work/study]

Reads WORK/{train,dev,test}.pkl (and WORK/<model>/ for other models), fits on train, chooses on dev, reports on
test, and writes benchmarks/results/order_study.json, docs/retriever_study.md (``studies.order_report``) and
docs/calibration_reliability.png. Pure numpy: seconds. The JSON's ``bundle`` section is what
``python -m studies.bundle fits`` stores in the bundled head lists; nothing here writes them.

nDCG@10 is pytrec_eval's (``core_rerank.research.metrics``), fusion is the engine's own (``core_rerank.scoring.fuse``,
as ``Reranker.rank(..., first_stage_scores=...)`` applies it), so a weight chosen here is the weight applied there.
"""

from __future__ import annotations

import argparse
import json
import pickle
import statistics
from collections.abc import Callable
from pathlib import Path

import numpy as np

from core_rerank import scoring
from core_rerank.research.calibration import fit_logistic, reliability
from core_rerank.research.metrics import mean_se, query_ndcg, rrf

from . import ROOT
from .order_report import read_json, render

RESULTS = ROOT / "benchmarks" / "results"
FUSION_GRID = [0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0]  # fusion weights tried on dev (0 = attention alone)


def z(x: np.ndarray) -> np.ndarray:
    """The engine's z-scores (``scoring.standardized`` over the finite entries); a non-finite entry ranks last."""
    x = np.asarray(x, dtype=float)
    finite = np.isfinite(x)
    zs = np.array(scoring.standardized(np.where(finite, x, 0.0).tolist(), finite.tolist()))
    return np.where(finite, zs, -np.inf)


def _mean_se_round(v: list[float]) -> list:
    """[mean, standard error (None for one value), count]."""
    return mean_se(v).round()


def _mu_se(v: list[float]) -> tuple[float, float]:
    """Mean and standard error, NaN where undefined (the JSON rounds them)."""
    m = mean_se(v)
    return m.mean, m.se if m.se is not None else float("nan")


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
        return query_ndcg(self.doc_ids, [float(v) for v in scores], self.qrels)

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
    """Attention fused with the first stage's own scores as the engine fuses them (``scoring.fuse``:
    z(attention) + w * z(first-stage score)); a missing first-stage score counts as the list's lowest."""

    def f(q: Q) -> np.ndarray:
        fs = q.fs_score if kind == "z" else q.fs_rank
        fs = np.where(np.isfinite(fs), fs, np.nanmin(fs) if np.isfinite(fs).any() else 0.0)
        return np.array(scoring.fuse([float(v) for v in base(q)], fs.tolist(), w))

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
    return np.array([scoring.relevance(float(v), a, b) for v in x])


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
    ms["first-stage scores + rrf core"] = (lambda q: np.array(rrf(q.fs_rank.tolist(), ms["core"][0](q).tolist())), 1)

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
                mu, se = _mu_se(d) if d else (float("nan"), float("nan"))
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
    report["bundle"] = bundle_section(report, counts)
    out = args.out
    out.write_text(json.dumps(report, indent=1, default=float) + "\n")
    print("wrote", out)
    docs = args.docs
    (docs / "retriever_study.md").write_text(render(report, counts))
    curves = {part: report["calibration"][part]["bins"] for part in ("dev", "test") if part in report["calibration"]}
    if curves:
        from core_rerank.research.plots import plot_reliability

        plot_reliability(curves, docs / "calibration_reliability.png", "SmolLM2-135M CoRe: calibrated relevance")
    print("wrote", docs / "retriever_study.md")


def bundle_section(report: dict, counts: dict) -> dict:
    """What ``studies.bundle fits`` stores, per model id: the train-fitted relevance map (``None``: keep the list's
    own, fitted by ``core-rerank calibrate``) and the dev-chosen fusion weight, with what each was made on."""
    from core_rerank.packaged import find_packaged

    def model_id(name: str) -> str:  # a packaged model's id, whether or not it is installed here
        packaged = find_packaged(name)
        return packaged.model_id if packaged is not None else name

    def relevance(cal: dict, train: str) -> dict:
        return {
            "a": cal["a"],
            "b": cal["b"],
            "fitted_on": f"train: {train}; BM25 and dense top 20, first-stage order in",
            "documents": cal["train"]["documents"],
            "relevant": cal["train"]["relevant"],
            "ece_dev": cal.get("dev", {}).get("ece"),
            "ece_test": cal.get("test", {}).get("ece"),
            "note": "calibrated for lists with few relevant documents (SciFact / WikiQA-like); under-confident "
            "where many candidates are relevant (docs/retriever_study.md)",
        }

    def fusion(weight: float, dev: str) -> dict:
        return {"weight": float(weight), "chosen_on": f"dev: {dev} (mean over BM25 and dense)"}

    grid = report["fusion_dev_grid"]
    weights = list(next(iter(grid.values())))
    weight = max(weights, key=lambda w: sum(grid[p][w] for p in grid) / len(grid))
    out = {
        "HuggingFaceTB/SmolLM2-135M-Instruct": {
            "relevance": relevance(report["calibration"], counts["train"]),
            "fusion": fusion(float(weight), counts["dev"]),
        }
    }
    for name, m in report.get("models", {}).items():
        own = m.get("calibration") and m["calibration"].get("source") != "bundled head list"
        if not own and not m.get("fusion_dev_grid"):
            continue  # neither was chosen for this model: its list keeps what it has
        out[model_id(name)] = {
            "relevance": relevance(m["calibration"], m["counts"]["train"]) if own else None,
            "fusion": fusion(m["fusion_weight"], m["counts"]["dev"]),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/work/study"), help="where studies.order_collect wrote")
    ap.add_argument("--out", type=Path, default=RESULTS / "order_study.json", help="the results JSON to write")
    ap.add_argument("--docs", type=Path, default=ROOT / "docs", help="where retriever_study.md and its plot go")
    analyze(ap.parse_args())


# Other packaged models, collected with `order_collect --model NAME` into WORK/<name>/ (their CoRe heads only).
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
                mu, se = _mu_se(d)
                common = [k for k in got if k in default_by[name]]
                dd = [got[k] - default_by[name][k] for k in common]
                mu_d, se_d = _mu_se(dd) if len(dd) > 1 else (float("nan"), float("nan"))
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
        timing = read_json(RESULTS / f"quality_test_{TIMING_FILES.get(sub.name, sub.name)}.json")
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
    fit = core.relevance_map if core is not None else None
    return None if fit is None else {"a": fit.a, "b": fit.b, "fitted_on": fit.fitted_on}


def _count(qs: list[Q]) -> str:
    by: dict = {}
    for q in qs:
        by.setdefault(q.ds, set()).add(q.qid)
    return ", ".join(f"{ds} {len(v)} q" for ds, v in sorted(by.items())) or "none"


if __name__ == "__main__":
    main()
