"""Capture query-token attention rows of selected heads through transformers' attention interface.

We register one attention function, ``core_rerank``, with ``AttentionInterface``. It computes the
layer output with the stock SDPA kernel (so the model runs at normal speed and never builds
``output_attentions``), and, while a :class:`AttentionCapture` is active on the current thread,
recomputes the softmax rows of the query tokens for the selected heads of that layer only: in fp32,
scale applied before the matmul, keys beyond ``key_end`` dropped right after the softmax. Rows are
summed as they arrive, so extra memory is O(|heads in layer| x |Q rows in this pass| x seq) transiently
and O(|H| x key_end) kept.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

__all__ = ["ATTN_IMPLEMENTATION", "AttentionCapture", "capturing", "causal_mask", "summed_rows"]

ATTN_IMPLEMENTATION = "core_rerank"

_state = threading.local()


@dataclass
class AttentionCapture:
    """What to capture in one forward pass, and the running sums captured so far.

    ``rows`` is the half-open range of absolute token positions whose attention rows are summed;
    ``key_end`` bounds the key positions kept; ``chunk_start`` is the absolute position of the first
    token of the forward pass (the cached length before it). ``sums[layer]`` is (n heads, key_end) fp32.
    ``seen`` records the selected layers whose attention ran through the capture, so a layer that never
    did (it bypasses the attention interface or has no ``layer_idx``) is an error, not a silent zero.
    """

    heads_by_layer: Mapping[int, list[int]]
    rows: tuple[int, int]
    key_end: int
    chunk_start: int = 0
    sums: dict[int, torch.Tensor] = field(default_factory=dict)
    seen: set[int] = field(default_factory=set)

    def observe(
        self,
        module: torch.nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        attention_mask: torch.Tensor | None,
        scaling: float | None,
        kwargs: Mapping,
    ) -> None:
        layer = getattr(module, "layer_idx", None)
        heads = self.heads_by_layer.get(layer) if layer is not None else None
        if not heads:
            return
        self.seen.add(layer)
        q_len, kv_len = query.shape[2], key.shape[2]
        past = self.chunk_start  # absolute position of this chunk's first token (batch 1, no padding)
        # Absolute position of key 0: 0 for full attention; later for a sliding-window cache that
        # has dropped its oldest entries.
        key_start = past + q_len - kv_len
        lo, hi = max(self.rows[0], past), min(self.rows[1], past + q_len)
        if lo >= hi or key_start >= self.key_end:
            return
        head_idx = torch.as_tensor(heads, device=query.device)
        group = query.shape[1] // key.shape[1]
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        q = query[0, head_idx, lo - past : hi - past, :].float() * scale  # (h, t, d)
        k = key[0, torch.div(head_idx, group, rounding_mode="floor"), :, :].float()  # (h, kv, d)
        mask = _additive_mask(module, attention_mask, kwargs, lo, hi, past, key_start, kv_len, q.device)
        probs = summed_rows(q, k, mask, self.key_end - key_start, kwargs.get("softcap"))
        if layer not in self.sums:
            self.sums[layer] = torch.zeros(len(heads), self.key_end, device=probs.device)
        self.sums[layer][:, key_start : key_start + probs.shape[1]] += probs


def _additive_mask(module, attention_mask, kwargs, lo, hi, past, key_start, kv_len, device) -> torch.Tensor:
    """(t, kv) additive fp32 mask for query positions [lo, hi): the model's own mask when it built
    one, else causal (plus the layer's sliding window)."""
    if isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 4:
        m = attention_mask[0, 0, lo - past : hi - past, :kv_len]
        if m.dtype == torch.bool:
            return torch.zeros(m.shape, device=device).masked_fill(~m, float("-inf"))
        return m.float()
    window = kwargs.get("sliding_window") or getattr(module, "sliding_window", None)
    return causal_mask(lo, hi, key_start, kv_len, device, window)


def causal_mask(lo: int, hi: int, key_start: int, kv_len: int, device, window: int | None = None) -> torch.Tensor:
    """(t, kv) additive fp32 causal mask of query positions [lo, hi) over keys [key_start, key_start + kv_len)
    (and a sliding ``window``, when given)."""
    rows = torch.arange(lo, hi, device=device)[:, None]
    cols = torch.arange(key_start, key_start + kv_len, device=device)[None, :]
    allowed = cols <= rows
    if window:
        allowed &= cols > rows - window
    return torch.zeros(allowed.shape, device=device).masked_fill(~allowed, float("-inf"))


def summed_rows(
    q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor, keep: int, softcap: float | None = None
) -> torch.Tensor:
    """(h, keep): the softmax attention rows of queries ``q`` (h, t, d; fp32, already scaled) over keys ``k``
    (h, kv, d) with the additive ``mask`` (t, kv), keys past ``keep`` dropped after the softmax, summed over the
    rows. Every engine's capture reads the selected heads through this one function."""
    scores = torch.matmul(q, k.transpose(-1, -2))  # (h, t, kv)
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    return torch.softmax(scores + mask, dim=-1)[..., :keep].sum(dim=1)


def _attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    if kwargs.get("softcap") is not None:
        # SDPA cannot soft-cap logits: use the model's own eager function for the output.
        eager = sys.modules[type(module).__module__].eager_attention_forward
        out = eager(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    else:
        out = sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    capture = getattr(_state, "capture", None)
    if capture is not None:
        capture.observe(module, query, key, attention_mask, scaling, kwargs)
    return out


AttentionInterface.register(ATTN_IMPLEMENTATION, _attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(ATTN_IMPLEMENTATION, sdpa_mask)


@contextmanager
def capturing(capture: AttentionCapture) -> Iterator[AttentionCapture]:
    """Activate ``capture`` for forward passes run on this thread inside the block."""
    previous = getattr(_state, "capture", None)
    _state.capture = capture
    try:
        yield capture
    finally:
        _state.capture = previous
