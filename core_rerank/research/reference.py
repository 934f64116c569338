"""The eager reference the engine's captured attention is checked against: the same weights loaded independently
with transformers' eager attention and ``output_attentions=True`` (every head, every row), on the same device.

Tests and the GPU check use it; it costs L x H x N^2 floats, so it is for short prompts only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..reranker import Reranker, WindowSignals

__all__ = ["eager_attention_rows", "largest_difference_from_eager"]


def eager_attention_rows(rr: Reranker, ids: Sequence[int], rows: tuple[int, int], mean: bool = True) -> Any:
    """Mean attention rows over token range ``rows`` for every (layer, head) of ``rr``'s model, from an independent
    eager load of the same weights (same depth, float32, ``rr``'s device): (layers, heads, keys), or with
    ``mean=False`` every row, (layers, heads, rows, keys)."""
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
    with torch.inference_mode():
        att = model.eval()(input_ids=torch.tensor([list(ids)], device=rr.device), output_attentions=True).attentions
    if not att or len(att) != config.num_hidden_layers or att[0] is None:
        raise RuntimeError("eager attention returned no attention matrices")
    picked = [a[0, :, rows[0] : rows[1], :].float().cpu() for a in att]
    return torch.stack([p.mean(dim=1) for p in picked] if mean else picked)


def largest_difference_from_eager(rr: Reranker, query: str, docs: Sequence[str]) -> tuple[float, WindowSignals]:
    """The largest absolute difference between ``rr``'s captured signals (query and N/A rows, every selected head)
    for one prompt and the eager reference's, with the captured signals."""
    w = rr.attention_signals(query, docs)
    key_end = w.signals.query.shape[1]
    ref_q = eager_attention_rows(rr, w.ids_query, w.query_rows)
    ref_n = eager_attention_rows(rr, w.ids_null, w.null_rows)
    worst = 0.0
    for i, (layer, head) in enumerate(w.signals.heads):
        for mine, ref in (
            (w.signals.query[i], ref_q[layer, head, :key_end]),
            (w.signals.null[i], ref_n[layer, head, :key_end]),
        ):
            worst = max(worst, float((mine.float() - ref).abs().max()))
    return worst, w
