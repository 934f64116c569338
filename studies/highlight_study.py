"""Issue 21 item 5: the quality of the engine's sentence highlights and pruning, on real sentence labels.

    python -m studies.highlight_study --split dev [--hotpot N] [--wikiqa N] [--work DIR]   # collect + dev choices
    python -m studies.highlight_study --split test [--hotpot N] [--wikiqa N] [--work DIR]  # collect + test tables
    python -m studies.highlight_study --picture docs/highlights_example.png                # one question's PNG
    python -m studies.highlight_study --tables                                             # docs/highlights.md's tables

Labels (the engine's own sentence split, :func:`core_rerank.highlights.sentence_spans`, makes the units every method
prunes):

- WikiQA (wikiqa_tok dev / test): each question's candidate sentences, in order, are one Wikipedia summary; they
  are joined with a space into one document, and a labelled (score 1) candidate sentence is kept when kept units
  cover at least half of its characters. The list is that one document ("all": nothing to re-rank).
- HotpotQA (hotpotqa_distractor_dev500, its only split, halved by a hash of the query id into dev and test): the
  10 candidate paragraphs ("all 10") and the engine's re-ranked top 5 of them ("top 5": every method prunes the
  same five). Labelled units: the sentences of a gold paragraph (title line excluded) holding an answer string
  (case-insensitive); yes/no questions and questions whose answer is in no gold sentence are dropped (counted).

Methods, all pruned by :func:`core_rerank.highlights.select` (best first while they fit the kept-token budget, each
document keeps its best unit) with the same token counts: ``engine`` (``Reranker()``: the bundled CoRe heads),
``icr`` (every head), ``qr`` (the bundled QR list), ``lead`` (first units first), ``bm25`` (BM25 of each unit,
IDF over the units of the list), ``minilm`` (all-MiniLM-L6-v2 cosine of unit and query). Metrics per query:
recall of labelled sentences, whether the answer survives (HotpotQA: an answer string in the kept text; WikiQA: a
labelled sentence kept), kept tokens / all tokens. Dev chooses the ranking rule of the attention scores (``sum``:
a unit's score, what ``compress`` ships; ``density``: score per token, which ``compress`` does not offer) and the
budget scope (document, ``compress``'s default / list); test reports paired differences engine - baseline (mean,
standard error, n) under the dev pick.

Forward passes are cached per query in WORK/<set>.<split>.pkl (resumable); the report is seconds from the cache.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import pickle
import platform
import re
import subprocess
import time
from collections import Counter
from pathlib import Path

from core_rerank.highlights import Highlight, select, sentence_spans, token_budget
from core_rerank.research.metrics import mean_se, paired

from . import DATA, ROOT

HEADS = ROOT / "core_rerank" / "head_lists"
MODEL_FILE = "HuggingFaceTB__SmolLM2-135M-Instruct"
ENGINES = {"engine": None, "icr": "all", "qr": str(HEADS / f"{MODEL_FILE}.qr.json")}
BASELINES = ("icr", "qr", "lead", "bm25", "minilm")
METHODS = ("engine", *BASELINES)
KEEPS = (0.25, 0.5)
TOP = 5
COVER = 0.5  # a labelled WikiQA sentence is kept when kept units cover this share of its characters


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def read_jsonl(path: Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def half(qid: str) -> str:
    """HotpotQA's deterministic dev / test half of a query id."""
    return "dev" if int(hashlib.sha256(qid.encode()).hexdigest(), 16) % 2 == 0 else "test"


