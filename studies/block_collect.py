"""Issue 20 study, forward passes: both attention modes over the same candidates, every head captured.

    python -m studies.block_collect --part train|test [--per-set N] [--heads NAME=PATH ...] [--work DIR]
    python -m studies.block_collect --part test --per-set 1 --model quality --lite   # the "quality" model, BM25 only
    python -m studies.block_report                   # tables, relevance maps, ECE (seconds, from the pickles)

For each sampled query (``studies.protocol``: train fits, test reports) and its candidate pools (``bm25``: the split's
BM25 run top 20; ``dense``: the same top-100 pool re-ordered by all-MiniLM-L6-v2, top 20), scored on the default
model with the union of the bundled CoRe and QR lists and any ``--heads`` list (each scored from the same passes,
exactly as ``Reranker(heads=that_list).score`` computes it; ICR's every-head capture is left out: it would double the
time), every other setting as shipped:

- ``full``: today's prompt, passed best first (``fs``) and, behind BM25, in a seeded shuffle (``shuf``);
- ``block``: ``attention="block"`` (order-free: scored once, in first-stage order);
- the first 10 and 5 BM25 candidates again in both modes (``fs`` order): lists of other sizes, for the relevance
  map and its calibration per list size.

``--part train`` runs the BM25 pools only (what the relevance map is fitted on); ``--lite`` runs only the BM25 pool at
depth 20 (full best first and shuffled, block), for slow models; ``--model`` scores another model with its bundled
lists (stored as WORK/<part>.<model>.pkl). Stored in WORK/<part>.pkl
(resumable, a record per query; not committed): labels, both first stages' scores, each document's token count
after the cut, and per run (mode, pool, placement, list size) the raw scores of every head set.
"""

from __future__ import annotations

import argparse
import pickle
import random
import time
from pathlib import Path

from . import DATA
from .order_collect import candidates, pool_order
from .protocol import DEPTH, MAX_DOC_TOKENS, parts

SIZES = (10, 5)  # shorter lists (BM25 top n, best first) scored besides the depth-20 pools


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def runs_of(part: str, lite: bool = False) -> list[tuple[str, str, str, int]]:
    """The (mode, pool, placement, list size) runs of every query of a part."""
    runs = [("full", "bm25", "fs", DEPTH), ("block", "bm25", "fs", DEPTH)]
    if lite:
        return [*runs, ("full", "bm25", "shuf", DEPTH)]
    if part != "train":
        runs += [("full", "bm25", "shuf", DEPTH), ("full", "dense", "fs", DEPTH), ("block", "dense", "fs", DEPTH)]
    runs += [(mode, "bm25", "fs", n) for n in SIZES for mode in ("full", "block")]
    return runs


def collect(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    from core_rerank.heads import find_bundled_head_list, load_head_list
    from core_rerank.research.datasets import first_stage
    from core_rerank.research.evaluation import DenseScorer, evaluation_reranker
    from core_rerank.settings import EngineSettings

    suffix = "" if args.model == "default" else f".{args.model.replace('/', '_')}"
    out_path = args.work / f"{args.part}{suffix}.pkl"
    store = pickle.loads(out_path.read_bytes()) if out_path.is_file() else {}
    settings = EngineSettings(model=args.model, max_doc_tokens=MAX_DOC_TOKENS)
    model_id = evaluation_reranker(settings, heads=None).model_id
    sets = {m: list(find_bundled_head_list(model_id, m).heads) for m in ("core", "qr")}
    for spec in args.heads or ():
        name, _, path = spec.partition("=")
        sets[name] = list(load_head_list(path).heads)
    # The union of the compared sets only (not every head): the pass stops at their deepest layer.
    union = sorted({h for heads in sets.values() for h in heads})
    engines = {
        "full": evaluation_reranker(settings, heads=union),
        "block": evaluation_reranker(settings.replace(attention="block"), heads=union),
    }
    dense = DenseScorer()
    todo = parts(args.part, args.per_set, data=args.data)
    firsts = {ds.name: first_stage(ds)[0] for ds, _, _ in todo}
    # Round-robin over the data sets: a run cut short still covers every set.
    jobs = sorted(((k, ds, q) for ds, qids, _ in todo for k, q in enumerate(qids)), key=lambda j: j[0])
    t0, fresh = time.perf_counter(), 0
    for done, (_, ds, qid) in enumerate(jobs, 1):
        key = (ds.name, qid)
        if key in store:
            continue
        rec = candidates(ds, qid, firsts[ds.name], dense)
        if rec is None:
            continue
        texts = {d: ds.doc_text(d) for d in rec["bm25"]}
        rec["set"], rec["runs"], rec["tokens"] = f"{ds.name}/{ds.split}", {}, {}
        for mode, pool, place, n in runs_of(args.part, args.lite):
            ids = pool_order(pool, rec)[:n]
            if place == "shuf":
                ids = list(ids)
                random.Random(f"{ds.name}/{qid}/{pool}").shuffle(ids)
            rr = engines[mode]
            docs = rr.prepare([texts[d] for d in ids])
            rec["tokens"].update({d: doc.tokens for d, doc in zip(ids, docs)})
            scores = rr.score_head_sets(rec["query"], [texts[d] for d in ids], sets)
            rec["runs"][(mode, pool, place, n)] = {"doc_ids": ids, "scores": scores}
        store[key] = rec
        fresh += 1
        if fresh % 2 == 0 or done == len(jobs):
            out_path.write_bytes(pickle.dumps(store))
            rate = (time.perf_counter() - t0) / fresh
            log(f"{args.part}: {done}/{len(jobs)} queries ({rate:.1f} s per new query)")
    out_path.write_bytes(pickle.dumps(store))
    (args.work / f"sets{suffix}.pkl").write_bytes(pickle.dumps(sets))
    log(f"kv cache: {engines['block'].loaded_model.kv_cache.stats().to_dict()}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=["train", "dev", "test"], default="test")
    p.add_argument("--per-set", type=int, default=6)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--model", default="default", help="the model (a preset such as quality, an id or a directory)")
    p.add_argument("--lite", action="store_true", help="BM25 top 20 only: full best first and shuffled, block")
    p.add_argument("--heads", nargs="*", help="more head sets as NAME=PATH (head-list JSON of the default model)")
    p.add_argument("--work", type=Path, default=Path("/work/block_study"), help="where the collected passes go")
    p.add_argument("--data", type=Path, default=DATA, help="the labelled data sets (../shared/data)")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    collect(args)


if __name__ == "__main__":
    main()
