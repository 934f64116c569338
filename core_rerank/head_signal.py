"""Per-head attention signals a_lh(j) for one list-wise prompt, with and without the real query.

Three forward passes share work: the common token prefix of the query prompt and the "N/A"
prompt (system turn, documents, instruction) runs once; its KV cache is copied, and only the two
differing suffixes run on top of it. Query-span rows that fall inside the shared prefix are
captured once and count for both.
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from .capture import AttentionCapture, capturing
from .errors import ScoringError

__all__ = ["HeadSignals", "head_signals"]


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


def _stack(
    sums: Mapping[int, torch.Tensor], heads_by_layer: Mapping[int, list[int]], key_end: int, device: torch.device
) -> torch.Tensor:
    rows = []
    for layer, heads in heads_by_layer.items():
        got = sums.get(layer)
        rows.append(got if got is not None else torch.zeros(len(heads), key_end, device=device))
    return torch.cat(rows, dim=0)


@functools.cache
def _cache_argument(model_class: type) -> str:
    # transformers renamed `past_key_values` to `cache` (deprecated from 5.2x, removed in 5.40).
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def _forward(model, ids: Sequence[int], cache: DynamicCache, capture: AttentionCapture, device) -> None:
    kwargs = {_cache_argument(type(model)): cache}
    with capturing(capture):
        model(input_ids=torch.tensor([list(ids)], device=device), use_cache=True, **kwargs)


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
    finite = torch.isfinite(signals).all(dim=1).tolist()
    broken = sorted({layer for (layer, _), ok in zip(heads, finite) if not ok})
    if broken:
        raise ScoringError(
            f"model {model_name!r}: the attention signals of layer(s) {broken} are not finite (NaN or inf): the "
            f"model's activations overflowed in {str(dtype).removeprefix('torch.')}. Load it with dtype='float32' "
            "(or 'bfloat16', which has float32's range)."
        )


@torch.inference_mode()
def head_signals(
    model: torch.nn.Module,
    heads_by_layer: Mapping[int, list[int]],
    ids_query: Sequence[int],
    q_rows_query: tuple[int, int],
    ids_null: Sequence[int],
    q_rows_null: tuple[int, int],
    key_end: int,
    model_name: str = "",
) -> HeadSignals:
    """Run the prefix, query and N/A passes and return the mean query-row attention of each head.

    ``q_rows_*`` are the token ranges of the query span in each prompt; ``key_end`` is one past the
    last document token (only keys before it are kept). Raises :class:`ScoringError` when a selected
    layer's attention was never captured or a signal is not finite.
    """
    device = next(model.parameters()).device
    shared = min(_common_prefix(ids_query, ids_null), len(ids_query) - 1, len(ids_null) - 1)
    if q_rows_query[0] < shared and q_rows_query[0] != q_rows_null[0]:
        raise AssertionError("query spans of the two prompts start at different tokens inside the shared prefix")
    heads_by_layer = dict(sorted(heads_by_layer.items()))
    cache = DynamicCache(config=model.config)
    prefix = AttentionCapture(heads_by_layer, (q_rows_query[0], min(shared, q_rows_query[1])), key_end, 0)
    _forward(model, ids_query[:shared], cache, prefix, device)
    null_cache = copy.deepcopy(cache)
    on_query = AttentionCapture(heads_by_layer, (max(shared, q_rows_query[0]), q_rows_query[1]), key_end, shared)
    _forward(model, ids_query[shared:], cache, on_query, device)
    del cache
    on_null = AttentionCapture(heads_by_layer, (max(shared, q_rows_null[0]), q_rows_null[1]), key_end, shared)
    _forward(model, ids_null[shared:], null_cache, on_null, device)
    del null_cache

    base = _stack(prefix.sums, heads_by_layer, key_end, device)
    query = (base + _stack(on_query.sums, heads_by_layer, key_end, device)) / (q_rows_query[1] - q_rows_query[0])
    null = (base + _stack(on_null.sums, heads_by_layer, key_end, device)) / (q_rows_null[1] - q_rows_null[0])
    heads = tuple((layer, h) for layer, hs in heads_by_layer.items() for h in hs)
    name = model_name or type(model).__name__
    _check(name, model.dtype, heads, (on_query, on_null), torch.cat([query, null], dim=1))
    return HeadSignals(heads, query.cpu(), null.cpu(), shared)
