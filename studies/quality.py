"""Regenerate docs/quality.md: detect heads per model, choose tau / k (/ order) on dev data, report on test sets.

    python -m studies.quality                          # every installed model, every stage (~3 h, 2 cores)
    python -m studies.quality --model qwen --stage test
    python -m studies.quality --stage report           # re-write docs/quality.md from the saved JSON
    python -m studies.bundle heads --model qwen        # ... and make the evaluated lists the bundled ones

Models (``--model``, repeatable): smollm2 (the embedded default), qwen (Qwen2.5-Coder-0.5B-Instruct), qwen15
(Qwen2.5-Coder-1.5B-Instruct, small budgets: it is ~3x slower) and gemma (gemma-3-270m); models not installed
are skipped with the command that installs them.
Stages and where they write (``--work`` holds the caches; results are committed). The model stages write JSON
only; the report is rendered from that JSON alone (core_rerank.research.report, a pure function):
  detect   per-sample masses of every head on TRAINING data -> WORK/<model>/detection.npz
  dev      sweep CoRe tau x k, QR-16, ICR (and, for the default model, both document orders) and fusion
           on DEV data -> benchmarks/results/quality_dev_<model>.json
  test     the dev-chosen configuration, the baselines and the layer-budget sweep on TEST splits
           -> benchmarks/results/quality_test_<model>.json, and the evaluated CoRe and QR-16 lists as candidates
           -> benchmarks/results/quality_heads_<model>.{core,qr}.json
  timings  seconds per query of the engine (Reranker.rank) with all heads, the CoRe list and each layer budget
           -> the "timing" entry of benchmarks/results/quality_test_<model>.json
  maps     one head-map PNG per model's tested CoRe list -> docs/heads_<model>_core.png (needs matplotlib)
  report   docs/quality.md from the JSON files (its hand-written "## Findings" section is kept)

Nothing here writes the bundled head lists (core_rerank/head_lists/, what ``Reranker(model)`` loads): the test stage
saves the evaluated CoRe and QR-16 lists under benchmarks/results/, ``python -m studies.bundle heads`` makes them
the bundled ones, and the report names the candidate list where it differs from the bundled one.

Data discipline: detection = SciFact train (75% of its queries, seeded split) + WikiQA train; dev = the other
25% of SciFact train + NFCorpus dev; test = the test splits only, never used for a choice. The layer-budget
sweep re-selects the CoRe heads (dev-chosen tau, k) among the first N layers only; it reports, it chooses nothing.
Budgets keep a run in tens of minutes per model on 2 CPU cores; runs are deterministic (seeded samples).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from . import DATA, ROOT
from .protocol import DEPTH, MAX_DOC_TOKENS

RESULTS = ROOT / "benchmarks" / "results"
HEAD_LISTS = ROOT / "core_rerank" / "head_lists"

TAUS = (0.001, 0.01, 0.1, 1.0)
KS = (4, 8, 16, 32)
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
    from core_rerank.settings import EngineSettings

    return evaluation_reranker(EngineSettings(model=spec.engine, order=order, max_doc_tokens=MAX_DOC_TOKENS))


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
    from core_rerank.research.datasets import load_dataset, sample_queries
    from core_rerank.research.detection import DetectionResult, split_queries
    from core_rerank.research.evaluation import evaluate_dataset

    spec = MODELS[key]
    rr = _eval_reranker(spec, threads, order)
    sets = head_sets(DetectionResult.load(Path(work) / "detection.npz"))
    out = []
    sci = load_dataset(DATA / "scifact", "train")
    _, held = split_queries(sci.query_ids, 0.25, seed=0)
    for ds, qids in ((sci, sample_queries(held, max_q)), (load_dataset(DATA / "nfcorpus_tokenized", "dev"), None)):
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
            nocontrast=True,
        )
        shown = ("bm25", "dense", "icr", "qr", "core")
        log(
            f"{key} test {folder}: {res.queries} q, {res.seconds:.0f} s, "
            + ", ".join(f"{m} {res.ndcg[m]:.3f}" for m in shown)
        )
        out.append(res.to_dict(per_query=True))
    return out


def _candidate_file(spec: ModelSpec, method: str) -> Path:
    return RESULTS / f"quality_heads_{spec.key}.{method}.json"


def _bundled_file(spec: ModelSpec, method: str) -> Path:
    return HEAD_LISTS / f"{spec.list_stem}.{method}.json"


def _lists(args, spec: ModelSpec) -> dict:
    """The lists the test stage evaluates (from the cached detection masses and the dev choice)."""
    from core_rerank.research.detection import DetectionResult

    chosen = json.loads(_dev_file(spec).read_text())["chosen"]
    return test_lists(DetectionResult.load(_work(args, spec) / "detection.npz"), chosen)


def stage_test(args, spec: ModelSpec) -> None:
    chosen = json.loads(_dev_file(spec).read_text())["chosen"]
    work = _work(args, spec)
    lists = _lists(args, spec)
    names = [f for f, _, _ in TEST_SETS]
    halves = [names[0::2], names[1::2]]
    with ProcessPoolExecutor(2) as pool:
        parts = list(pool.map(_test_job, [(spec.key, h, max(1, args.threads // 2), str(work)) for h in halves]))
    results = sorted((r for p in parts for r in p), key=lambda r: names.index(r["dataset"]))
    layers = {n: {"layers_run": hl.max_layer + 1, "heads": len(hl.heads)} for n, hl in lists.items()}
    out = {"model": spec.name, "chosen": chosen, "lists": layers, "results": results}  # timing: the timings stage
    _test_file(spec).write_text(json.dumps(out, indent=1) + "\n")
    written = [_test_file(spec)]
    for method in ("core", "qr"):
        written.append(lists[method].save(_candidate_file(spec, method)))
    log(f"{spec.key} test: wrote " + ", ".join(str(Path(p).relative_to(ROOT)) for p in written))


def stage_timings(args, spec: ModelSpec) -> None:
    """Seconds per query of the ENGINE (Reranker.rank, 20 SciFact test candidates of 200 tokens) with all heads
    and each timed list: the model is cut after the list's deepest layer, so this is what a layer budget buys."""
    import torch

    from core_rerank import Reranker
    from core_rerank.research.datasets import first_stage, load_dataset

    test = json.loads(_test_file(spec).read_text())
    lists = {n: hl for n, hl in _lists(args, spec).items() if n == "core" or n.startswith("core_L")}
    torch.set_num_threads(args.threads)
    ds = load_dataset(DATA / "scifact", "test")
    cands, _ = first_stage(ds)
    queries = [q for q in ds.query_ids if q in cands][:TIMING_QUERIES]
    docs = {q: [ds.doc_text(d) for d in cands[q].doc_ids[:DEPTH] if d in ds.corpus] for q in queries}
    timing = {}
    for name, spec_heads in [("icr", "all"), *lists.items()]:
        rr = Reranker(model=spec.engine, heads=spec_heads, max_doc_tokens=MAX_DOC_TOKENS)
        rr.rank(ds.queries[queries[0]], docs[queries[0]])  # warm-up
        t0 = time.perf_counter()
        for q in queries:
            rr.rank(ds.queries[q], docs[q])
        timing[name] = {
            "layers_run": rr.loaded_model.layers_loaded,
            "seconds_per_query": round((time.perf_counter() - t0) / len(queries), 3),
        }
        log(f"{spec.key} timing {name}: {timing[name]}")
    out = {k: v for k, v in test.items() if k not in ("timing", "results")}
    out |= {"timing": timing, "results": test["results"]}
    _test_file(spec).write_text(json.dumps(out, indent=1) + "\n")


