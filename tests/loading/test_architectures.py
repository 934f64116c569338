"""Every supported architecture family: tiny random-weight models built here, and real packaged weights."""

from __future__ import annotations

import pytest
import torch
from conftest import (
    SANITY_DOCS,
    TINY_ARCHITECTURES,
    assert_same_heads_agree,
    assert_signals_match_eager,
    tiny_config,
)

from core_rerank import Reranker
from core_rerank.packaged import find_packaged

QUERY = "which organelle makes ATP for the cell?"
DOCS = SANITY_DOCS[:5] + SANITY_DOCS[6:7]


@pytest.fixture(scope="module")
def tokenizer_dir(default_rr, tmp_path_factory):
    path = tmp_path_factory.mktemp("tok")
    default_rr.loaded_model.tokenizer.save_pretrained(path)
    return path


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_tiny_random_model_signals_match_eager(arch, tokenizer_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    config = tiny_config(arch)
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    config.vocab_size = len(tok)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # sharpen attention so heads differ visibly
        for name, p in model.named_parameters():
            if "q_proj" in name or "k_proj" in name or "qkv_proj" in name:
                p.mul_(8)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)

    rr = Reranker(str(tmp_path), heads="all", dtype="float32")
    assert rr.loaded_model.model.config.model_type == config.model_type
    assert_signals_match_eager(rr, QUERY, DOCS)
    heads = [(1, 0), (2, 3)]  # truncated to 3 of 4 layers: the same signals for those heads
    cut = Reranker(str(tmp_path), heads=heads, dtype="float32")
    assert cut.loaded_model.layers_loaded == 3
    assert_same_heads_agree(cut.attention_signals(QUERY, DOCS).signals, rr.attention_signals(QUERY, DOCS).signals)
    ranked = rr.rank(QUERY, DOCS)
    assert sorted(ranked.indices) == list(range(len(DOCS)))


def _packaged_or_skip(name: str):
    packaged = find_packaged(name)
    if not packaged.installed():
        pytest.skip(f"{name} is not installed ({packaged.install}; scripts/install_test_models.sh installs it)")


@pytest.mark.models
def test_real_qwen2_weights():
    _packaged_or_skip("qwen2.5-coder-0.5b-instruct")
    rr = Reranker(
        "qwen2.5-coder-0.5b-instruct", heads=[(layer, h) for layer in (3, 6) for h in range(14)], dtype="float32"
    )
    assert rr.loaded_model.layers_loaded == 7 and rr.loaded_model.shape.num_layers == 24
    assert rr.model_id == "Qwen/Qwen2.5-Coder-0.5B-Instruct"
    assert_signals_match_eager(rr, QUERY, DOCS)
    everything = Reranker("qwen2.5-coder-0.5b-instruct", heads="all")
    assert everything.rank(QUERY, DOCS)[0].index == 5
    bundled = Reranker("qwen2.5-coder-0.5b-instruct")  # its detected CoRe list, cut after its deepest head
    assert bundled.head_list.method == "core" and bundled.head_list.model_id == "Qwen/Qwen2.5-Coder-0.5B-Instruct"
    assert bundled.loaded_model.layers_loaded == bundled.head_list.max_layer + 1 < 24
    assert bundled.rank(QUERY, DOCS)[0].index == 5


@pytest.mark.models
def test_real_gemma3_weights():
    _packaged_or_skip("gemma-3-270m")
    # Layer 5 is Gemma 3's first full-attention layer; layers 0-4 use a 512-token sliding window.
    rr = Reranker("gemma-3-270m", heads=[(layer, h) for layer in (2, 5) for h in range(4)], dtype="float32")
    assert rr.loaded_model.layers_loaded == 6
    long_docs = [d + " " + " ".join(["Filler sentence about nothing in particular."] * 20) for d in DOCS]
    w = assert_signals_match_eager(rr, QUERY, long_docs)
    assert w.prompt.query_rows[0] > 512  # the query really is beyond the sliding window of the early layers
    ranked = rr.rank(QUERY, DOCS)
    assert sorted(ranked.indices) == list(range(len(DOCS)))
    bundled = Reranker("gemma-3-270m")  # its detected CoRe list: the model is cut after its deepest head
    assert bundled.head_list.method == "core" and bundled.head_list.model_id == "google/gemma-3-270m"
    assert bundled.loaded_model.layers_loaded == bundled.head_list.max_layer + 1 < 18
    assert sorted(bundled.rank(QUERY, DOCS).indices) == list(range(len(DOCS)))
