"""What the vLLM backend builds on that needs no vLLM: ``generation_prompt_ids`` starts with exactly the tokens of
every scoring prompt over the same documents (so vLLM's prefix cache can serve a generation the documents' KV), and
``from_vllm`` without vLLM installed says what to install."""

from __future__ import annotations

import importlib.util

import pytest
from conftest import SANITY_DOCS, default_model_installed

from core_rerank import DependencyMissingError, InvalidInputError, Reranker

pytestmark = pytest.mark.skipif(not default_model_installed(), reason="the embedded default model is not installed")


def test_a_generation_prompt_starts_with_the_scoring_prompts_documents(default_rr):
    ids = default_rr.generation_prompt_ids(SANITY_DOCS, "which fruit is high in potassium?")
    (window,) = default_rr.plan("which fruit is high in potassium?", default_rr.prepare(SANITY_DOCS))
    end = window.prompt.doc_spans[-1][1]
    assert ids[:end] == list(window.prompt.ids_query[:end]) == list(window.prompt.ids_null[:end])
    text = default_rr.loaded_model.tokenizer.decode(ids)
    assert text.endswith("Question: which fruit is high in potassium?<|im_end|>\n<|im_start|>assistant\n")
    assert all(doc in text for doc in SANITY_DOCS)
    # Another query over the same documents shares the same start.
    other = default_rr.generation_prompt_ids(SANITY_DOCS, "what is the tallest mountain?")
    assert other[:end] == ids[:end]


def test_a_generation_prompt_needs_one_window(default_rr):
    small = default_rr.with_options(max_tokens=320, max_doc_tokens=100)
    with pytest.raises(InvalidInputError, match="windows"):
        small.generation_prompt_ids(SANITY_DOCS * 2, "which fruit is high in potassium?")
    with pytest.raises(InvalidInputError):
        default_rr.generation_prompt_ids([], "a question")


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_from_vllm_without_vllm_says_what_to_install():
    with pytest.raises(DependencyMissingError, match=r"core-rerank\[vllm\]"):
        Reranker.from_vllm(object())
