"""docs/retriever_study.md from the order study's results (``studies.order_analysis``): the targets judged per model
and configuration, every method's table, the other models, the windows and token-weighting sections. Pure: a
report dict in, Markdown out."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from . import ROOT

RESULTS = ROOT / "benchmarks" / "results"
MIN_PER_SET = 5  # queries per test set before "below BM25 on a set by more than its s.e." is judged


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


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
    """Shorter lists per prompt (`studies.window`, dev): the engine's round-robin windows."""
    if not w:
        return []
    lines = [
        f"## Shorter lists per prompt ({w['part']}, {w['queries']} queries, BM25 top 20, default model)",
        "",
        "The same 20 candidates scored as one prompt or dealt round-robin into shorter prompts (the engine's",
        "windows, `max_tokens`); `python -m studies.window`. s/query measured while other jobs shared the 2 cores:",
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
    """Query- and document-token weighting: dev chose, test reported. The method was not kept, and its code (and
    study script) went with it; its results stay here, read from benchmarks/results/token_weight_study.json."""
    if not tw:
        return []
    lines = [
        "## Token weighting (ReAttn-style, arXiv 2602.19969)",
        "",
        "Each query token's own attention row was kept (a capture option, removed with the method) and the query",
        "signal becomes a weighted mean of the rows instead of the plain mean: `q-entropy` weights a token by",
        "1 - H/log n of its attention over the n candidates (0 when it attends alike to every document), `q-idf` by",
        "log(n / df) (df = documents drawing at least an even share); `d-idf` scales each document token by its",
        "cross-candidate IDF. Nothing is fitted. Default model, bundled CoRe heads, the protocol above. Not kept:",
        "its code and study script were removed (CHANGELOG.md); these are the results they gave.",
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
        "relevance map.",
        "",
    ]
    return lines


def render(report: dict, counts: dict) -> str:
    """docs/retriever_study.md from the study's JSON (a pure function of it)."""
    lines = [
        "# Behind the retriever: what the attention adds, and what makes it robust",
        "",
        "Generated by `python -m studies.order_analysis` from `benchmarks/results/order_study.json`",
        "(the forward passes: `python -m studies.order_collect --part train|dev|test`).",
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
    lines += render_windows(read_json(RESULTS / "window_study.json"))
    lines += render_token_weights(read_json(RESULTS / "token_weight_study.json"))
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