# ---------------------------------------------------------------------------------------------------- labels
def wikiqa_rows(data: Path, split: str) -> list[dict]:
    """One row per question: its document (candidate sentences joined by a space), the candidates' character
    spans and which are labelled."""
    root = data / "wikiqa_tok"
    queries = {q["_id"]: q["text"] for q in read_jsonl(root / "queries.jsonl")}
    corpus = {d["_id"]: d["text"] for d in read_jsonl(root / "corpus.jsonl")}
    labels: dict[str, dict[str, int]] = {}
    for line in (root / "qrels" / f"{split}.tsv").read_text().splitlines()[1:]:
        q, d, s = line.split("\t")
        labels.setdefault(q, {})[d] = int(s)
    rows = []
    for c in read_jsonl(root / f"candidates_{split}.jsonl"):
        q = c["query_id"]
        if q not in labels or not any(labels[q].values()):
            continue
        spans, at, parts = [], 0, []
        for d in c["candidates"]:
            text = corpus[d].strip()
            spans.append((at, at + len(text)))
            parts.append(text)
            at += len(text) + 1
        doc = " ".join(parts)
        gold = [s for d, s in zip(c["candidates"], spans) if labels[q].get(d, 0) > 0]
        rows.append({"qid": q, "query": queries[q], "docs": [{"id": q, "text": doc}], "gold": [gold], "cands": spans})
    return rows


def boundary_match(text: str, cands: list[tuple[int, int]]) -> tuple[int, int]:
    """(candidate sentences whose span is exactly one unit of the engine's split, candidates)."""
    units = set(sentence_spans(text))
    return sum(tuple(c) in units for c in cands), len(cands)


def hotpot_rows(data: Path, split: str) -> tuple[list[dict], Counter]:
    """One row per kept question of the split's half: its 10 paragraphs ("Title\\nText", as the engine joins a
    document), answers, and per paragraph the labelled units' spans; plus why the others were dropped."""
    root = data / "hotpotqa_distractor_dev500"
    corpus = {d["_id"]: d for d in read_jsonl(root / "corpus.jsonl")}
    gold: dict[str, set[str]] = {}
    for line in (root / "qrels" / "test.tsv").read_text().splitlines()[1:]:
        q, d, s = line.split("\t")
        if int(s) > 0:
            gold.setdefault(q, set()).add(d)
    cands = {c["query_id"]: c["candidates"] for c in read_jsonl(root / "candidates_test.jsonl")}
    rows, dropped = [], Counter()
    for q in read_jsonl(root / "queries.jsonl"):
        if half(q["_id"]) != split:
            continue
        dropped["questions"] += 1
        answers = [a for a in q["metadata"]["answers"] if a.strip()]
        if not answers or all(a.strip().lower() in ("yes", "no") for a in answers):
            dropped["yes/no answer"] += 1
            continue
        docs, labelled = [], []
        for d in cands[q["_id"]]:
            title, text = corpus[d]["title"], corpus[d]["text"]
            joined = f"{title}\n{text}" if title else text
            docs.append({"id": d, "text": joined, "gold": d in gold.get(q["_id"], set())})
            spans = []
            if d in gold.get(q["_id"], set()):
                body = len(joined) - len(text)
                for a, b in sentence_spans(joined):
                    if a >= body and any(x.lower() in joined[a:b].lower() for x in answers):
                        spans.append((a, b))
            labelled.append(spans)
        if not any(labelled):
            dropped["answer in no gold sentence"] += 1
            continue
        rows.append({"qid": q["_id"], "query": q["text"], "docs": docs, "gold": labelled, "answers": answers})
    return rows, dropped


