"""The captured signals are the model's real attention, and truncation does not change them."""

from __future__ import annotations

import pytest
import torch
from conftest import SANITY_DOCS, SHALLOW_HEADS, assert_same_heads_agree

QUERY = "which organelle makes ATP for the cell?"


@pytest.fixture(scope="module")
def eager_full(fp32_all):
    """The full default model with eager attention: the reference that returns attention matrices."""
    from transformers import AutoModel

    from core_rerank.sources import dense_directory

    model = AutoModel.from_pretrained(
        dense_directory(fp32_all.source), attn_implementation="eager", dtype=torch.float32
    )
    return model.eval()


def _eager_rows(model, ids, rows):
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([ids]), output_attentions=True)
    att = out.attentions
    assert len(att) == model.config.num_hidden_layers and att[0] is not None, "eager returned no attentions"
    return torch.stack([a[0, :, rows[0] : rows[1], :].mean(dim=1) for a in att])  # (layers, heads, seq)


def test_captured_rows_equal_eager_attentions(fp32_all, eager_full):
    w = fp32_all.attention_signals(QUERY, SANITY_DOCS)
    key_end = w.signals.query.shape[1]
    ref_q = _eager_rows(eager_full, w.prompt.ids_query, w.prompt.query_rows)
    ref_n = _eager_rows(eager_full, w.prompt.ids_null, w.prompt.null_rows)
    assert w.signals.shared_prefix_tokens > key_end  # the N/A pass really reused the document prefix
    for i, (layer, head) in enumerate(w.signals.heads):
        torch.testing.assert_close(w.signals.query[i], ref_q[layer, head, :key_end], atol=1e-4, rtol=0)
        torch.testing.assert_close(w.signals.null[i], ref_n[layer, head, :key_end], atol=1e-4, rtol=0)
    # Not trivially equal: the query changes the attention to the documents.
    assert (w.signals.query - w.signals.null).abs().max() > 1e-3


def test_truncated_model_gives_the_same_signals(fp32_all, fp32_shallow):
    assert fp32_shallow.loaded_model.layers_loaded == max(layer for layer, _ in SHALLOW_HEADS) + 1 == 8
    assert fp32_all.loaded_model.layers_loaded == 30
    assert fp32_shallow.loaded_model.num_parameters < 0.6 * fp32_all.loaded_model.num_parameters
    assert len(fp32_shallow.loaded_model.model.layers) == 8
    assert not hasattr(fp32_shallow.loaded_model.model, "lm_head")

    full = fp32_all.attention_signals(QUERY, SANITY_DOCS).signals
    cut = fp32_shallow.attention_signals(QUERY, SANITY_DOCS).signals
    assert_same_heads_agree(cut, full)


def test_scores_follow_from_signals_by_the_formula(fp32_shallow):
    from core_rerank import scoring

    w = fp32_shallow.attention_signals(QUERY, SANITY_DOCS)
    expected = scoring.document_scores(w.signals.query.sum(0), w.signals.null.sum(0), w.doc_spans)
    got = fp32_shallow.score(QUERY, SANITY_DOCS[::-1])  # reverse placement puts input 0 last
    assert got[::-1] == pytest.approx(expected, abs=1e-9)
