"""The one command that writes the bundled head lists (core_rerank/head_lists/*.json); nothing else does.

    python -m studies.bundle fingerprints [--model NAME ...]   # each packaged model's weight fingerprint
    python -m studies.bundle fits [--report benchmarks/results/order_study.json]   # relevance maps, fusion weights
    python -m studies.bundle heads --model KEY [KEY ...]       # the quality study's evaluated lists, bundled
    python -m studies.bundle relevance [--report benchmarks/results/block_study.json]   # per-mode relevance maps

``fingerprints`` records, in every bundled list of a packaged model, the fingerprint of its weights
(:mod:`core_rerank.recognition`), read from the packaged GGUF file's input embedding, so ``Reranker.from_model``
recognises the model however it was loaded. ``fits`` stores what the order study fitted on train and chose on dev
(``studies.order_analysis``) in each model's bundled CoRe list: the relevance map and the fusion weight, each with
the engine settings it was made with (``max_doc_tokens``, ``order``: the study's). ``heads`` makes the CoRe and QR
lists the quality study evaluated on test (``studies.quality``, benchmarks/results/quality_heads_<key>.*.json) the
bundled ones; a list whose heads change loses its relevance map and fusion weight (fitted for the old heads: run
the order study and ``fits`` again). ``relevance`` stores the relevance maps ``studies.block_report`` fitted on train
for each attention mode (``relevance_map``, ``block_relevance_map``) in the default model's bundled CoRe list.
Review the diff before committing.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from core_rerank.heads import FIT_SETTINGS, FusionWeight, HeadList, RelevanceMap, bundled_head_lists

from . import ROOT

HEAD_LISTS = ROOT / "core_rerank" / "head_lists"
STUDY_SETTINGS = {"max_doc_tokens": 200, "order": "reverse"}
"""The engine settings the studies score with (first-stage order in, best nearest the query); must cover
``FIT_SETTINGS``."""
assert sorted(STUDY_SETTINGS) == sorted(FIT_SETTINGS)


def list_path(hl: HeadList) -> Path:
    return HEAD_LISTS / hl.origin.removeprefix("bundled:")


def write(hl: HeadList) -> Path:
    path = hl.save(list_path(hl))
    print("wrote", path.relative_to(ROOT))
    return path


# ---------------------------------------------------------------------- fingerprints
def gguf_embedding(path: Path) -> Any:
    """The input-embedding matrix of a GGUF file (``token_embd.weight``), dequantized, as (vocab, hidden)."""
    import numpy as np
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(str(path))
    (tensor,) = [t for t in reader.tensors if t.name == "token_embd.weight"]
    values = dequantize(tensor.data, tensor.tensor_type)
    rows = int(tensor.shape[-1])  # GGUF lists the fastest-varying dimension first
    return np.asarray(values, dtype=np.float32).reshape(rows, -1)


def fingerprints(names: list[str] | None) -> None:
    """Record each packaged model's fingerprint in all its bundled lists (skipping models not installed)."""
    from core_rerank.packaged import PACKAGED_MODELS
    from core_rerank.recognition import embedding_fingerprint
    from core_rerank.sources import cache_dir

    for model in PACKAGED_MODELS.values():
        if names and model.name not in names:
            continue
        found = model.locate(cache_dir())
        if found is None:
            print(f"skipped {model.name}: not installed ({model.install})")
            continue
        fp = embedding_fingerprint(gguf_embedding(found[0]))
        for hl in bundled_head_lists():
            if hl.model_id == model.model_id:
                write(replace(hl, fingerprint=fp))


# ---------------------------------------------------------------------- relevance maps and fusion weights
def _core_list(model_id: str) -> HeadList:
    (hl,) = [h for h in bundled_head_lists() if h.model_id == model_id and h.method == "core"]
    return hl