def _tested_core_list(spec: ModelSpec) -> tuple[Path, bool]:
    """The CoRe list the test stage evaluated, and whether it is the bundled one: the candidate under
    benchmarks/results/ when it exists and differs from the bundled list, else the bundled list."""
    from core_rerank import load_head_list

    cand, bundled = _candidate_file(spec, "core"), _bundled_file(spec, "core")
    if cand.is_file() and not (bundled.is_file() and load_head_list(cand).heads == load_head_list(bundled).heads):
        return cand, False
    return bundled, True


def _head_map(spec: ModelSpec) -> Path:
    return ROOT / "docs" / f"heads_{spec.key}_core.png"


def stage_maps(args, spec: ModelSpec) -> None:
    from core_rerank import load_head_list
    from core_rerank.research.plots import plot_head_map

    path, _ = _tested_core_list(spec)
    hl = load_head_list(path)
    if hl.score_matrix is None:
        log(f"{spec.key} maps: {path.relative_to(ROOT)} has no score matrix, no head map")
        return
    plot_head_map(hl, _head_map(spec))
    log(f"{spec.key} maps: wrote {_head_map(spec).relative_to(ROOT)} from {path.relative_to(ROOT)}")


# ----------------------------------------------------------------- report
def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def render_report() -> str:
    """docs/quality.md as rendered from the JSON results of every model (models without results are noted,
    not shown); the page's hand-written "## Findings" section is kept."""
    from core_rerank.research.report import ModelResults, findings_section, render_quality_report

    models = []
    for spec in MODELS.values():
        path, bundled = _tested_core_list(spec)
        models.append(
            ModelResults(
                key=spec.key,
                name=spec.name,
                head_list=path.relative_to(ROOT).as_posix(),
                dev=_read(_dev_file(spec)),
                test=_read(_test_file(spec)),
                bundled=bundled,
                head_map=_head_map(spec).name if _head_map(spec).is_file() else None,
            )
        )
    doc = ROOT / "docs" / "quality.md"
    findings = findings_section(doc.read_text()) if doc.is_file() else None
    return render_quality_report(
        models, timing_queries=TIMING_QUERIES, findings=findings, behind_retriever=_behind_retriever()
    )


