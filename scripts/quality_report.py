"""Regenerate docs/quality.md: detect heads per model, choose tau / k (/ order) on dev data, report on test sets.

    python scripts/quality_report.py                          # every installed model, every stage (~3 h, 2 cores)
    python scripts/quality_report.py --model qwen --stage test
    python scripts/quality_report.py --stage report           # re-write docs/quality.md from the saved JSON

Models (``--model``, repeatable): smollm2 (the embedded default), qwen (Qwen2.5-Coder-0.5B-Instruct), qwen15
(Qwen2.5-Coder-1.5B-Instruct, small budgets: it is ~3x slower) and gemma (gemma-3-270m); models not installed
are skipped with the command that installs them.
Stages and where they write (``--work`` holds the caches; results are committed):
  detect  per-sample masses of every head on TRAINING data -> WORK/<model>/detection.npz
  dev     sweep CoRe tau x k, QR-16, ICR (and, for the default model, both document orders) and fusion
          on DEV data -> benchmarks/results/quality_dev_<model>.json
  test    the dev-chosen configuration, the baselines and the layer-budget sweep on TEST splits
          -> benchmarks/results/quality_test_<model>.json; writes the chosen CoRe list and the QR-16 list
          into core_rerank/head_lists/ (the bundled lists ARE these files)
  report  docs/quality.md (+ one head-map PNG per bundled CoRe list) from the JSON files

Data discipline: detection = SciFact train (75% of its queries, seeded split) + WikiQA train; dev = the other
25% of SciFact train + NFCorpus dev; test = the test splits only, never used for a choice. The layer-budget
sweep re-selects the CoRe heads (dev-chosen tau, k) among the first N layers only; it reports, it chooses nothing.
Budgets keep a run in tens of minutes per model on 2 CPU cores; runs are deterministic (seeded samples).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"
HEAD_LISTS = ROOT / "core_rerank" / "head_lists"

TAUS = (0.001, 0.01, 0.1, 1.0)
KS = (4, 8, 16, 32)
DEPTH = 20
MAX_DOC_TOKENS = 200
TEST_SETS = [  # (folder, split, max queries)
    ("scifact", "test", 60),
    ("trec-dl19-passage", "test", None),
    ("trec-dl20-passage", "test", None),
    ("hotpotqa_distractor_dev500", "test", 60),
    ("dbpedia_entity_sub50", "test", None),
    ("nfcorpus_tokenized", "test", 60),
    ("wikiqa_tok", "test", 60),
    ("cranfield", "test", 40),
    ("cisi", "test", 30),
    ("med", "test", None),
    ("cacm", "test", 30),
    ("adi", "test", None),
]
LAYER_FRACTIONS = (0.25, 0.375, 0.5, 0.625, 0.75, 0.875)
TIMING_QUERIES = 3


@dataclass(frozen=True)
class ModelSpec:
    key: str
    engine: str  # what Reranker(model=...) takes
    name: str
    list_stem: str  # core_rerank/head_lists/<stem>.<method>.json
    orders: tuple[str, ...]  # document orders swept on dev
    detect: dict  # detection samples per source
    test_cap: int | None  # extra cap on queries per test set (None: TEST_SETS caps); a prefix of the same sample


MODELS = {
    m.key: m
    for m in (
        ModelSpec(
            "smollm2",
            "default",
            "SmolLM2-135M-Instruct",
            "HuggingFaceTB__SmolLM2-135M-Instruct",
            ("reverse", "given"),
            {"scifact": 300, "wikiqa_tok": 200},
            None,
        ),
        ModelSpec(
            "qwen",
            "qwen2.5-coder-0.5b-instruct",
            "Qwen2.5-Coder-0.5B-Instruct",
            "Qwen__Qwen2.5-Coder-0.5B-Instruct",
            ("reverse",),
            {"scifact": 150, "wikiqa_tok": 100},
            25,
        ),
        ModelSpec(
            "qwen15",
            "qwen2.5-coder-1.5b-instruct",
            "Qwen2.5-Coder-1.5B-Instruct",
            "Qwen__Qwen2.5-Coder-1.5B-Instruct",
            ("reverse",),
            {"scifact": 80, "wikiqa_tok": 40},
            10,
        ),
        ModelSpec(
            "gemma",
            "gemma-3-270m",
            "gemma-3-270m (base)",
            "google__gemma-3-270m",
            ("reverse",),
            {"scifact": 200, "wikiqa_tok": 100},
            30,
        ),
    )
}
DETECTION_NOTE = (
    "SciFact train (75% of queries, seeded split; 9 hard negatives from its BM25 train run) + WikiQA train "
    "(candidate pools); 1 positive per query at a seeded random position; documents cut to "
    f"{MAX_DOC_TOKENS} tokens; tau and k chosen on held-out SciFact train + NFCorpus dev"
)


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def _reranker(spec: ModelSpec, threads: int):
    """All heads, for detection (its prompts hold the texts as cut by detection, in sample order)."""
    import torch

    torch.set_num_threads(threads)
    from core_rerank import Reranker

    return Reranker(model=spec.engine, heads="all", max_doc_tokens=MAX_DOC_TOKENS)


def _eval_reranker(spec: ModelSpec, threads: int, order: str):
    """The evaluation reranker: all heads, the evaluated order and document cut as its own settings, the
    model's context as max_tokens (a depth-20 list is one prompt)."""
    import torch

    torch.set_num_threads(threads)
    from core_rerank.research.evaluation import evaluation_reranker

    return evaluation_reranker(spec.engine, order=order, max_doc_tokens=MAX_DOC_TOKENS)