# ---------------------------------------------------------------------------------------------------- collect
def collect(rows: list[dict], path: Path, threads: int) -> dict[str, dict]:
    """Per query: each engine variant's order and unit scores, the units, token totals and MiniLM cosines."""
    import torch
    from tqdm import tqdm

    torch.set_num_threads(threads)
    from core_rerank import Reranker
    from core_rerank.research.evaluation import DenseScorer

    store: dict[str, dict] = pickle.loads(path.read_bytes()) if path.exists() else {}
    todo = [r for r in rows if r["qid"] not in store]
    if not todo:
        return store
    engines = {name: Reranker(heads=h) for name, h in ENGINES.items()}
    dense = DenseScorer()
    for n, row in enumerate(tqdm(todo, desc=path.stem, unit="q")):
        texts = [d["text"] for d in row["docs"]]
        rec: dict = {"order": {}, "scores": {}, "seconds": {}}
        for name, rr in engines.items():
            t = time.perf_counter()
            res = rr.rank(row["query"], texts, highlights=True)
            rec["seconds"][name] = time.perf_counter() - t
            by_doc = sorted(res, key=lambda r: r.index)
            assert [r.text for r in by_doc] == texts
            rec["order"][name] = [r.index for r in res]
            rec["scores"][name] = [[h.score for h in r.highlights] for r in by_doc]
            if name == "engine":
                totals = [r.compression.tokens for r in sorted(rr.prune(res, keep=1.0), key=lambda r: r.index)]
                rec["units"] = [[(h.start, h.end, h.tokens, h.truncated) for h in r.highlights] for r in by_doc]
                rec["totals"] = totals
            else:  # same text, same split: the units must agree
                assert [[(h.start, h.end) for h in r.highlights] for r in by_doc] == [
                    [u[:2] for u in us] for us in rec["units"]
                ]
        units = [texts[i][a:b] for i, us in enumerate(rec["units"]) for a, b, _, _ in us]
        cos = dense.score(row["query"], units) if units else []
        it = iter(cos)
        rec["scores"]["minilm"] = [[next(it) for _ in us] for us in rec["units"]]
        store[row["qid"]] = rec
        if n % 20 == 19 or n == len(todo) - 1:
            path.write_bytes(pickle.dumps(store))
    return store


# ---------------------------------------------------------------------------------------------------- pruning
_WORD = re.compile(r"\w+")


def bm25(query: str, units: list[str], k1: float = 1.5, b: float = 0.75) -> list[float]:
    """Okapi BM25 of each unit for ``query``, the IDF (Lucene's, always positive) over ``units``."""
    toks = [_WORD.findall(u.lower()) for u in units]
    n = len(toks)
    avg = sum(map(len, toks)) / n if n else 0.0
    df = Counter(w for t in toks for w in set(t))
    q = _WORD.findall(query.lower())
    out = []
    for t in toks:
        tf = Counter(t)
        s = 0.0
        for w in q:
            if tf[w]:
                idf = math.log(1 + (n - df[w] + 0.5) / (df[w] + 0.5))
                s += idf * tf[w] * (k1 + 1) / (tf[w] + k1 * (1 - b + b * len(t) / (avg or 1)))
        out.append(s)
    return out


def unit_scores(row: dict, rec: dict, method: str, docs: list[int], rule: str) -> list[list[float]]:
    """Each unit's score under ``method`` for the documents ``docs`` (indices into the row's documents)."""
    units = rec["units"]
    if method == "lead":
        return [[-float(k) for k in range(len(units[i]))] for i in docs]
    if method == "bm25":
        texts = [row["docs"][i]["text"][a:b] for i in docs for a, b, _, _ in units[i]]
        it = iter(bm25(row["query"], texts))
        return [[next(it) for _ in units[i]] for i in docs]
    scores = rec["scores"][method]
    if method in ENGINES and rule == "density":
        return [[s / max(u[2], 1) for s, u in zip(scores[i], units[i])] for i in docs]
    return [list(scores[i]) for i in docs]


def prune_query(row: dict, rec: dict, method: str, docs: list[int], keep: float, scope: str, rule: str) -> dict:
    """The metrics of one query's pruning: recall of labelled sentences, answer kept, kept-token ratio."""
    scores = unit_scores(row, rec, method, docs, rule)
    hl = [
        [Highlight(a, b, "", s, t, tr) for (a, b, t, tr), s in zip(rec["units"][i], sc)] for i, sc in zip(docs, scores)
    ]
    totals = [rec["totals"][i] for i in docs]
    budgets = token_budget(keep, sum(totals)) if scope == "list" else [token_budget(keep, t) for t in totals]
    keep_flags = select(hl, budgets, None)
    kept_tokens = sum(h.tokens for d, k in zip(hl, keep_flags) for h, f in zip(d, k) if f)
    kept_spans = {i: [(h.start, h.end) for h, f in zip(d, k) if f] for i, d, k in zip(docs, hl, keep_flags)}
    labelled = recalled = 0
    for i, spans in enumerate(row["gold"]):
        for a, b in spans:
            labelled += 1
            cover = sum(max(0, min(b, y) - max(a, x)) for x, y in kept_spans.get(i, ()))
            recalled += cover >= COVER * (b - a)
    if "answers" in row:
        text = " ".join(row["docs"][i]["text"][x:y] for i in docs for x, y in kept_spans[i]).lower()
        answer = any(a.lower() in text for a in row["answers"])
    else:
        answer = recalled > 0
    return {"recall": recalled / labelled, "answer": float(answer), "kept": kept_tokens / max(sum(totals), 1)}


