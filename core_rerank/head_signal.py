"""Per-head attention signals a_lh(j) for list-wise prompts that differ only in their query.

The prompt puts the documents first and the query last, so the prompts of several queries over one
document list, and the prompt of the content-free "N/A" query, share a long common token prefix (system
turn, documents, instruction). That prefix runs once; every differing suffix (the N/A one, then one per
query) runs on top of its KV cache. Query-span rows that fall inside the shared prefix are captured
once and count for every prompt. One query is the special case of one suffix beside the N/A one.
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from .capture import AttentionCapture, capturing
from .errors import ScoringError

__all__ = [
    "HeadSignals",
    "PrefixContext",
    "PromptTokens",
    "cache_argument",
    "check_finite",
    "croppable",
    "head_signals_many",
    "shared_prefix",
]

CacheReuse = Literal["auto", "copy", "crop"]


@dataclass(frozen=True)
class PromptTokens:
    """One prompt as token ids, and the token range [start, end) of its query span."""

    ids: Sequence[int]
    query_rows: tuple[int, int]


@dataclass(frozen=True)
class PrefixContext:
    """A KV cache made before the prompts run (block attention's prefix and document blocks): ``tokens`` keys, the
    prompts' first token at rotary position ``position``."""

    cache: DynamicCache
    tokens: int
    position: int


@dataclass(frozen=True)
class HeadSignals:
    """a_lh(j) for the selected heads (rows, in ``heads`` order) over key positions [0, key_end)."""

    heads: tuple[tuple[int, int], ...]
    query: torch.Tensor  # (|H|, key_end) fp32, mean over the query span's rows
    null: torch.Tensor  # same, with the content-free "N/A" query
    shared_prefix_tokens: int


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def shared_prefix(prompts: Sequence[PromptTokens]) -> int:
    """Tokens at the start of every prompt that one forward pass can run for all of them.

    It is the common prefix of the prompts' token ids (never of their texts: a merge at the boundary
    changes ids, not text), leaving at least one token of every prompt to its own pass (its last
    position must run there). It stops where a query span starts unless all spans start at the same
    token, and never passes the end of a span, so the span rows it holds are the same rows of every
    prompt.
    """
    first = prompts[0].ids
    n = min(len(p.ids) for p in prompts) - 1
    for p in prompts[1:]:
        n = min(n, _common_prefix(first, p.ids))
    starts = {p.query_rows[0] for p in prompts}
    if len(starts) > 1:
        n = min(n, min(starts))
    return max(0, min(n, min(p.query_rows[1] for p in prompts)))


def _stack(
    sums: Mapping[int, torch.Tensor], heads_by_layer: Mapping[int, list[int]], key_end: int, device: torch.device
) -> torch.Tensor:
    rows = []
    for layer, heads in heads_by_layer.items():
        got = sums.get(layer)
        rows.append(got if got is not None else torch.zeros(len(heads), key_end, device=device))
    return torch.cat(rows, dim=0)


@functools.cache
def cache_argument(model_class: type) -> str:
    """The name of the KV-cache argument of ``model_class.forward``."""
    # transformers renamed `past_key_values` to `cache` (deprecated from 5.2x, removed in 5.40).
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def _forward(model, ids: Sequence[int], cache: DynamicCache, capture: AttentionCapture, device, position: int) -> None:
    kwargs = {cache_argument(type(model)): cache}
    positions = torch.arange(position, position + len(ids), device=device)[None]
    with capturing(capture):
        model(input_ids=torch.tensor([list(ids)], device=device), position_ids=positions, use_cache=True, **kwargs)


def croppable(cache: DynamicCache) -> bool:
    """Whether cropping ``cache`` back after a suffix restores exactly its state before it: only when every
    layer is a plain full-attention ``DynamicLayer``. A sliding-window layer (Gemma 3, Mistral) has already
    dropped its oldest keys and cannot be rolled back; a quantized or static layer keeps other state."""
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


def _check(
    model_name: str,
    dtype: torch.dtype,
    heads: Sequence[tuple[int, int]],
    passes: Sequence[AttentionCapture],
    signals: torch.Tensor,
) -> None:
    """Refuse to score from a signal that is not the model's attention: a selected layer whose attention
    never reached the capture (it would read as zeros and leave the input order), or non-finite values."""
    for capture in passes:
        unseen = sorted({layer for layer, _ in heads} - capture.seen)
        if unseen:
            raise ScoringError(
                f"model {model_name!r}: the attention of layer(s) {unseen} never reached core-rerank's capture, so "
                "their heads give no signal. The layer does not call transformers' attention interface (a linear-"
                "attention or hybrid layer, an attention module without layer_idx, or a custom modeling file). "
                "Choose heads in layers that use standard attention (detect a list with `core-rerank detect-heads`)."
            )
    check_finite(model_name, dtype, heads, signals)


def check_finite(model_name: str, dtype: torch.dtype, heads: Sequence[tuple[int, int]], signals: torch.Tensor) -> None:
    """Refuse signals (one row per head of ``heads``) that are not finite: the activations overflowed."""
    finite = torch.isfinite(signals).all(dim=1).tolist()
    broken = sorted({layer for (layer, _), ok in zip(heads, finite) if not ok})
    if broken:
        raise ScoringError(
            f"model {model_name!r}: the attention signals of layer(s) {broken} are not finite (NaN or inf): the "
            f"model's activations overflowed in {str(dtype).removeprefix('torch.')}. Load it with dtype='float32' "
            "(or 'bfloat16', which has float32's range)."
        )


@torch.inference_mode()
def head_signals_many(
    model: torch.nn.Module,
    heads_by_layer: Mapping[int, list[int]],
    queries: Sequence[PromptTokens],
    null: PromptTokens,
    key_end: int,
    model_name: str = "",
    cache_reuse: CacheReuse = "auto",
    context: PrefixContext | None = None,
) -> list[HeadSignals]:
    """Signals of every prompt in ``queries`` and of the ``null`` (N/A) prompt, all over the same documents:
    the shared token prefix runs once, then the N/A suffix once and each query's suffix once.

    Returns one :class:`HeadSignals` per query, in order; their ``null`` signal is the same tensor.
    ``key_end`` is one past the last document token (only keys before it are kept). ``cache_reuse`` says
    how each suffix starts from the prefix's KV cache: ``"copy"`` runs it on a deep copy (valid for any
    cache), ``"crop"`` runs it on the cache itself and crops its tokens off afterwards (no copy; only
    where :func:`croppable`), ``"auto"`` crops where valid and copies elsewhere. Both give the same numbers.
    ``context``: the prompts run on top of this KV cache (block attention): their ids and query rows count from
    its end, and ``key_end`` from its start.
    Raises :class:`ScoringError` when a selected layer's attention was never captured or a signal is not
    finite.
    """
    if not queries:
        return []
    if cache_reuse not in ("auto", "copy", "crop"):
        raise ValueError(f"cache_reuse must be 'auto', 'copy' or 'crop', got {cache_reuse!r}")
    device = next(model.parameters()).device
    prompts = [null, *queries]
    shared = shared_prefix(prompts)
    heads_by_layer = dict(sorted(heads_by_layer.items()))
    cache = DynamicCache(config=model.config) if context is None else context.cache
    base = 0 if context is None else context.tokens  # cache index of the prompts' first token
    offset = 0 if context is None else context.position - context.tokens  # rotary position = cache index + offset
    # Span rows inside the prefix are the same token positions in every prompt (shared_prefix sees to it).
    prefix = AttentionCapture(heads_by_layer, (base + null.query_rows[0], base + shared), key_end, base)
    if shared:
        _forward(model, null.ids[:shared], cache, prefix, device, base + offset)
    crop = cache_reuse == "crop" or (cache_reuse == "auto" and croppable(cache))
    if crop and not croppable(cache):
        raise ValueError(f"cache_reuse='crop': the KV cache of {model_name or type(model).__name__} cannot be cropped")

    passes = []
    for i, prompt in enumerate(prompts):
        last = i == len(prompts) - 1
        on = cache if crop or last else copy.deepcopy(cache)
        suffix = prompt.ids[shared:]
        rows = (base + max(shared, prompt.query_rows[0]), base + prompt.query_rows[1])
        capture = AttentionCapture(heads_by_layer, rows, key_end, base + shared)
        _forward(model, suffix, on, capture, device, base + shared + offset)
        if crop and not last:
            cache.crop(-len(suffix))
        passes.append(capture)
    del cache

    base = _stack(prefix.sums, heads_by_layer, key_end, device)
    means = [
        (base + _stack(c.sums, heads_by_layer, key_end, device)) / (p.query_rows[1] - p.query_rows[0])
        for p, c in zip(prompts, passes)
    ]
    heads = tuple((layer, h) for layer, hs in heads_by_layer.items() for h in hs)
    _check(model_name or type(model).__name__, model.dtype, heads, passes, torch.cat(means, dim=1))
    null_signal = means[0].cpu()
    return [HeadSignals(heads, q.cpu(), null_signal, shared) for q in means[1:]]
