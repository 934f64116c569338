"""Engine speed and memory, as ratios against baselines run on the same machine and prompt.

    python benchmarks/bench_engine.py [--docs 20 50] [--repeats 3] [--json benchmarks/results/engine.json]
                                      [--batch-queries 8] [--batch-docs 20] [--batch-json ...engine_batch.json]

For each list size (documents of ~150 tokens), on the embedded default model (SmolLM2-135M-Instruct):
  (a) ``Reranker.rank`` with a mid-depth head list (deepest head in layer 14 of 30: the model is cut
      to 15 layers), and with all heads (ICR, no truncation);
  (b) a bare SDPA forward of the same truncated model on the same prompt (no capture, no N/A contrast);
  (c) the ICR reference way: full model, eager attention, ``output_attentions=True``, all heads,
      both the query and the "N/A" prompt run in full, scores computed from the returned matrices.
Times are medians of repeats in one process (a and b interleaved, then c). Peak extra memory is measured in a fresh
subprocess per case: the peak resident set size during the call minus the size just before it.

Many queries over one list (``--batch-queries`` queries of different lengths over ``--batch-docs`` documents, same
reranker as (a) mid): ``rank_batch(queries, docs)``, which runs each window's document prefix and N/A pass once and
only each query's suffix per query, against one ``rank()`` call per query, interleaved; the speed-up ratio and the
largest raw-score difference between the two (issue 10: >= 4x, <= 1e-4). Then how each suffix starts from the
prefix's KV cache, cropping it back (no copy) against a deep copy, on the same prompts. ``--docs`` with no sizes runs
only this case.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

MID_HEADS = [(10, 2), (11, 5), (12, 0), (12, 7), (13, 3), (13, 8), (14, 1), (14, 4)]
QUERY = "Does vitamin D supplementation reduce the risk of respiratory infections?"
BATCH_QUERIES = [  # 1 to 16 words: suffixes of different lengths
    QUERY,
    "statins and muscle pain",
    "Is obesity associated with a higher risk of type 2 diabetes in adolescents?",
    "BRCA1",
    "Which gene mutations make breast cancer cells resistant to tamoxifen treatment, and through which pathway?",
    "smoking lung cancer",
    "Does aspirin lower the risk of colorectal cancer?",
    "How do T cells recognise antigens presented by MHC class I molecules on infected cells?",
]
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "scifact" / "corpus.jsonl"


def example_documents() -> list[str]:
    """The example documents of examples/data/docs.jsonl (short real text), as the engine scores them."""
    path = Path(__file__).resolve().parents[1] / "examples" / "data" / "docs.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [f"{r['title']}\n{r['text']}" for r in rows]


def documents(n: int) -> list[str]:
    """n real documents (SciFact abstracts when ../shared/data is there), each cut to ~150 tokens."""
    texts: list[str] = []
    if SHARED.is_file():
        with open(SHARED, encoding="utf-8") as fh:
            for line in fh:
                row = json.loads(line)
                texts.append(f"{row['title']}\n{row['text']}")
                if len(texts) == n:
                    break
    else:
        short = example_documents()
        while len(texts) < n:
            texts.append(" ".join(short[len(texts) % len(short) :] + short))
    return [" ".join(t.split()[:115]) for t in texts[:n]]  # ~115 words ~ 150 tokens


def rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Samples the resident set size every millisecond while the block runs."""

    def __enter__(self):
        self.base = self.peak = rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss())
            time.sleep(0.001)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss())

    @property
    def extra_mb(self) -> float:
        return (self.peak - self.base) / 2**20


