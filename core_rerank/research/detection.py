"""Head detection: find the CoRe heads (and QR heads) of a model from labelled data (docs/method.md, section 4).

For each detection sample (a query, one relevant passage and hard negatives, the positive at a seeded
random position) and every head (l, h) of the model, one prompt is run and, WITHOUT the N/A contrast::

    s_lh(d)  = sum over j in T_d of a_lh(j)
    SCoRe_lh = exp(s_lh(pos)/tau) / sum over d in {pos} + negs of exp(s_lh(d)/tau)
    QR_lh    = s_lh(pos)                                  (mass on the positive, no contrast)

Both are averaged over samples; the top-k heads form the list. The per-sample mass matrices are kept
(:class:`DetectionResult`), so tau and k can be swept afterwards without re-running the model.

Sample builders (:func:`build_samples`) read the BEIR-layout folders of ../shared/data:
hard negatives are the best-ranked non-relevant documents of the split's first stage (BM25 run, or the
candidate pool of WikiQA). Never detect on an evaluation split.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..heads import HeadList
from ..prompt import cut_to_tokens
from .datasets import Dataset, first_stage, load_dataset

__all__ = [
    "DetectionResult",
    "DetectionSample",
    "build_samples",
    "collect_masses",
    "core_scores",
    "make_head_list",
    "qr_scores",
    "split_queries",
    "truncate_texts",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DetectionSample:
    """One prompt: ``texts`` in prompt order, ``positive`` the index of the relevant one."""

    source: str
    query_id: str
    query: str
    texts: tuple[str, ...]
    positive: int


def split_queries(query_ids: Sequence[str], held_out: float, seed: int = 0) -> tuple[list[str], list[str]]:
    """A seeded, deterministic split of ``query_ids`` into (detection part, held-out part)."""
    ids = sorted(query_ids)
    random.Random(seed).shuffle(ids)
    n_out = round(len(ids) * held_out)
    held = set(ids[:n_out])
    return [q for q in query_ids if q not in held], [q for q in query_ids if q in held]


def build_samples(
    ds: Dataset,
    query_ids: Sequence[str] | None = None,
    n_negatives: int = 9,
    max_samples: int | None = None,
    seed: int = 0,
    min_negatives: int = 2,
) -> list[DetectionSample]:
    """Detection samples of a labelled split: per query its best-graded relevant document among the
    first-stage candidates (else its first relevant document), and the ``n_negatives`` best-ranked
    first-stage candidates that are not judged relevant; the positive goes to a seeded random position."""
    cands, _ = first_stage(ds)
    rng = random.Random(seed)
    qids = list(query_ids if query_ids is not None else ds.query_ids)
    samples = []
    for q in qids:
        rel = ds.qrels.get(q, {})
        positives = [d for d, g in rel.items() if g > 0 and d in ds.corpus]
        if not positives or q not in cands:
            continue
        pool = cands[q].doc_ids
        in_pool = [d for d in pool if rel.get(d, 0) > 0]
        best = max(in_pool or positives, key=lambda d: (rel[d], -pool.index(d) if d in pool else -1e9))
        negs = [d for d in pool if rel.get(d, 0) <= 0 and d in ds.corpus][:n_negatives]
        if len(negs) < min_negatives:
            continue
        pos_at = rng.randrange(len(negs) + 1)
        docs = [*negs[:pos_at], best, *negs[pos_at:]]
        samples.append(
            DetectionSample(f"{ds.name}/{ds.split}", q, ds.queries[q], tuple(ds.doc_text(d) for d in docs), pos_at)
        )
        if max_samples is not None and len(samples) >= max_samples:
            break
    return samples


def truncate_texts(tokenizer: Any, texts: Sequence[str], max_doc_tokens: int) -> list[str]:
    """Each text cut to its first ``max_doc_tokens`` tokens exactly as the engine's Reranker cuts it,
    so detection and evaluation prompts equal the engine's prompts."""
    return [kept for kept, _, _ in cut_to_tokens(tokenizer, texts, max_doc_tokens)]


@dataclass
class DetectionResult:
    """Per-sample document masses of every head: ``masses[i]`` is (num_heads_total, n_docs_i)."""

    model_id: str
    num_layers: int
    num_heads: int
    num_kv_heads: int
    heads: list[tuple[int, int]]
    masses: list[np.ndarray]
    positives: list[int]
    sources: list[str]
    settings: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | Path) -> None:
        meta = {
            k: getattr(self, k)
            for k in ("model_id", "num_layers", "num_heads", "num_kv_heads", "heads", "positives", "sources")
        }
        meta["settings"] = self.settings
        arrays = {f"m{i}": m for i, m in enumerate(self.masses)}
        np.savez_compressed(path, meta=np.array(json.dumps(meta)), **arrays)

    @classmethod
    def load(cls, path: str | Path) -> DetectionResult:
        with np.load(path) as z:
            meta = json.loads(str(z["meta"]))
            masses = [z[f"m{i}"] for i in range(len(meta["positives"]))]
        heads = [tuple(h) for h in meta.pop("heads")]
        return cls(heads=heads, masses=masses, **meta)

    def below_layer(self, layers: int) -> DetectionResult:
        """The same samples with only the heads of the first ``layers`` layers: lists made from it let
        the engine drop every later layer (a layer budget for speed)."""
        if layers < 1:
            raise ValueError(f"layers must be >= 1, got {layers}")
        rows = [i for i, (layer, _) in enumerate(self.heads) if layer < layers]
        return DetectionResult(
            self.model_id,
            self.num_layers,
            self.num_heads,
            self.num_kv_heads,
            [self.heads[i] for i in rows],
            [m[rows] for m in self.masses],
            list(self.positives),
            list(self.sources),
            {**self.settings, "max_layers": layers},
        )

    def subset(self, keep: Callable[[str], bool]) -> DetectionResult:
        idx = [i for i, s in enumerate(self.sources) if keep(s)]
        return DetectionResult(
            self.model_id,
            self.num_layers,
            self.num_heads,
            self.num_kv_heads,
            self.heads,
            [self.masses[i] for i in idx],
            [self.positives[i] for i in idx],
            [self.sources[i] for i in idx],
            dict(self.settings),
        )