def _work(args, spec: ModelSpec) -> Path:
    path = args.work / spec.key
    path.mkdir(parents=True, exist_ok=True)
    return path


def _dev_file(spec: ModelSpec) -> Path:
    return RESULTS / f"quality_dev_{spec.key}.json"


def _test_file(spec: ModelSpec) -> Path:
    return RESULTS / f"quality_test_{spec.key}.json"


# ------------------------------------------------------------------ detect
def stage_detect(args, spec: ModelSpec) -> None:
    from core_rerank.research.detection import collect_masses, default_detection_samples

    rr = _reranker(spec, args.threads)
    samples = default_detection_samples(DATA, spec.detect)
    log(f"{spec.key} detect: {len(samples)} samples")
    res = collect_masses(rr, samples, MAX_DOC_TOKENS, lambda n, t: n % 10 == 0 and log(f"  {n}/{t}"))
    res.save(_work(args, spec) / "detection.npz")


def head_sets(det) -> dict[str, list]:
    """Every candidate head set of the dev sweep, named."""
    from core_rerank.research.detection import make_head_list

    sets = {}
    for tau in TAUS:
        for k in KS:
            sets[f"core_t{tau:g}_k{k}"] = list(make_head_list(det, "core", k, tau).heads)
    sets["qr16"] = list(make_head_list(det, "qr", 16).heads)
    sets["icr"] = list(det.heads)
    return sets


def _dev_job(payload):
    key, order, threads, max_q, work = payload
    from core_rerank.research.datasets import load_dataset
    from core_rerank.research.detection import DetectionResult, split_queries
    from core_rerank.research.evaluation import _select, evaluate_dataset

    spec = MODELS[key]
    rr = _eval_reranker(spec, threads, order)
    sets = head_sets(DetectionResult.load(Path(work) / "detection.npz"))
    out = []
    sci = load_dataset(DATA / "scifact", "train")
    _, held = split_queries(sci.query_ids, 0.25, seed=0)
    for ds, qids in ((sci, _select(held, max_q)), (load_dataset(DATA / "nfcorpus_tokenized", "dev"), None)):
        res = evaluate_dataset(rr, ds, sets, depth=DEPTH, max_queries=max_q, query_ids=qids)
        log(f"{key} dev {ds.name}/{ds.split} {order}: {res.queries} queries, {res.seconds:.0f} s")
        out.append(res.to_dict(per_query=True))
    return order, out