def settings_of(name: str) -> list[str]:
    return ["all"] if name == "wikiqa" else ["all", f"top{TOP}"]


def evaluate(name: str, rows: list[dict], store: dict, rule: str, scope: str) -> dict:
    """{setting: {keep: {method: {metric: {qid: value}}}}}."""
    out: dict = {}
    for setting in settings_of(name):
        for keep in KEEPS:
            cell = out.setdefault(setting, {}).setdefault(str(keep), {})
            for method in METHODS:
                m = cell.setdefault(method, {"recall": {}, "answer": {}, "kept": {}})
                for row in rows:
                    rec = store[row["qid"]]
                    n = len(row["docs"])
                    docs = list(range(n)) if setting == "all" else sorted(rec["order"]["engine"][:TOP])
                    r = prune_query(row, rec, method, docs, keep, scope, rule)
                    for k, v in r.items():
                        m[k][row["qid"]] = v
    return out


def table(per_query: dict) -> dict:
    """Means (with s.e.) per method and the paired differences engine - baseline."""
    out: dict = {}
    for setting, by_keep in per_query.items():
        for keep, by_method in by_keep.items():
            cell = {}
            for method, metrics in by_method.items():
                cell[method] = {k: mean_se(list(v.values())).round() for k, v in metrics.items()}
            diffs = {}
            for b in BASELINES:
                diffs[b] = {}
                for k in ("recall", "answer"):
                    p = paired(by_method["engine"][k], by_method[b][k])
                    diffs[b][k] = {
                        "diff": round(p.mean, 4),
                        "se": None if p.se is None else round(p.se, 4),
                        "n": p.n,
                        "better/worse/tied": [p.better, p.worse, p.tied],
                    }
            out.setdefault(setting, {})[keep] = {"means": cell, "engine_minus": diffs}
    return out


# ---------------------------------------------------------------------------------------------------- tables
NAMES = {
    "engine": "**engine** (CoRe heads)",
    "icr": "ICR (every head)",
    "qr": "QR heads",
    "lead": "lead-k",
    "bm25": "BM25",
    "minilm": "all-MiniLM-L6-v2",
}
CELLS = (
    ("wikiqa", "all", "WikiQA test, the whole summary"),
    ("hotpotqa", "all", "HotpotQA test half, all 10 paragraphs"),
    ("hotpotqa", f"top{TOP}", f"HotpotQA test half, the engine's top {TOP}"),
)