class Cases:
    """The three ways of scoring one list, sharing loaded models."""

    def __init__(self):
        import torch

        from core_rerank import Reranker

        torch.manual_seed(0)
        self.torch = torch
        self.mid = Reranker(heads=MID_HEADS, max_doc_tokens=160)

    @functools.cached_property
    def all(self):
        from core_rerank import Reranker

        return Reranker(heads="all", max_doc_tokens=160)

    @functools.cached_property
    def eager(self):
        from transformers import AutoModel

        from core_rerank.sources import dense_directory

        return AutoModel.from_pretrained(
            dense_directory(self.mid.source), attn_implementation="eager", dtype=self.mid.dtype
        ).eval()

    def a_mid(self, docs):
        return self.mid.rank(QUERY, docs)

    def a_all(self, docs):
        return self.all.rank(QUERY, docs)

    def b_sdpa(self, docs):
        w_ids = self._ids(docs, QUERY)
        with self.torch.inference_mode():
            self.mid.loaded_model.model(input_ids=self.torch.tensor([w_ids]), use_cache=False)

    def c_icr_eager(self, docs):
        from core_rerank import scoring

        placed = docs[::-1]
        signals = []
        for q in (QUERY, "N/A"):
            ids, rows, spans = self._layout(placed, q)
            with self.torch.inference_mode():
                att = self.eager(input_ids=self.torch.tensor([ids]), output_attentions=True).attentions
            assert att and att[0] is not None
            signals.append(sum(a[0, :, rows[0] : rows[1], :].float().mean(dim=1).sum(0) for a in att))
            del att
        key_end = max(b for _, b in spans)
        return scoring.document_scores(signals[0][:key_end], signals[1][:key_end], spans)

    def _layout(self, placed, query):
        # The engine's own prompt and tokenization, so the baselines read exactly what it reads.
        w = self.mid.prompt(query, placed)
        return w.ids_query, w.query_rows, w.doc_spans

    def _ids(self, docs, query):
        return self._layout(docs[::-1], query)[0]


NAMES = ["a_mid", "a_all", "b_sdpa", "c_icr_eager"]


def eager_attention_bytes(cases: Cases, tokens: int) -> int:
    """Memory the eager reference needs just for its returned attention matrices (L x H x N^2)."""
    cfg = cases.eager.config
    return cfg.num_hidden_layers * cfg.num_attention_heads * tokens * tokens * cases.eager.dtype.itemsize


def available_bytes() -> int:
    with open("/proc/meminfo") as fh:
        info = dict(line.split(":", 1) for line in fh)
    return int(info["MemAvailable"].split()[0]) * 1024


def worker(case: str, n: int) -> None:
    """Subprocess: peak extra memory of one case (after a warm-up run)."""
    cases = Cases()
    docs = documents(n)
    getattr(cases, case)(docs)
    with PeakRSS() as peak:
        getattr(cases, case)(docs)
    print(json.dumps({"extra_mb": peak.extra_mb}))