def _behind_retriever() -> str | None:
    """The issue-10 pipeline study (`studies.order_analysis`) as a section of this page, from its JSON."""
    study = _read(RESULTS / "order_study.json")
    if study is None:
        return None
    from .order_report import render_models, render_targets

    test = study["parts"]["test"]
    rows = [
        ("first-stage order", "first_stage"),
        ("re-ranked (first-stage order in)", "core"),
        ("re-ranked + the retriever's scores (fused)", "core + first-stage scores"),
        ("shuffled input (the attention alone)", "core@shuffled"),
    ]
    lines = [
        "## Behind the retriever (the pipelines users run)",
        "",
        "Full protocol, variants and calibration: [retriever_study.md](retriever_study.md) (`studies.order_analysis`).",
        "Default model, test (" + study["counts"]["test"] + "): documents passed best first from BM25 or from",
        "all-MiniLM-L6-v2 over the same top-100 pool; nDCG@10 (paired difference to the first-stage order ± s.e.).",
        "",
        "| ranking | behind BM25 | behind dense |",
        "|---|---:|---:|",
    ]
    for label, key in rows:
        cells = []
        for pool in ("bm25", "dense"):
            r = test[pool].get(key)
            cells.append(
                "-"
                if r is None
                else f"{r['ndcg']:.3f}"
                + ("" if key == "first_stage" else f" ({r['vs_first_stage']:+.3f} ± {r['se']:.3f})")
            )
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    lines += [line.replace("## ", "### ", 1) if line.startswith("## ") else line for line in render_targets(study)]
    lines += [line.replace("## ", "### ", 1) if line.startswith("## ") else line for line in render_models(study)]
    return "\n".join(lines)


def stage_report(args) -> None:
    text = render_report()
    (ROOT / "docs" / "quality.md").write_text(text)
    log("wrote docs/quality.md")


MODEL_STAGES = ("detect", "dev", "test", "timings", "maps")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", choices=["all", *MODEL_STAGES, "report"], default="all")
    ap.add_argument("--model", action="append", choices=list(MODELS), help="default: every model")
    ap.add_argument("--work", type=Path, default=Path.home() / ".cache" / "core-rerank" / "quality")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-dev", type=int, default=50, help="queries per dev set")
    ap.add_argument("--fresh", action="store_true", help="detect / dev: recompute cached masses and runs")
    args = ap.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    specs = []
    if args.stage != "report":
        from core_rerank.packaged import find_packaged

        for key in args.model or list(MODELS):
            packaged = find_packaged(MODELS[key].engine)
            if packaged is not None and not packaged.installed() and args.stage != "maps":
                log(f"{key}: skipped, {packaged.model_id} is not installed ({packaged.install})")
                continue
            specs.append(MODELS[key])
    for stage in MODEL_STAGES:
        if args.stage in ("all", stage):
            for spec in specs:
                if stage == "detect" and not args.fresh and (_work(args, spec) / "detection.npz").is_file():
                    log(f"{spec.key} detect: cached ({_work(args, spec) / 'detection.npz'})")
                    continue
                if stage == "maps" and not _test_file(spec).is_file():
                    continue
                globals()[f"stage_{stage}"](args, spec)
    if args.stage in ("all", "report"):
        stage_report(args)


if __name__ == "__main__":
    main()