def stage_dev(args, spec: ModelSpec) -> None:
    # One process per order; each order's runs are cached in WORK/<model>/dev_<order>.json.
    work = _work(args, spec)
    todo = [o for o in spec.orders if args.fresh or not (work / f"dev_{o}.json").is_file()]
    if todo:
        threads = max(1, args.threads // len(todo))
        with ProcessPoolExecutor(len(todo)) as pool:
            jobs = [(spec.key, o, threads, args.max_dev, str(work)) for o in todo]
            for order, out in pool.map(_dev_job, jobs):
                (work / f"dev_{order}.json").write_text(json.dumps(out))
    results = {o: json.loads((work / f"dev_{o}.json").read_text()) for o in spec.orders}
    # Choice: mean nDCG@10 over the dev sets, order and head set together.
    table = {}
    for order, per_ds in results.items():
        for method in per_ds[0]["ndcg@10"]:
            table[f"{order}:{method}"] = statistics.fmean(r["ndcg@10"][method] for r in per_ds)
    core_only = {k: v for k, v in table.items() if ":core_" in k and "+bm25" not in k}
    best_core = max(core_only, key=core_only.get)
    order, name = best_core.split(":")
    tau, k = float(name.split("_t")[1].split("_k")[0]), int(name.split("_k")[1])
    summary = {
        "model": spec.name,
        "dev_sets": [f"{r['dataset']}/{r['split']} ({r['queries']} q)" for r in results[spec.orders[0]]],
        "mean_ndcg@10": {k_: round(v, 4) for k_, v in sorted(table.items(), key=lambda t: -t[1])},
        "chosen": {"order": order, "tau": tau, "k": k, "by": "mean dev nDCG@10 of core (no fusion)"},
        "runs": results,
    }
    _dev_file(spec).write_text(json.dumps(summary, indent=1) + "\n")
    log(f"{spec.key} dev: chose {summary['chosen']}")


# ------------------------------------------------------------------- test
def layer_budgets(num_layers: int, deepest: int) -> list[int]:
    """Layer counts for the layer-budget sweep: fractions of the model that cut into the chosen list."""
    return sorted({max(1, round(f * num_layers)) for f in LAYER_FRACTIONS if round(f * num_layers) <= deepest})


def test_lists(det, chosen: dict):
    """name -> HeadList evaluated on test: icr, qr, core, core_k8, core_L<n> (the layer-budget sweep)."""
    from core_rerank.research.detection import make_head_list

    tau, k = chosen["tau"], chosen["k"]
    core = make_head_list(det, "core", k, tau, detection_note=DETECTION_NOTE)
    lists = {
        "qr": make_head_list(det, "qr", 16, detection_note=DETECTION_NOTE),
        "core": core,
        "core_k8": make_head_list(det, "core", 8, tau, detection_note=DETECTION_NOTE),
    }
    for n in layer_budgets(det.num_layers, core.max_layer):
        lists[f"core_L{n}"] = make_head_list(det.below_layer(n), "core", k, tau, detection_note=DETECTION_NOTE)
    return lists


def _test_job(payload):
    key, names, threads, work = payload
    from core_rerank.research.datasets import load_dataset
    from core_rerank.research.detection import DetectionResult
    from core_rerank.research.evaluation import DenseScorer, evaluate_dataset

    spec = MODELS[key]
    chosen = json.loads(_dev_file(spec).read_text())["chosen"]
    rr = _eval_reranker(spec, threads, chosen["order"])
    det = DetectionResult.load(Path(work) / "detection.npz")
    sets = {"icr": list(det.heads), **{n: list(hl.heads) for n, hl in test_lists(det, chosen).items()}}
    dense = DenseScorer()
    out = []
    for folder, split, max_q in TEST_SETS:
        if folder not in names:
            continue
        if spec.test_cap is not None:
            max_q = spec.test_cap if max_q is None else min(max_q, spec.test_cap)
        ds = load_dataset(DATA / folder, split)
        res = evaluate_dataset(
            rr,
            ds,
            sets,
            depth=DEPTH,
            max_queries=max_q,
            dense=dense,
            nocal=True,
        )
        shown = ("bm25", "dense", "icr", "qr", "core")
        log(
            f"{key} test {folder}: {res.queries} q, {res.seconds:.0f} s, "
            + ", ".join(f"{m} {res.ndcg[m]:.3f}" for m in shown)
        )
        out.append(res.to_dict(per_query=True))
    return out


def _timings(spec: ModelSpec, lists: dict, threads: int) -> dict[str, dict]:
    """Seconds per query of the ENGINE (Reranker.rank, 20 SciFact test candidates of 200 tokens) for each
    list: the model is cut after the list's deepest layer, so this is what a layer budget buys."""
    import torch

    from core_rerank import Reranker
    from core_rerank.research.datasets import first_stage, load_dataset

    torch.set_num_threads(threads)
    ds = load_dataset(DATA / "scifact", "test")
    cands, _ = first_stage(ds)
    queries = [q for q in ds.query_ids if q in cands][:TIMING_QUERIES]
    docs = {q: [ds.doc_text(d) for d in cands[q].doc_ids[:DEPTH] if d in ds.corpus] for q in queries}
    out = {}
    for name, spec_heads in [("icr", "all"), *lists.items()]:
        rr = Reranker(model=spec.engine, heads=spec_heads, max_doc_tokens=MAX_DOC_TOKENS)
        rr.rank(ds.queries[queries[0]], docs[queries[0]])  # warm-up
        t0 = time.perf_counter()
        for q in queries:
            rr.rank(ds.queries[q], docs[q])
        out[name] = {
            "layers_run": rr.loaded_model.layers_loaded,
            "seconds_per_query": round((time.perf_counter() - t0) / len(queries), 3),
        }
        log(f"{spec.key} timing {name}: {out[name]}")
    return out


def stage_test(args, spec: ModelSpec) -> None:
    from core_rerank.research.detection import DetectionResult

    chosen = json.loads(_dev_file(spec).read_text())["chosen"]
    work = _work(args, spec)
    det = DetectionResult.load(work / "detection.npz")
    lists = test_lists(det, chosen)
    names = [f for f, _, _ in TEST_SETS]
    halves = [names[0::2], names[1::2]]
    with ProcessPoolExecutor(2) as pool:
        parts = list(pool.map(_test_job, [(spec.key, h, max(1, args.threads // 2), str(work)) for h in halves]))
    results = sorted((r for p in parts for r in p), key=lambda r: names.index(r["dataset"]))
    timing = _timings(spec, {n: hl for n, hl in lists.items() if n == "core" or n.startswith("core_L")}, args.threads)
    layers = {n: {"layers_run": hl.max_layer + 1, "heads": len(hl.heads)} for n, hl in lists.items()}
    out = {"model": spec.name, "chosen": chosen, "lists": layers, "timing": timing, "results": results}
    _test_file(spec).write_text(json.dumps(out, indent=1) + "\n")
    for method in ("core", "qr"):  # the bundled lists are exactly the evaluated ones
        lists[method].save(HEAD_LISTS / f"{spec.list_stem}.{method}.json")
    log(f"{spec.key} test: wrote {_test_file(spec).name} and the bundled {spec.list_stem} lists")


# ----------------------------------------------------------------- report
METHODS = ["bm25", "dense", "icr", "qr", "core", "core_k8", "core+bm25", "icr+bm25", "qr+bm25", "core-nocal"]
PAIRS = (
    ("core", "icr"),
    ("core", "qr"),
    ("core", "bm25"),
    ("core", "dense"),
    ("core+bm25", "bm25"),
    ("icr", "bm25"),
    ("dense", "bm25"),
    ("core", "core-nocal"),
)


def _per_query(r: dict, method: str) -> dict[str, float]:
    pq = r["per_query"]
    return pq[method] if method in pq else pq["first_stage"]


def _model_section(spec: ModelSpec, dev: dict, test: dict) -> list[str]:
    results = test["results"]
    lines = [f"## {spec.name}", ""]
    bundled = f"core_rerank/head_lists/{spec.list_stem}.core.json"
    lay = test["lists"]["core"]
    lines += [
        f"Chosen on dev ({', '.join(dev['dev_sets'])}): order `{dev['chosen']['order']}`, tau "
        f"{dev['chosen']['tau']:g}, k {dev['chosen']['k']}. Bundled as `{bundled}` ({lay['heads']} heads; the "
        f"engine runs {lay['layers_run']} layers).",
        "",
        "### Test results (nDCG@10)",
        "",
        "| data set (queries) | " + " | ".join(METHODS) + " |",
        "|---|" + "---:|" * len(METHODS),
    ]
    for r in results:
        vals = [r["ndcg@10"].get(m) for m in METHODS]
        best = max(v for v in vals if v is not None)
        cells = [(f"**{v:.3f}**" if v == best else f"{v:.3f}") if v is not None else "-" for v in vals]
        lines.append(f"| {r['dataset']} ({r['queries']}) | " + " | ".join(cells) + " |")
    means = [statistics.fmean(r["ndcg@10"][m] for r in results) for m in METHODS]
    lines.append("| **mean** | " + " | ".join(f"{m:.3f}" for m in means) + " |")
    wins = {m: sum(r["ndcg@10"]["core"] >= r["ndcg@10"][m] for r in results) for m in ("icr", "qr", "bm25", "dense")}
    n = len(results)
    lines += [
        "",
        f"CoRe >= ICR on {wins['icr']}/{n} test sets, >= QR on {wins['qr']}/{n}, "
        f">= BM25 on {wins['bm25']}/{n}, >= dense on {wins['dense']}/{n}.",
        "",
        "### Paired comparison over all test queries (every query of every test set counts once)",
        "",
        "| comparison | queries | mean difference | std. error | better / worse / tied |",
        "|---|---:|---:|---:|---|",
    ]
    for a, b in PAIRS:
        diffs = [_per_query(r, a)[q] - _per_query(r, b)[q] for r in results for q in r["per_query"][a]]
        se = statistics.stdev(diffs) / len(diffs) ** 0.5
        better, worse = sum(d > 1e-9 for d in diffs), sum(d < -1e-9 for d in diffs)
        lines.append(
            f"| {a} vs {b} | {len(diffs)} | {statistics.fmean(diffs):+.4f} | {se:.4f} | "
            f"{better} / {worse} / {len(diffs) - better - worse} |"
        )
    # Layer budget: nDCG of CoRe re-selected within the first N layers, and what the engine spends.
    timing = test["timing"]
    budget = sorted((k for k in test["lists"] if k.startswith("core_L")), key=lambda k: int(k[6:]))
    lines += [
        "",
        "### Layer budget (test mean nDCG@10 vs layers the engine runs)",
        "",
        "CoRe heads re-selected (same tau, k) among the first N layers only; s/query = `Reranker.rank` on 20 SciFact",
        f"test candidates of {MAX_DOC_TOKENS} tokens, bf16, 2 CPU threads, mean of {TIMING_QUERIES} queries.",
        "",
        "| head set | layers run | nDCG@10 | s/query | time vs all layers |",
        "|---|---:|---:|---:|---:|",
    ]
    full = timing["icr"]["seconds_per_query"]
    for name in [*budget, "core", "icr"]:
        nd = statistics.fmean(r["ndcg@10"][name] for r in results)
        t = timing[name]
        label = {"core": "core (bundled)", "icr": "icr (all heads)"}.get(name, name)
        lines.append(
            f"| {label} | {t['layers_run']} | {nd:.3f} | {t['seconds_per_query']:.2f} | "
            f"{t['seconds_per_query'] / full:.2f} |"
        )
    table = dev["mean_ndcg@10"]
    if len({k.split(":")[0] for k in table}) > 1:
        best = f"core_t{dev['chosen']['tau']:g}_k{dev['chosen']['k']}"
        lines += [
            "",
            "### Document order (dev, mean nDCG@10)",
            "",
            "| head set | reverse (first-stage best nearest the query) | given (best first) |",
            "|---|---:|---:|",
        ]
        for m in ("bm25", "icr", "qr16", best, f"{best}+bm25"):
            lines.append(f"| {m} | {table[f'reverse:{m}']:.4f} | {table[f'given:{m}']:.4f} |")
    order = dev["chosen"]["order"]
    lines += [
        "",
        f"### tau x k sweep (dev, mean nDCG@10, order `{order}`)",
        "",
        "| tau \\ k | " + " | ".join(str(k) for k in KS) + " |",
        "|---|" + "---:|" * len(KS),
    ]
    for tau in TAUS:
        cells = [f"{table[f'{order}:core_t{tau:g}_k{k}']:.4f}" for k in KS]
        lines.append(f"| {tau:g} | " + " | ".join(cells) + " |")
    others = ", ".join(f"{m} {table[f'{order}:{m}']:.4f}" for m in ("bm25", "icr", "qr16"))
    lines += ["", f"Dev baselines: {others}."]
    from core_rerank.heads import load_head_list
    from core_rerank.research.plots import plot_head_map

    hl = load_head_list(ROOT / bundled)
    if hl.score_matrix is not None:
        png = f"heads_{spec.key}_core.png"
        plot_head_map(hl, ROOT / "docs" / png)
        lines += [
            "",
            "### Head map of the bundled list",
            "",
            "Mean SCoRe of every head on the detection samples; the selected heads are outlined in red.",
            "",
            f"![{spec.name} CoRe head map]({png})",
        ]
    return [*lines, ""]


def _overview(done: list[tuple[ModelSpec, dict, dict]]) -> list[str]:
    """Each model against the default model on the test queries both were evaluated on (every test sample
    is a prefix of one seeded order, so a smaller sample is a subset of the default model's)."""
    base_spec, _, base = done[0]
    base_pq = {(r["dataset"], q): v for r in base["results"] for q, v in r["per_query"]["core"].items()}
    cols = ["bm25", "dense", "icr", "qr", "core"]
    lines = [
        "## All models",
        "",
        "Mean nDCG@10 over each model's test queries (each test set weighted equally; the sample sizes differ, so",
        f"compare within a row); `core - {base_spec.key}` = per-query difference to the default model's CoRe on the",
        "same queries (standard error in brackets); s/query = the engine with the bundled list.",
        "",
        "| model | queries | " + " | ".join(cols) + f" | core - {base_spec.key} | s/query |",
        "|---|---:|" + "---:|" * (len(cols) + 2),
    ]
    for spec, _, test in done:
        results = test["results"]
        means = [
            statistics.fmean(r["ndcg@10"][m] if m in r["ndcg@10"] else r["ndcg@10"]["first_stage"] for r in results)
            for m in cols
        ]
        best = max(means)
        cells = [f"**{v:.3f}**" if v == best else f"{v:.3f}" for v in means]
        diffs = [v - base_pq[(r["dataset"], q)] for r in results for q, v in r["per_query"]["core"].items()]
        vs = (
            "-"
            if spec is base_spec
            else f"{statistics.fmean(diffs):+.3f} ({statistics.stdev(diffs) / len(diffs) ** 0.5:.3f})"
        )
        n = sum(r["queries"] for r in results)
        lines.append(
            f"| {spec.name} | {n} | "
            + " | ".join(cells)
            + f" | {vs} | {test['timing']['core']['seconds_per_query']:.2f} |"
        )
    return [*lines, ""]


def stage_report(args, specs: list[ModelSpec]) -> None:
    done = [
        (s, json.loads(_dev_file(s).read_text()), json.loads(_test_file(s).read_text()))
        for s in MODELS.values()
        if _test_file(s).is_file()
    ]
    lines = [
        "# Quality: nDCG@10 of attention re-ranking",
        "",
        "Generated by `python scripts/quality_report.py` (see its docstring for the stages); raw numbers in",
        "`benchmarks/results/quality_{dev,test}_<model>.json`.",
        "",
        "## Protocol",
        f"- Re-rank the top {DEPTH} first-stage candidates (`runs/*.trec` of the split; WikiQA / HotpotQA:",
        f"  their candidate pools ordered by bm25s), every document cut to {MAX_DOC_TOKENS} tokens, all {DEPTH} in one",
        "  prompt; nDCG@10 by pytrec_eval (`ndcg_cut.10`) over a fixed seeded sample of the split's queries (count",
        "  in brackets; smaller samples for the slower models are prefixes of the same seeded order).",
        "- `bm25` = first-stage order; `dense` = all-MiniLM-L6-v2 cosine over the same candidates; `icr` = all",
        "  heads; `qr` = top-16 heads by attention mass on the positive; `core` = CoRe heads (dev-chosen tau, k);",
        "  `core_k8` = CoRe top-8 at the same tau; `X+bm25` = reciprocal-rank fusion 1/(60+r_X) + 1/(60+r_bm25);",
        "  `core-nocal` = CoRe heads without the N/A calibration and mask.",
        "  All calibrated scores use the engine's formula (`core_rerank.scoring.document_scores`).",
        "- Detection (training data only): SciFact train (75% of its queries) with BM25-run hard negatives",
        "  + WikiQA train pools. Dev (choice of tau, k and order): the held-out 25% of SciFact train + NFCorpus dev.",
        "  Test splits were used for nothing but the tables.",
        "",
    ]
    if len(done) > 1:
        lines += _overview(done)
    for spec, dev, test in done:
        lines += _model_section(spec, dev, test)
    doc = ROOT / "docs" / "quality.md"
    if doc.is_file() and "\n## Findings" in doc.read_text():  # hand-written; kept across regenerations
        lines += ["## Findings" + doc.read_text().split("\n## Findings", 1)[1].rstrip()]
    doc.write_text("\n".join(lines) + "\n")
    log("wrote docs/quality.md")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", choices=["all", "detect", "dev", "test", "report"], default="all")
    ap.add_argument("--model", action="append", choices=list(MODELS), help="default: every model")
    ap.add_argument("--work", type=Path, default=Path.home() / ".cache" / "core-rerank" / "quality")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-dev", type=int, default=50, help="queries per dev set")
    ap.add_argument("--fresh", action="store_true", help="dev: recompute cached per-order runs")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    from core_rerank.packaged import find_packaged

    specs = []
    for key in args.model or list(MODELS):
        packaged = find_packaged(MODELS[key].engine)
        if packaged is not None and not packaged.installed():
            log(f"{key}: skipped, {packaged.model_id} is not installed ({packaged.install})")
            continue
        specs.append(MODELS[key])
    for stage in ("detect", "dev", "test"):
        if args.stage in ("all", stage):
            for spec in specs:
                if stage == "detect" and not args.fresh and (_work(args, spec) / "detection.npz").is_file():
                    log(f"{spec.key} detect: cached ({_work(args, spec) / 'detection.npz'})")
                    continue
                globals()[f"stage_{stage}"](args, spec)
    if args.stage in ("all", "report"):
        stage_report(args, specs)


if __name__ == "__main__":
    main()
