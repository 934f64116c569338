"""The engine refuses to score from a signal that is not the model's attention, and refuses models it
cannot read: never a silent all-zero or NaN ranking."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import SANITY_DOCS, save_tiny_model

from core_rerank import Reranker
from core_rerank.errors import ScoringError, UnsupportedModelError

QUERY = "which organelle makes ATP for the cell?"


@pytest.fixture()
def tiny(tmp_path):
    return save_tiny_model(tmp_path / "tiny-llama")


def test_a_layer_that_bypasses_the_attention_interface_is_an_error(tiny):
    rr = Reranker(str(tiny), heads=[(1, 0), (2, 3)], dtype="float32")
    assert rr.rank(QUERY, SANITY_DOCS[:3])  # works while every layer goes through the capture
    # A model whose attention does not call core-rerank's function (another implementation, a custom
    # modeling file, a linear-attention layer) gives the capture nothing: all scores would be 0.0.
    rr.loaded_model.model.set_attn_implementation("sdpa")
    with pytest.raises(ScoringError, match=r"tiny-llama.*layer\(s\) \[1, 2\]"):
        rr.rank(QUERY, SANITY_DOCS[:3])


def test_non_finite_attention_is_an_error_naming_the_layer(tiny):
    rr = Reranker(str(tiny), heads=[(0, 1), (2, 0)], dtype="float32")
    model = rr.loaded_model.model
    # Overflowed activations (what float16 does to some models) reach layer 2's attention as NaN.
    hook = model.layers[1].mlp.register_forward_hook(lambda module, args, out: out * float("nan"))
    try:
        with pytest.raises(ScoringError, match=r"tiny-llama.*layer\(s\) \[2\].*not finite"):
            rr.score(QUERY, SANITY_DOCS[:3])
    finally:
        hook.remove()
    scores = rr.score(QUERY, SANITY_DOCS[:3])
    assert all(torch.isfinite(torch.tensor(scores)))


def test_an_encoder_is_refused(tmp_path):
    from transformers import BertConfig

    config = BertConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
    path = save_tiny_model(tmp_path / "tiny-bert", config)
    with pytest.raises(UnsupportedModelError, match="encoder"):
        Reranker(str(path), heads="all", dtype="float32")


def test_an_unknown_architecture_is_refused(tmp_path):
    path = tmp_path / "mystery"
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": "no-such-architecture", "num_hidden_layers": 2}))
    with pytest.raises(UnsupportedModelError, match="mystery"):
        Reranker(str(path), heads="all")
