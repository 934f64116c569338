"""Issue 10 study: what the attention reads behind the retrievers users run, and what makes it robust.

    python -m studies.order_collect --part train|dev|test [--per-set N]   # forward passes (slow)
    python -m studies.order_analysis                                      # everything else (seconds)

``collect`` runs the default model once per (query, candidate pool, placement) with EVERY head captured and
stores, per document and head, the query-row attention mass, the N/A-row mass and the engine's N/A-contrasted,
masked score (``Reranker.head_scores``), with both first stages' scores, in
WORK/<part>.pkl (resumable; not committed: tens of MB). Pools: ``bm25`` = the split's BM25 run (or candidate
pool ordered by bm25s) top 20; ``dense`` = the same top-100 pool re-ordered by all-MiniLM-L6-v2, top 20.
Placements (the engine's default ``order="reverse"`` applied to the input order): ``fs`` = first-stage order in
(best candidate nearest the query), ``rev`` = reversed in (best farthest), ``shuf`` = seeded shuffle.

Data discipline: train = the detection part of SciFact train (75% of its queries, the same seeded split as
head detection) + WikiQA train: fits calibration, position bias and fusion weights. dev = the held-out 25% of
SciFact train + NFCorpus dev: every choice. test = the shared test splits: the tables only (``studies.protocol``).
"""

from __future__ import annotations

import argparse
import pickle
import random
import time
from pathlib import Path

from . import DATA
from .protocol import DEPTH, MAX_DOC_TOKENS, parts


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def per_head_scores(rr, sig):
    """(heads, docs) arrays of one prompt: query mass, N/A mass, and each head's own N/A-contrasted, masked score
    (the engine's formula per head, ``Reranker.head_scores``)."""
    import numpy as np

    q, n = sig.signals.query, sig.signals.null
    qm = np.stack([q[:, a:b].sum(1).numpy() for a, b in sig.doc_spans], axis=1)
    nm = np.stack([n[:, a:b].sum(1).numpy() for a, b in sig.doc_spans], axis=1)
    cal = rr.head_scores(sig.signals, sig).numpy()
    return qm.astype("float32"), nm.astype("float32"), cal.astype("float32")


def candidates(ds, qid: str, first: dict, dense) -> dict | None:
    """One query's record: its text, labels and both first stages' scores over its candidate pool (None when
    the pool is empty). ``first``: the data set's first-stage candidates; ``dense``: a DenseScorer."""
    c = first.get(qid)
    ids = [d for d in (c.doc_ids if c else []) if d in ds.corpus]
    if not ids:
        return None
    query = ds.queries[qid]
    dn = dict(zip(ids, dense.score(query, [ds.doc_text(d) for d in ids])))
    bm = {d: s for d, s in zip(c.doc_ids, c.scores) if d in ds.corpus}
    return {"query": query, "qrels": dict(ds.qrels.get(qid, {})), "bm25": bm, "dense": dn}


def pool_order(pool: str, rec: dict) -> list[str]:
    """The top DEPTH candidates of a pool, best first: BM25's own order, or the pool re-ordered by dense score."""
    ids = list(rec["bm25"])
    return ids[:DEPTH] if pool == "bm25" else sorted(ids, key=lambda d: -rec["dense"][d])[:DEPTH]


def placement(place: str, n: int, seed: str) -> list[int]:
    """Which first-stage index goes to each prompt position (position 0 = farthest from the query)."""
    if place == "fs":
        return list(range(n))[::-1]
    if place == "rev":
        return list(range(n))
    perm = list(range(n))
    random.Random(seed).shuffle(perm)
    return perm