def batch_case(cases: Cases, n_queries: int, n_docs: int, repeats: int) -> dict:
    """rank_batch over one shared list against one rank() per query (interleaved, same reranker), and crop
    against copy for the suffix passes."""
    from core_rerank import head_signal

    rr = cases.mid
    queries = (BATCH_QUERIES * (1 + n_queries // len(BATCH_QUERIES)))[:n_queries]
    docs = documents(n_docs)

    def shared():
        return rr.rank_batch(queries, docs, show_progress_bar=False)

    def one_by_one():
        return [rr.rank(q, docs) for q in queries]

    times = {"rank_batch": [], "rank_each": []}
    got, want = shared(), one_by_one()  # warm-up, and the results compared
    for _ in range(repeats):
        for name, fn in (("rank_batch", shared), ("rank_each", one_by_one)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    diff = max(abs(g.by_index(i).score - w.by_index(i).score) for g, w in zip(got, want) for i in range(len(docs)))
    same_order = all(g.indices == w.indices for g, w in zip(got, want))

    placed = [d.scored_text for d in rr.placed(rr.prepare(docs))]  # one window: the whole list fits max_tokens
    windows = [rr.prompt(q, placed) for q in queries]
    args = (
        rr.loaded_model.model,
        rr.head_list.heads_by_layer,
        [head_signal.PromptTokens(w.ids_query, w.query_rows) for w in windows],
        head_signal.PromptTokens(windows[0].ids_null, windows[0].null_rows),
        max(b for _, b in windows[0].doc_spans),
    )
    reuse = {"copy": [], "crop": []}
    for mode in reuse:  # warm-up
        head_signal.head_signals_many(*args, cache_reuse=mode)
    for _ in range(repeats):
        for mode in reuse:
            t0 = time.perf_counter()
            head_signal.head_signals_many(*args, cache_reuse=mode)
            reuse[mode].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in (times | reuse).items()}
    return {
        "queries": n_queries,
        "documents": n_docs,
        "prompt_tokens": len(windows[0].ids_null),
        "windows": got[0].num_windows,
        "seconds": {"rank_batch": med["rank_batch"], "rank_each": med["rank_each"]},
        "speedup": med["rank_each"] / med["rank_batch"],
        "max_abs_score_difference": diff,
        "same_order": same_order,
        "suffix_cache_seconds": {"copy": med["copy"], "crop": med["crop"]},
        "crop/copy time": med["crop"] / med["copy"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, nargs="*", default=[20, 50])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "engine.json")
    ap.add_argument("--batch-queries", type=int, default=8, help="queries of the shared-list case (0: skip it)")
    ap.add_argument("--batch-docs", type=int, default=20)
    ap.add_argument("--batch-json", type=Path, default=Path(__file__).parent / "results" / "engine_batch.json")
    ap.add_argument("--worker", nargs=2, metavar=("CASE", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker[0], int(args.worker[1]))

    from rich.console import Console
    from rich.table import Table

    console = Console()
    cases = Cases()
    report = {"model": cases.mid.model_id, "mid_heads": MID_HEADS, "dtype": str(cases.mid.dtype), "sizes": {}}
    for n in args.docs:
        docs = documents(n)
        tokens = len(cases._ids(docs, QUERY))
        names = list(NAMES)
        need = eager_attention_bytes(cases, tokens)
        if need > 0.6 * available_bytes():  # the reference would be killed: say so instead of running it
            names.remove("c_icr_eager")
            console.print(f"c_icr_eager skipped: its attention matrices alone need {need / 2**30:.1f} GiB")
        times = {k: [] for k in names}
        # The fast cases are interleaved; the eager reference (gigabytes of attention matrices)
        # runs after them, so its freed memory does not slow the others down.
        for group in (names[:3], names[3:]):
            for name in group:  # warm-up
                getattr(cases, name)(docs)
            for _ in range(args.repeats):
                for name in group:
                    t0 = time.perf_counter()
                    getattr(cases, name)(docs)
                    times[name].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in times.items()}
        mem = {}
        for name in names:
            out = subprocess.run(
                [sys.executable, __file__, "--worker", name, str(n)], capture_output=True, text=True, check=True
            )
            mem[name] = json.loads(out.stdout.strip().splitlines()[-1])["extra_mb"]
        report["sizes"][n] = {
            "prompt_tokens": tokens,
            "seconds": med,
            "extra_mb": mem,
            "eager_attention_gib": need / 2**30,
        }
        table = Table(title=f"{n} documents, {tokens} prompt tokens ({cases.mid.model_id}, {cases.mid.dtype})")
        for col in ("case", "time s", "extra MB"):
            table.add_column(col, justify="right")
        for name in NAMES:
            if name in names:
                table.add_row(name, f"{med[name]:.2f}", f"{mem[name]:.0f}")
            else:
                table.add_row(name, "out of memory", f"> {need / 2**20:.0f}")
        console.print(table)
        ratios = {"a_mid/b_sdpa time": med["a_mid"] / med["b_sdpa"]}
        if "c_icr_eager" in names:
            ratios["c_icr_eager/a_mid time"] = med["c_icr_eager"] / med["a_mid"]
            ratios["c_icr_eager/a_mid extra memory"] = mem["c_icr_eager"] / max(mem["a_mid"], 1e-9)
            ratios["c_icr_eager/a_all time"] = med["c_icr_eager"] / med["a_all"]
        report["sizes"][n]["ratios"] = ratios
        for k, v in ratios.items():
            console.print(f"  {k}: {v:.2f}")
    if args.docs:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
        console.print(f"written {args.json}")
    if args.batch_queries > 0:
        batch = batch_case(cases, args.batch_queries, args.batch_docs, args.repeats)
        sec = batch["seconds"]
        console.print(
            f"{batch['queries']} queries over one {batch['documents']}-document list ({batch['prompt_tokens']} prompt "
            f"tokens, {batch['windows']} window(s)): rank_batch {sec['rank_batch']:.2f} s, {batch['queries']} x rank "
            f"{sec['rank_each']:.2f} s: speed-up {batch['speedup']:.2f}x (target >= 4); largest score difference "
            f"{batch['max_abs_score_difference']:.3g} (target <= 1e-4), same order: {batch['same_order']}"
        )
        reuse = batch["suffix_cache_seconds"]
        console.print(
            f"  suffix passes from the prefix cache: crop {reuse['crop']:.2f} s, deep copy {reuse['copy']:.2f} s "
            f"(crop/copy {batch['crop/copy time']:.2f})"
        )
        report = {"model": cases.mid.model_id, "mid_heads": MID_HEADS, "dtype": str(cases.mid.dtype), **batch}
        args.batch_json.parent.mkdir(parents=True, exist_ok=True)
        args.batch_json.write_text(json.dumps(report, indent=1) + "\n")
        console.print(f"written {args.batch_json}")


if __name__ == "__main__":
    main()