def fitted_lists(report: dict) -> list[HeadList]:
    """The bundled CoRe lists with the order study's train-fitted relevance maps and dev-chosen fusion weights (its
    JSON's ``bundle`` section; a model whose map came from ``core-rerank calibrate`` keeps it, only its fusion weight
    is the study's)."""
    out = []
    for model_id, fit in report["bundle"].items():
        hl = _core_list(model_id)
        fusion = FusionWeight(fit["fusion"]["weight"], STUDY_SETTINGS, fit["fusion"]["chosen_on"])
        relevance = hl.relevance_map
        if fit.get("relevance") is not None:
            r = fit["relevance"]
            info = {k: v for k, v in r.items() if k not in ("a", "b", "fitted_on")}
            relevance = RelevanceMap(round(r["a"], 6), round(r["b"], 6), STUDY_SETTINGS, r["fitted_on"], info)
        out.append(replace(hl, relevance_map=relevance, fusion=fusion))
    return out


def fits(report_path: Path) -> None:
    """Store :func:`fitted_lists` of a study report in the bundled lists."""
    for hl in fitted_lists(json.loads(report_path.read_text(encoding="utf-8"))):
        write(hl)


def relevance(report_path: Path) -> None:
    """Store the per-mode relevance maps of a ``studies.block_report`` report in the model's bundled CoRe list."""
    report = json.loads(report_path.read_text(encoding="utf-8"))
    hl = _core_list(report["model"])
    maps = {}
    for mode, slot in (("full", "relevance_map"), ("block", "block_relevance_map")):
        entry = report["relevance"][mode]
        data = dict(entry["map"])
        test = entry["test"]["all"]
        data["ece_test"] = test["ece"]
        data["note"] = f"form {entry['form']!r} chosen by cross-validated log loss on train; ECE on test {test['ece']}"
        maps[slot] = RelevanceMap.from_dict(data, f"{report_path.name}: {mode}")
    write(replace(hl, **maps))


def heads(keys: list[str]) -> None:
    """Bundle the evaluated candidate lists of the quality study for the models ``keys``."""
    from core_rerank.heads import load_head_list

    from .quality import MODELS, RESULTS

    for key in keys:
        spec = MODELS[key]
        for method in ("core", "qr"):
            candidate = load_head_list(RESULTS / f"quality_heads_{key}.{method}.json")
            target = HEAD_LISTS / f"{spec.list_stem}.{method}.json"
            old = load_head_list(target) if target.is_file() else None
            keep = old is not None and old.heads == candidate.heads
            fingerprint = old.fingerprint if old is not None else None
            if old is not None and not keep and (old.relevance_map or old.fusion):
                print(f"{target.name}: its heads change: its relevance map and fusion weight are dropped")
            bundled = replace(
                candidate,
                relevance_map=old.relevance_map if keep else None,
                fusion=old.fusion if keep else None,
                fingerprint=fingerprint,
            )
            bundled.save(target)
            print("wrote", target.relative_to(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    fp = sub.add_parser("fingerprints", help="record each packaged model's weight fingerprint")
    fp.add_argument("--model", nargs="*", help="packaged model names (default: every installed one)")
    ft = sub.add_parser("fits", help="store the order study's relevance maps and fusion weights")
    ft.add_argument("--report", type=Path, default=ROOT / "benchmarks" / "results" / "order_study.json")
    hd = sub.add_parser("heads", help="bundle the quality study's evaluated CoRe and QR lists")
    hd.add_argument("--model", nargs="+", required=True, help="quality study model keys (smollm2, qwen, ...)")
    rl = sub.add_parser("relevance", help="store the block study's per-mode relevance maps")
    rl.add_argument("--report", type=Path, default=ROOT / "benchmarks" / "results" / "block_study.json")
    args = ap.parse_args()
    if args.what == "relevance":
        relevance(args.report)
    elif args.what == "fingerprints":
        fingerprints(args.model)
    elif args.what == "fits":
        fits(args.report)
    else:
        heads(args.model)


if __name__ == "__main__":
    main()