def collect(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    from core_rerank.research.evaluation import DenseScorer, evaluation_reranker
    from core_rerank.settings import EngineSettings

    suffix = ("" if args.shard is None else f"-{args.shard}") + ("-" + "+".join(args.sets) if args.sets else "")
    work = model_work(args)
    out_path = work / f"{args.part}{suffix}.pkl"
    store = pickle.loads(out_path.read_bytes()) if out_path.is_file() else {}
    # The default model: every head (ICR and QR are scored from the same passes). Other models: their bundled
    # CoRe heads only, so the pass stops at the deepest selected layer (a 1.5B model in minutes, not hours).
    heads = "all" if args.model == "default" else None
    settings = EngineSettings(model=args.model, order="given", max_doc_tokens=MAX_DOC_TOKENS)
    rr = evaluation_reranker(settings, heads=heads)
    dense = DenseScorer()
    from core_rerank.heads import find_bundled_head_list
    from core_rerank.research.datasets import first_stage

    row = {h: i for i, h in enumerate(rr.head_list.heads)}
    set_rows = {"icr": list(range(len(row)))} if heads == "all" else {}
    for method in ("core", "qr") if heads == "all" else ("core",):
        set_rows[method] = [row[h] for h in find_bundled_head_list(rr.model_id, method).heads]

    todo = [t for t in parts(args.part, args.per_set, args.shard, args.data) if not args.sets or t[0].name in args.sets]
    if not todo:
        raise SystemExit(f"--sets {args.sets}: none of the part's data sets")
    done = 0
    t0 = time.perf_counter()
    firsts = {ds.name: first_stage(ds)[0] for ds, _, _ in todo}
    # Round-robin over the data sets (query 1 of every set, then query 2, ...): a run cut short still
    # covers every set.
    jobs = [(k, ds, qid, pools) for ds, qids, pools in todo for k, qid in enumerate(qids)]
    jobs.sort(key=lambda j: j[0])
    if args.shard is not None and args.part != "test":  # test shards by data set (in parts()), others by query
        jobs = jobs[args.shard :: 2]
    total = len(jobs)
    for _, ds, qid, pools in jobs:
        cands = firsts[ds.name]
        done += 1
        key = (ds.name, qid)
        if key in store and "sets" in next(iter(store[key]["pools"].values()), {}):
            continue
        rec = candidates(ds, qid, cands, dense)
        if rec is None:
            continue
        texts = {d: ds.doc_text(d) for d in rec["bm25"]}
        query = rec["query"]
        rec["pools"] = {}
        for pool, places in pools.items():
            order = pool_order(pool, rec)
            docs = rr.prepare([texts[d] for d in order])
            for place in places:
                placed = placement(place, len(order), f"{ds.name}/{qid}/{pool}")
                sig = rr.attention_signals(query, [docs[i].scored_text for i in placed])
                qm, nm, cal = per_head_scores(rr, sig)
                sets = {name: rr.window_scores(sig.signals, sig, rows) for name, rows in set_rows.items()}
                inv = [0] * len(placed)
                for pos, i in enumerate(placed):
                    inv[i] = pos
                # columns back in first-stage order; pos = placement position (0 = farthest from the query)
                rec["pools"][(pool, place)] = {
                    "doc_ids": order,
                    "pos": inv,
                    "tokens": [sig.doc_spans[inv[i]][1] - sig.doc_spans[inv[i]][0] for i in range(len(order))],
                    "qm": qm[:, inv],
                    "nm": nm[:, inv],
                    "cal": cal[:, inv],
                    "sets": {name: [v[j] for j in inv] for name, v in sets.items()},
                }
        store[key] = rec
        if done % 2 == 0 or done == total:
            out_path.write_bytes(pickle.dumps(store))
            rate = (time.perf_counter() - t0) / max(1, done)
            log(f"{args.part}: {done}/{total} queries ({rate:.1f} s/query incl. skipped)")
    out_path.write_bytes(pickle.dumps(store))
    (work / "heads.pkl").write_bytes(pickle.dumps(list(rr.head_list.heads)))


def model_work(args) -> Path:
    """Where a model's collected passes go: WORK itself for the default model, WORK/<model> for others."""
    work = args.work if args.model == "default" else args.work / args.model.replace("/", "__")
    work.mkdir(parents=True, exist_ok=True)
    return work


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=["train", "dev", "test"], default="dev")
    p.add_argument("--per-set", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--shard", type=int, choices=[0, 1], help="half the work, for 2 processes")
    p.add_argument("--work", type=Path, default=Path("/work/study"), help="where the collected passes go")
    p.add_argument("--data", type=Path, default=DATA, help="the labelled data sets (../shared/data)")
    p.add_argument("--sets", nargs="+", help="only these data sets of the part (WORK/<part>-<sets>.pkl)")
    p.add_argument("--model", default="default", help="a packaged model name or id (CoRe heads only)")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    collect(args)


if __name__ == "__main__":
    main()