def markdown(report: dict) -> tuple[str, str]:
    """docs/highlights.md's tables of a report: (the dev grid of the engine's recall, the test tables: per set,
    scope and budget, each method's means ± s.e. and the paired engine - method differences, bold past 2 s.e.)."""

    def ms(v: list) -> str:
        return f"{v[0]:.3f} ± {v[1]:.3f}"

    def diff(v: dict) -> str:
        s = f"{v['diff']:+.3f} ± {v['se']:.3f}"
        return f"**{s}**" if v["diff"] > 2 * v["se"] else s

    grid = report["dev"]["grid"]
    rules = list(grid)
    dev = ["| engine recall on dev: set / scope / kept | " + " | ".join(rules) + " |", "|---|" + "---|" * len(rules)]
    for key in [k for k in grid[rules[0]] if k.endswith("/engine")]:
        dev.append(f"| {key.removesuffix('/engine')} | " + " | ".join(f"{grid[r][key]:.3f}" for r in rules) + " |")
    dev.append(
        "| mean of the six | " + " | ".join(f"{grid[r]['engine mean recall over cells']:.3f}" for r in rules) + " |"
    )
    out = []
    for name, setting, title in CELLS:
        for keep, cell in report["test"]["tables"][name][setting].items():
            n = cell["means"]["engine"]["recall"][2]
            out += [f"**{title}, {round(float(keep) * 100)}% of tokens** ({n} questions)", ""]
            out += ["| method | labelled recall | engine − method | answer survives | engine − method | tokens kept |"]
            out += ["|---|---|---|---|---|---|"]
            for m in METHODS:
                mm = cell["means"][m]
                if m == "engine":
                    cols = [f"**{ms(mm['recall'])}**", "", ms(mm["answer"]), ""]
                else:
                    e = cell["engine_minus"][m]
                    cols = [ms(mm["recall"]), diff(e["recall"]), ms(mm["answer"]), diff(e["answer"])]
                line = f"| {NAMES[m]} | " + " | ".join(cols) + f" | {mm['kept'][0]:.3f} |"
                out.append(re.sub(r"\|  (?=\|)", "| ", line))
            out.append("")
    return "\n".join(dev) + "\n", "\n".join(out)


