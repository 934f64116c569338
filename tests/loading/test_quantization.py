"""bitsandbytes 4-bit on this CPU: real NF4 weights, scores close to dense, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SANITY_DOCS, SANITY_QUERIES

from core_rerank import Reranker
from core_rerank.errors import DependencyMissingError
from core_rerank.loading import ModelShape, resolve_quantization


def _weight_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


@pytest.fixture(scope="module")
def q4():
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is in the 'quant' extra")
    return Reranker(heads="all", quantization="4bit")


@pytest.mark.slow  # bitsandbytes 4-bit on the CPU: a 4-bit load and its slow kernels
def test_4bit_loads_nf4_weights_in_less_memory(q4, fp32_all):
    import bitsandbytes as bnb

    model = q4.loaded_model.model
    linear4 = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(linear4) == 30 * 7  # q, k, v, o, gate, up, down in every layer
    assert linear4[0].weight.quant_type == "nf4"
    assert q4.quantization == "4bit" and "4bit" in repr(q4)
    assert _weight_bytes(model) < 0.5 * _weight_bytes(fp32_all.loaded_model.model)


@pytest.mark.slow  # bitsandbytes 4-bit on the CPU: a 4-bit load and its slow kernels
def test_4bit_scores_agree_with_dense(q4, fp32_all):
    # Tolerance: per-list Pearson r >= 0.95 against dense float32 (measured 0.975-0.998 here) and the
    # same winner on every query of the sanity set. The default model is itself a Q4_1 GGUF, so
    # NF4 re-quantizes already-quantized weights: agreement is not expected to be exact.
    for query, relevant in SANITY_QUERIES:
        dense = fp32_all.score(query, SANITY_DOCS)
        quant = q4.score(query, SANITY_DOCS)
        assert np.corrcoef(dense, quant)[0, 1] >= 0.95, query
        assert int(np.argmax(quant)) == int(np.argmax(dense)) == relevant, query


def test_auto_quantization_rule():
    big = ModelShape(32, 32, 8, 8192, layer_parameters=200_000_000, embedding_parameters=500_000_000)
    small = ModelShape(30, 9, 3, 8192, layer_parameters=3_500_000, embedding_parameters=28_000_000)
    assert resolve_quantization("auto", "cpu", big, 16) is None  # dense bf16 wins on CPU
    assert resolve_quantization("auto", "cuda", small, 30) is None
    pytest.importorskip("bitsandbytes")
    assert resolve_quantization("auto", "cuda", big, 16) == "4bit"
    assert resolve_quantization(None, "cuda", big, 16) is None
    with pytest.raises(ValueError, match="quantization must be"):
        resolve_quantization("3bit", "cpu", small, 30)


def test_missing_bitsandbytes_is_a_clear_error(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a)
    )
    with pytest.raises(DependencyMissingError, match=r"core-rerank\[quant\]"):
        Reranker(quantization="4bit", heads=[(1, 0)])
    big = ModelShape(32, 32, 8, 8192, layer_parameters=200_000_000, embedding_parameters=500_000_000)
    with pytest.raises(DependencyMissingError, match="quantization=None"):
        resolve_quantization("auto", "cuda", big, 16)
