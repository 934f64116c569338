"""The eager reference the engine's captured attention is checked against: the same weights loaded independently
with transformers' eager attention and ``output_attentions=True`` (every head, every row), on the same device.

Tests and the GPU check use it; it costs L x H x N^2 floats, so it is for short prompts only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..block import BlockPrompt
    from ..reranker import Reranker, WindowSignals

__all__ = ["block_sequence", "eager_attention_rows", "largest_difference_from_eager"]


def eager_attention_rows(
    rr: Reranker,
    ids: Sequence[int],
    rows: tuple[int, int],
    mean: bool = True,
    allowed: Any = None,
    positions: Sequence[int] | None = None,
) -> Any:
    """Mean attention rows over token range ``rows`` for every (layer, head) of ``rr``'s model, from an independent
    eager load of the same weights (same depth, float32, ``rr``'s device): (layers, heads, keys), or with
    ``mean=False`` every row, (layers, heads, rows, keys). ``allowed`` (n, n) bool: which keys each token may attend
    (default causal); ``positions``: each token's rotary position (default 0..n-1)."""
    import torch
    from transformers import AutoConfig, AutoModel

    from ..sources import weights

    where = weights(rr.source)
    config = AutoConfig.from_pretrained(where.location, **where.kwargs)
    config.num_hidden_layers = rr.loaded_model.layers_loaded
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = config.layer_types[: config.num_hidden_layers]
    model = AutoModel.from_pretrained(
        where.location, config=config, attn_implementation="eager", dtype=torch.float32, **where.kwargs
    ).to(rr.device)
    extra = {}
    if allowed is not None:
        mask = torch.zeros(allowed.shape, dtype=torch.float32).masked_fill(~allowed, float("-inf"))
        extra["attention_mask"] = mask[None, None].to(rr.device)
    if positions is not None:
        extra["position_ids"] = torch.tensor([list(positions)], device=rr.device)
    with torch.inference_mode():
        att = model.eval()(
            input_ids=torch.tensor([list(ids)], device=rr.device), output_attentions=True, **extra
        ).attentions
    if not att or len(att) != config.num_hidden_layers or att[0] is None:
        raise RuntimeError("eager attention returned no attention matrices")
    picked = [a[0, :, rows[0] : rows[1], :].float().cpu() for a in att]
    return torch.stack([p.mean(dim=1) for p in picked] if mean else picked)


def block_sequence(prompt: BlockPrompt, suffix: Sequence[int]) -> tuple[list[int], Any, list[int]]:
    """A block prompt written out as one sequence for a single forward pass: its ids (prefix, blocks, ``suffix``),
    which keys each token may attend (the prefix causally; a block the prefix and itself causally; the suffix
    everything before it and itself causally) and each token's rotary position. The independent implementation
    block attention is checked against."""
    import torch

    p, k = len(prompt.prefix), prompt.context_tokens
    ids = [*prompt.prefix, *(t for b in prompt.blocks for t in b), *suffix]
    n = len(ids)
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    allowed = torch.zeros(n, n, dtype=torch.bool)
    allowed[:p, :p] = causal[:p, :p]
    positions, at = list(range(p)), p
    for block, start in zip(prompt.blocks, prompt.starts):
        end = at + len(block)
        allowed[at:end, :p] = True
        allowed[at:end, at:end] = causal[at:end, at:end]
        positions += range(start, start + len(block))
        at = end
    allowed[k:, :] = causal[k:, :]
    positions += range(prompt.suffix_position, prompt.suffix_position + len(suffix))
    return ids, allowed, positions


def largest_difference_from_eager(rr: Reranker, query: str, docs: Sequence[str]) -> tuple[float, WindowSignals]:
    """The largest absolute difference between ``rr``'s captured signals (query and N/A rows, every selected head)
    for one prompt and the eager reference's, with the captured signals. With ``attention="block"`` the reference
    is one eager pass over :func:`block_sequence` (a mask and positions, no KV cache assembled from pieces)."""
    from ..block import BlockPrompt

    w = rr.attention_signals(query, docs)
    key_end = w.signals.query.shape[1]
    p = w.prompt
    if isinstance(p, BlockPrompt):
        k = p.context_tokens
        refs = []
        for ids, rows in ((p.ids_query, p.query_rows), (p.ids_null, p.null_rows)):
            flat, allowed, positions = block_sequence(p, ids)
            refs.append(eager_attention_rows(rr, flat, (k + rows[0], k + rows[1]), True, allowed, positions))
        ref_q, ref_n = refs
    else:
        ref_q = eager_attention_rows(rr, p.ids_query, p.query_rows)
        ref_n = eager_attention_rows(rr, p.ids_null, p.null_rows)
    worst = 0.0
    for i, (layer, head) in enumerate(w.signals.heads):
        for mine, ref in (
            (w.signals.query[i], ref_q[layer, head, :key_end]),
            (w.signals.null[i], ref_n[layer, head, :key_end]),
        ):
            worst = max(worst, float((mine.float() - ref).abs().max()))
    return worst, w