def collect_masses(
    reranker: Any,
    samples: Sequence[DetectionSample],
    max_doc_tokens: int = 256,
    progress: Callable[[int, int], None] | None = None,
) -> DetectionResult:
    """Run every sample through ``reranker`` (normally ``Reranker(model, heads="all")``) and keep, per
    head, the attention mass of each document (no N/A contrast). Prompts hold the texts in sample order."""
    hl = reranker.head_list
    tok = reranker.loaded_model.tokenizer
    masses, positives, sources = [], [], []
    t0 = time.perf_counter()
    for n, s in enumerate(samples):
        texts = truncate_texts(tok, s.texts, max_doc_tokens)
        w = reranker.attention_signals(s.query, texts)
        sig = w.signals.query
        m = np.stack([sig[:, a:b].sum(1).double().numpy() for a, b in w.doc_spans], axis=1)
        masses.append(m.astype(np.float32))
        positives.append(s.positive)
        sources.append(s.source)
        if progress is not None:
            progress(n + 1, len(samples))
    settings = {
        "max_doc_tokens": max_doc_tokens,
        "attention": reranker.settings.attention,
        "seconds": round(time.perf_counter() - t0, 1),
        "dtype": str(reranker.dtype),
    }
    return DetectionResult(
        reranker.model_id,
        hl.num_layers,
        hl.num_heads,
        hl.num_kv_heads,
        list(hl.heads),
        masses,
        positives,
        sources,
        settings,
    )


def core_scores(result: DetectionResult, tau: float) -> np.ndarray:
    """Mean SCoRe of every head (row order of ``result.heads``) at temperature ``tau``."""
    total = np.zeros(len(result.heads))
    for m, p in zip(result.masses, result.positives):
        z = m.astype(np.float64) / tau
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        total += e[:, p] / e.sum(axis=1)
    return total / max(1, len(result.masses))


def qr_scores(result: DetectionResult) -> np.ndarray:
    """Mean attention mass on the positive (QR-style score, no contrast)."""
    total = np.zeros(len(result.heads))
    for m, p in zip(result.masses, result.positives):
        total += m[:, p]
    return total / max(1, len(result.masses))


def _matrix(result: DetectionResult, scores: np.ndarray) -> tuple[tuple[float, ...], ...]:
    grid = [[math.nan] * result.num_heads for _ in range(result.num_layers)]
    for (layer, head), v in zip(result.heads, scores):
        grid[layer][head] = round(float(v), 6)
    return tuple(tuple(r) for r in grid)


def make_head_list(
    result: DetectionResult,
    method: str = "core",
    k: int = 8,
    tau: float = 0.1,
    detection_note: str = "",
    extra: dict[str, Any] | None = None,
) -> HeadList:
    """The top-``k`` heads by mean SCoRe (``method="core"``) or by mass on the positive (``"qr"``)."""
    if method == "core":
        scores = core_scores(result, tau)
    elif method == "qr":
        scores = qr_scores(result)
    else:
        raise ValueError(f"method must be 'core' or 'qr', got {method!r}")
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k]
    by_source: dict[str, int] = {}
    for s in result.sources:
        by_source[s] = by_source.get(s, 0) + 1
    detection = {
        "data": detection_note or ", ".join(f"{s}: {n} samples" for s, n in by_source.items()),
        "samples": len(result.masses),
        "samples_by_source": by_source,
        "na_contrast": False,
        **result.settings,
        **(extra or {}),
    }
    rule = (
        "mean SCoRe (contrastive softmax over positive + hard negatives)"
        if method == "core"
        else ("mean attention mass on the positive (QR score)")
    )
    return HeadList(
        model_id=result.model_id,
        num_layers=result.num_layers,
        num_heads=result.num_heads,
        num_kv_heads=result.num_kv_heads,
        heads=tuple(result.heads[i] for i in order),
        method=method,  # type: ignore[arg-type]
        scores=tuple(round(float(scores[i]), 6) for i in order),
        tau=tau if method == "core" else None,
        k=k,
        detection=detection,
        source=f"core-rerank detect-heads: top-{k} heads by {rule}",
        score_matrix=_matrix(result, scores),
    )


def default_detection_samples(
    data_root: str | Path,
    max_per_source: dict[str, int] | None = None,
    n_negatives: int = 9,
    held_out: float = 0.25,
    seed: int = 0,
) -> list[DetectionSample]:
    """The project's detection mix, training data only: SciFact train (the part not held out for dev:
    ``split_queries(..., held_out, seed)``) with BM25-train-run negatives, and WikiQA train pools.
    NFCorpus dev is NOT used here: it is kept as a dev set for tau, k, order and fusion choices."""
    root = Path(data_root)
    caps = {"scifact": 400, "wikiqa_tok": 200, **(max_per_source or {})}
    out: list[DetectionSample] = []
    sci = load_dataset(root / "scifact", "train")
    det_q, _ = split_queries(sci.query_ids, held_out, seed)
    out += build_samples(sci, det_q, n_negatives, caps["scifact"], seed)
    wiki = load_dataset(root / "wikiqa_tok", "train")
    out += build_samples(wiki, None, n_negatives, caps["wikiqa_tok"], seed)
    return out