# ---------------------------------------------------------------------------------------------------- picture
def picture(path: Path, data: Path, qid: str | None = None, shown: int = 3, keep: float = 0.5) -> dict:
    """A PNG of the engine's highlights on one real HotpotQA test question: ``Reranker().rank(query, its paragraphs,
    highlights=True)``, the top ``shown`` paragraphs with every sentence shaded by its score (one scale for all:
    scores of a call compare), the labelled (answer-bearing) sentences outlined, and a check mark on the
    sentences ``Reranker.prune(top, keep=keep)`` keeps (what ``compress(top_n=shown, keep=keep)`` ships: one
    budget over the paragraphs shown, sentences by score per token). ``qid``: the question (default: the first
    of the test half, in the study's hash order, whose labelled paragraph the engine ranks in its top ``shown``;
    the first of all has it 6th). Returns what it drew."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import Normalize

    from core_rerank import Reranker

    rows, _ = hotpot_rows(data, "test")
    rows = sorted(rows, key=lambda r: hashlib.sha256(r["qid"].encode()).hexdigest())
    rr = Reranker()
    for row in rows if qid is None else [r for r in rows if r["qid"] == qid]:
        texts = [d["text"] for d in row["docs"]]
        res = rr.rank(row["query"], texts, highlights=True)
        if qid or any(row["gold"][r.index] for r in list(res)[:shown]):
            break
    top = list(res)[:shown]
    pruned = rr.prune(top, keep=keep)
    scores = [h.score for r in top for h in r.highlights]
    norm = Normalize(min(scores), max(scores))
    cmap = plt.get_cmap("YlOrRd")
    width, line, gap = 128, 0.19, 0.55  # characters a line; inches a line; lines between boxes
    blocks = []  # (kind, payload, lines)
    for rank, (r, p) in enumerate(zip(top, pruned), 1):
        gold = row["docs"][r.index]["gold"]
        head = f"#{rank}  score {r.attention_score:.2f}   {'gold paragraph' if gold else 'distractor'}"
        head += f"   kept {p.compression.kept_tokens}/{p.compression.tokens} tokens"
        blocks.append(("head", head, 1.0))
        for k, h in enumerate(r.highlights):
            wrapped = textwrap.wrap(h.text, width) or [""]
            labelled = any(a == h.start and b == h.end for a, b in row["gold"][r.index])
            blocks.append(("unit", (wrapped, h.score, labelled, k in p.compression.kept), len(wrapped) + gap))
        blocks.append(("space", None, 0.6))
    total = 4.4 + sum(n for _, _, n in blocks)
    fig = plt.figure(figsize=(11, total * line + 0.3), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, 1)
    ax.set_ylim(total, 0)
    ax.axis("off")
    ax.text(0.015, 0.4, f"Q: {row['query']}", fontsize=11, weight="bold", va="top")
    ax.text(
        0.015,
        1.6,
        f"answer: {' / '.join(row['answers'])}.   Reranker().rank(query, its {len(texts)} paragraphs, "
        f"highlights=True): the top {shown}.\nShading: the sentence's score (one scale for all);  outlined: the "
        f"labelled (answer-bearing) sentence.\n\u2714: kept by compress(keep={keep}) (the shipped rule: one "
        f"budget over these {shown} paragraphs, sentences by score per token).",
        fontsize=8.5,
        va="top",
        color="dimgray",
    )
    y = 4.4
    for kind, payload, n in blocks:
        if kind == "head":
            ax.text(0.015, y, payload, fontsize=9.5, weight="bold", va="top", color="navy")
        elif kind == "unit":
            wrapped, s, labelled, kept = payload
            box = {
                "boxstyle": "square,pad=0.25",
                "facecolor": cmap(0.03 + 0.62 * norm(s)),
                "edgecolor": "navy" if labelled else "none",
                "linewidth": 1.8,
            }
            ax.text(0.045, y, "\n".join(wrapped), fontsize=9, va="top", bbox=box, linespacing=1.25)
            ax.text(0.018, y, "\u2714" if kept else "", fontsize=10, va="top", color="darkgreen")
            ax.text(0.99, y, f"{s:+.2f}", fontsize=8, va="top", ha="right", color="dimgray")
        y += n
    fig.savefig(path)
    plt.close(fig)
    from PIL import Image

    with Image.open(path) as im:  # a 128-colour palette: the same picture at a third of the size
        im.convert("RGB").quantize(128).save(path, optimize=True)
    return {
        "qid": row["qid"],
        "query": row["query"],
        "shown": [
            {"rank": k + 1, "gold": row["docs"][r.index]["gold"], "sentences": len(r.highlights)}
            for k, r in enumerate(top)
        ],
    }


# ---------------------------------------------------------------------------------------------------- main
def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def load(split: str, args) -> dict:
    """Rows (sampled) and cached records of both sets of a split, with the label statistics."""
    wiki = wikiqa_rows(args.data, split)[: args.wikiqa or None]
    hot, dropped = hotpot_rows(args.data, split)
    hot = sorted(hot, key=lambda r: hashlib.sha256(r["qid"].encode()).hexdigest())[: args.hotpot or None]
    args.work.mkdir(parents=True, exist_ok=True)
    sets = {}
    for name, rows in (("wikiqa", wiki), ("hotpotqa", hot)):
        store = collect(rows, args.work / f"{name}.{split}.pkl", args.threads)
        sets[name] = (rows, store)
    match = [boundary_match(r["docs"][0]["text"], r["cands"]) for r in wiki]
    stats = {
        "wikiqa": {
            "queries": len(wiki),
            "labelled sentences": sum(len(r["gold"][0]) for r in wiki),
            "candidate sentences that are exactly one engine unit": [
                sum(a for a, _ in match),
                sum(b for _, b in match),
            ],
            "documents split exactly at the candidate boundaries": sum(a == b for a, b in match),
        },
        "hotpotqa": {
            "half": split,
            **dict(dropped),
            "queries": len(hot),
            "labelled sentences": sum(len(s) for r in hot for s in r["gold"]),
            "both gold paragraphs in the engine's top 5": sum(
                all(
                    i in sets["hotpotqa"][1][r["qid"]]["order"]["engine"][:TOP]
                    for i, d in enumerate(r["docs"])
                    if d["gold"]
                )
                for r in hot
            ),
            "truncated paragraphs (max_doc_tokens)": sum(
                any(u[3] for u in us) for r in hot for us in sets["hotpotqa"][1][r["qid"]]["units"]
            ),
        },
    }
    return {"sets": sets, "stats": stats}


def dev_choices(loaded: dict) -> dict:
    """Mean engine recall per (rule, scope) on dev, each set and setting, and the pick (the best mean over all)."""
    grid = {}
    for rule in ("sum", "density"):
        for scope in ("document", "list"):
            cells = {}
            for name, (rows, store) in loaded["sets"].items():
                pq = evaluate(name, rows, store, rule, scope)
                for setting, by_keep in pq.items():
                    for keep, by_method in by_keep.items():
                        for method in ("engine", "icr", "qr"):
                            v = mean_se(list(by_method[method]["recall"].values())).mean
                            cells[f"{name}/{setting}/{keep}/{method}"] = round(v, 4)
            eng = [v for k, v in cells.items() if k.endswith("/engine")]
            grid[f"{rule}/{scope}"] = {"engine mean recall over cells": round(sum(eng) / len(eng), 4), **cells}
    pick = max(grid, key=lambda k: grid[k]["engine mean recall over cells"])
    return {"grid": grid, "pick": pick}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", choices=("dev", "test"), help="collect and write the split's part of --out")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--work", type=Path, default=Path("/work/hl_study"))
    ap.add_argument("--hotpot", type=int, default=0, help="HotpotQA questions of the half (0: all)")
    ap.add_argument("--wikiqa", type=int, default=0, help="WikiQA questions of the split (0: all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rule", choices=("sum", "density"), help="test: default the dev pick in --out")
    ap.add_argument("--scope", choices=("document", "list"), help="test: default the dev pick in --out")
    ap.add_argument(
        "--picture",
        type=Path,
        default=None,
        help="only draw a PNG of one HotpotQA test question's highlights (one rank call, no collection)",
    )
    ap.add_argument("--picture-qid", default=None, help="the question --picture draws (default: the first)")
    ap.add_argument("--tables", action="store_true", help="only print docs/highlights.md's tables from --out")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "highlights_quality.json")
    args = ap.parse_args()
    if args.tables:
        print(*markdown(json.loads(args.out.read_text())), sep="\n")
        return
    if args.picture:
        import torch

        torch.set_num_threads(args.threads)
        drawn = picture(args.picture, args.data, args.picture_qid)
        log(f"wrote {args.picture} ({args.picture.stat().st_size // 1024} KB): {drawn}")
        return
    if not args.split:
        ap.error("--split is required (or --picture, or --tables)")
    loaded = load(args.split, args)
    report = json.loads(args.out.read_text()) if args.out.exists() else {}
    if args.split == "dev":
        report["dev"] = {"stats": loaded["stats"], **dev_choices(loaded)}
        log(f"dev pick: {report['dev']['pick']}")
    else:
        pick = report.get("dev", {}).get("pick", "sum/document")
        rule, scope = args.rule or pick.split("/")[0], args.scope or pick.split("/")[1]
        tables = {}
        for name, (rows, store) in loaded["sets"].items():
            tables[name] = table(evaluate(name, rows, store, rule, scope))
        secs = {
            n: {m: round(sum(store[r["qid"]]["seconds"][m] for r in rows) / max(len(rows), 1), 3) for m in ENGINES}
            for n, (rows, store) in loaded["sets"].items()
        }
        report["test"] = {"rule": rule, "scope": scope, "stats": loaded["stats"], "tables": tables, "seconds": secs}
    import torch

    from core_rerank import EngineSettings
    from core_rerank.loading import resolve_device, resolve_dtype

    settings = EngineSettings()
    device = resolve_device(settings.device)
    report["setup"] = {
        "model": "HuggingFaceTB/SmolLM2-135M-Instruct (Reranker() default, bundled CoRe heads)",
        "dtype": f"{str(resolve_dtype(settings.dtype, device)).removeprefix('torch.')} on {device} "
        "(what Reranker() picks here)",
        "max_doc_tokens": settings.max_doc_tokens,
        "cpu": cpu_name(),
        "torch": torch.__version__,
        "threads": args.threads,
        "budget rule": "core_rerank.highlights.select: best first while they fit, each document keeps its best unit "
        "(best: the unit's score, or score per token under the density rule)",
        "command": f"python -m studies.highlight_study --split {args.split} --hotpot {args.hotpot} "
        f"--wikiqa {args.wikiqa} --threads {args.threads}",
    }
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
