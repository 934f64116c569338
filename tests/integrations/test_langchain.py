"""LangChain integration: ``langchain_corerank.CoReRerank`` on the real default model and real LangChain."""

from __future__ import annotations

import asyncio
import copy
import json
import math
import pickle
import subprocess
import sys
import threading
from pathlib import Path

import langchain_corerank
import pytest
from conftest import SANITY_DOCS, SANITY_QUERIES, SCIFACT_QUERIES, minilm_embeddings, scifact_subset
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import BaseDocumentCompressor, Document
from langchain_corerank import CoReRerank
from pydantic import ValidationError

from core_rerank.errors import CoreRerankError, InvalidInputError, InvalidInputTypeError

FRUIT_Q, FRUIT = SANITY_QUERIES[1]  # "which fruit is high in potassium?" -> SANITY_DOCS[1]
MOUNTAIN_Q, MOUNTAIN = SANITY_QUERIES[2]


def sanity_documents() -> list[Document]:
    return [
        Document(page_content=text, metadata={"source": f"doc{i}", "nested": {"i": i}}, id=f"id{i}")
        for i, text in enumerate(SANITY_DOCS)
    ]


def scifact_retriever(corpus: dict) -> tuple[list[Document], object]:
    """The SciFact subset's abstracts as documents, and a top-6 MiniLM retriever over an in-memory store of them."""
    from langchain_core.vectorstores import InMemoryVectorStore

    docs = [
        Document(page_content=f"{d['title']}\n{d['text']}", metadata={"doc_id": d["_id"]}, id=d["_id"])
        for d in corpus.values()
    ]
    store = InMemoryVectorStore.from_documents(docs, minilm_embeddings())
    return docs, store.as_retriever(search_kwargs={"k": 6})


@pytest.fixture(scope="module")
def compressor() -> CoReRerank:
    return CoReRerank(top_n=None)


# ---------------------------------------------------------------- package and class
def test_package_surface():
    assert langchain_corerank.__all__ == ["CoReRerank"]
    assert issubclass(CoReRerank, BaseDocumentCompressor)
    assert (Path(langchain_corerank.__file__).parent / "py.typed").is_file()
    c = CoReRerank()
    assert (c.model, c.top_n, c.min_relevance_score, c.heads, c.max_doc_tokens) == ("default", 3, None, None, 200)


def test_engine_is_lazy_and_shares_the_default_model(default_rr, tmp_path):
    from conftest import save_tiny_model

    from core_rerank.loading import model_cache_info

    only_here = save_tiny_model(tmp_path / "only-here")  # a model no other test loads: the count is this test's own
    before = model_cache_info().loads
    c = CoReRerank(model=str(only_here), heads=[(0, 1), (3, 2)])
    assert c.compress_documents([], FRUIT_Q) == []
    assert model_cache_info().loads == before  # nothing loads at construction, nor for an empty list
    assert c.engine is c.engine  # one engine per settings, process-wide
    assert model_cache_info().loads == before + 1
    d = CoReRerank()
    assert d.engine.loaded_model is default_rr.loaded_model
    # A copy with other settings gets its own engine (same loaded model), and leaves the original's alone.
    shorter = d.model_copy(update={"max_doc_tokens": 64})
    assert shorter.engine.max_doc_tokens == 64 and d.engine.max_doc_tokens == 200
    assert shorter.engine.loaded_model is d.engine.loaded_model
    d.max_doc_tokens = 32  # changing a setting changes the engine on next use
    assert d.engine.max_doc_tokens == 32


def test_engine_settings_include_max_documents():
    from core_rerank.errors import TooManyDocumentsError
    from core_rerank.settings import DEFAULT_MAX_DOCUMENTS, option_names

    assert set(option_names()) <= set(CoReRerank.model_fields) and "max_documents" in option_names()
    assert CoReRerank().max_documents == DEFAULT_MAX_DOCUMENTS == CoReRerank().engine.max_documents
    docs = sanity_documents()
    capped = CoReRerank(max_documents=3, top_n=None)
    assert capped.engine.max_documents == 3
    assert len(capped.compress_documents(docs[:3], FRUIT_Q)) == 3
    with pytest.raises(TooManyDocumentsError, match="max_documents=3"):
        capped.compress_documents(docs, FRUIT_Q)
    with pytest.raises(TooManyDocumentsError):
        asyncio.run(capped.acompress_documents(docs, FRUIT_Q))
    unlimited = CoReRerank(max_documents=None, top_n=None)
    assert unlimited.engine.max_documents is None
    assert len(unlimited.compress_documents(docs, FRUIT_Q)) == len(docs)
    assert CoReRerank(**capped.model_dump()) == capped and capped.model_dump()["max_documents"] == 3
    for bad in (0, -5):
        with pytest.raises(ValidationError, match="max_documents"):
            CoReRerank(max_documents=bad)


def test_setting_docs_say_what_loads_and_which_dtype():
    fields = CoReRerank.model_fields
    model = " ".join(fields["model"].description.split())
    assert "never needs the network" in model and "another packaged model by name" in model
    assert "downloaded first when online" in model and "HF_HUB_OFFLINE=1 forbids downloads" in model
    assert "Nothing is downloaded" not in model
    dtype = " ".join(fields["dtype"].description.split())
    assert "CPUs with native bfloat16" in dtype and "float32 on other CPUs" in dtype
    assert "None`` means bfloat16" not in dtype
    assert "TooManyDocumentsError" in fields["max_documents"].description


def test_import_stays_light():
    # The engine's heavy modules load on first use, not when the integration is imported.
    script = "import sys, langchain_corerank; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["[]"]


# ---------------------------------------------------------------- compress_documents
def test_compress_sorts_copies_and_keeps_metadata(compressor, default_rr):
    docs = sanity_documents()
    before = copy.deepcopy(docs)
    out = compressor.compress_documents(docs, FRUIT_Q)

    assert docs == before  # the input list and its documents are untouched
    assert len(out) == len(docs)
    assert out[0].page_content == SANITY_DOCS[FRUIT] and out[0].id == f"id{FRUIT}"
    expected = default_rr.rank(FRUIT_Q, SANITY_DOCS)
    assert [d.id for d in out] == [f"id{i}" for i in expected.indices]
    for d, r in zip(out, expected):
        original = docs[r.index]
        assert d is not original and d.page_content == original.page_content
        assert d.metadata["relevance_score"] == pytest.approx(r.relevance, abs=1e-6)  # calibrated relevance
        assert d.metadata["core_rerank_score"] == pytest.approx(r.score, abs=1e-6)
        assert {k: v for k, v in d.metadata.items() if k not in ("relevance_score", "core_rerank_score")} == (
            original.metadata
        )
    relevance = [d.metadata["relevance_score"] for d in out]
    assert relevance == sorted(relevance, reverse=True)
    assert all(0 <= s <= 1 for s in relevance) and relevance[0] > relevance[-1]


@pytest.mark.parametrize(("query", "relevant"), [SANITY_QUERIES[0], SANITY_QUERIES[4]])
def test_relevant_document_first(query, relevant):
    out = CoReRerank().compress_documents(sanity_documents(), query)
    assert len(out) == 3 and out[0].id == f"id{relevant}"


def test_one_engine_call_per_compress(compressor, monkeypatch):
    engine = compressor.engine
    calls = []
    real_rank = engine.rank
    monkeypatch.setattr(engine, "rank", lambda q, docs, **kw: calls.append(len(docs)) or real_rank(q, docs, **kw))
    compressor.compress_documents(sanity_documents(), MOUNTAIN_Q)
    assert calls == [len(SANITY_DOCS)]  # one list-wise pass over all candidates, never one per document


def test_top_n_and_min_relevance_score(compressor):
    docs = sanity_documents()
    full = compressor.compress_documents(docs, MOUNTAIN_Q)
    assert full[0].id == f"id{MOUNTAIN}"
    assert [d.id for d in CoReRerank(top_n=2).compress_documents(docs, MOUNTAIN_Q)] == [d.id for d in full[:2]]
    assert len(CoReRerank(top_n=50).compress_documents(docs[:4], MOUNTAIN_Q)) == 4  # larger than the list: all

    cut = (full[1].metadata["relevance_score"] + full[2].metadata["relevance_score"]) / 2
    kept = CoReRerank(top_n=None, min_relevance_score=cut).compress_documents(docs, MOUNTAIN_Q)
    assert [d.id for d in kept] == [d.id for d in full[:2]]  # filters on the reported relevance_score
    assert all(d.metadata["relevance_score"] >= cut for d in kept)
    # ...before top_n: top_n=1 keeps the best of those above the cut, a cut above every score keeps none.
    assert [d.id for d in CoReRerank(top_n=1, min_relevance_score=cut).compress_documents(docs, MOUNTAIN_Q)] == [
        full[0].id
    ]
    assert CoReRerank(min_relevance_score=1.01).compress_documents(docs, MOUNTAIN_Q) == []
    with pytest.raises(ValidationError, match="min_relevance_score"):
        CoReRerank(min_relevance_score=math.nan)  # a NaN cut would silently drop everything


def test_min_relevance_score_is_the_one_name_of_the_cut():
    # Nothing was released: the pre-release name score_threshold is gone, not an alias (CHANGELOG.md).
    with pytest.raises(ValidationError, match="score_threshold"):
        CoReRerank(score_threshold=0.5)
    assert not hasattr(CoReRerank(), "score_threshold")


def test_field_descriptions_name_the_score_they_read():
    fields = CoReRerank.model_fields
    assert 'metadata["relevance_score"]' in fields["min_relevance_score"].description
    assert "before ``top_n``" in fields["min_relevance_score"].description
    assert fields["top_n"].description.startswith("Number of documents kept")


@pytest.mark.parametrize("top_n", [0, -1])
def test_top_n_below_one_is_a_clear_error(top_n):
    with pytest.raises(ValidationError, match="top_n"):
        CoReRerank(top_n=top_n)


def test_bad_input_the_langchain_way(compressor):
    assert compressor.compress_documents([], FRUIT_Q) == []
    # The engine's typed errors, which are also the builtins a LangChain user catches.
    for bad_query, error, message in [
        ("  ", InvalidInputError, "query is empty"),
        ("", InvalidInputError, "query is empty"),
        (None, InvalidInputTypeError, "query must be a string"),
        (b"bytes", InvalidInputTypeError, "query must be a string"),
    ]:
        for call in (
            lambda q: compressor.compress_documents(sanity_documents(), q),
            lambda q: asyncio.run(compressor.acompress_documents(sanity_documents(), q)),
            lambda q: compressor.compress_documents([], q),  # checked even when there is nothing to rank
        ):
            with pytest.raises(error, match=message) as raised:
                call(bad_query)
            assert isinstance(raised.value, CoreRerankError)
            assert isinstance(raised.value, TypeError if error is InvalidInputTypeError else ValueError)
    with pytest.raises(ValidationError):
        CoReRerank(top_k=3)  # unknown settings are refused, not ignored

    docs = [Document(page_content=""), *sanity_documents()[:3], Document(page_content="   ", metadata={"x": 1})]
    out = compressor.compress_documents(docs, FRUIT_Q)
    assert len(out) == 5
    assert out[0].page_content == SANITY_DOCS[FRUIT]
    assert [d.page_content.strip() for d in out[-2:]] == ["", ""]  # empty documents rank last, scored 0
    assert all(d.metadata["relevance_score"] == 0.0 and d.metadata["core_rerank_score"] is None for d in out[-2:])
    assert out[-1].metadata.get("x") == 1 or out[-2].metadata.get("x") == 1


def test_metadata_is_valid_json_with_empty_documents(compressor, default_rr):
    docs = sanity_documents()
    docs = [*docs[:3], Document(page_content="", id="empty"), docs[3], Document(page_content=" \n\t ", id="blank")]
    texts = [d.page_content for d in docs]
    expected = default_rr.rank(FRUIT_Q, texts)
    assert [r.score for r in expected[-2:]] == [-math.inf, -math.inf]  # the engine's raw score of an empty text

    for out in (
        compressor.compress_documents(docs, FRUIT_Q),
        asyncio.run(compressor.acompress_documents(docs, FRUIT_Q)),
    ):
        assert [d.id for d in out] == [docs[i].id for i in expected.indices]
        assert {d.id for d in out[-2:]} == {"empty", "blank"}
        for d, r in zip(out, expected):
            encoded = json.dumps(d.metadata, allow_nan=False)  # no -inf / NaN: strict JSON parsers accept it
            assert json.loads(encoded) == d.metadata
            assert (d.metadata["core_rerank_score"] is None) == (r.json_score is None)
        assert all(d.metadata["core_rerank_score"] is None and d.metadata["relevance_score"] == 0.0 for d in out[-2:])
        real = out[:-2]
        assert all(math.isfinite(d.metadata["core_rerank_score"]) for d in real)
        assert [d.metadata["core_rerank_score"] for d in real] == pytest.approx([r.score for r in expected[:-2]])
        assert real[0].page_content == SANITY_DOCS[FRUIT]


# ---------------------------------------------------------------- async
CONCURRENT_CALLS = 4


def test_async_matches_sync_and_concurrent_matches_sequential(compressor):
    docs = sanity_documents()
    queries = [q for q, _ in SANITY_QUERIES[:4]]
    sequential = {q: compressor.compress_documents(docs, q) for q in queries}
    assert len({tuple(d.id for d in out) for out in sequential.values()}) == len(queries)  # distinct orders
    calls = [queries[i % len(queries)] for i in range(CONCURRENT_CALLS)]

    engine = compressor.engine
    scoring_threads: set[int] = set()
    real_rank = engine.rank

    def rank_and_note_thread(*args, **kwargs):
        scoring_threads.add(threading.get_ident())
        return real_rank(*args, **kwargs)

    async def run():
        loop_thread = threading.get_ident()
        results = await asyncio.gather(*(compressor.acompress_documents(docs, q) for q in calls))
        return results, loop_thread

    engine.rank = rank_and_note_thread  # instance attribute: the shared engine is restored below
    try:
        concurrent, loop_thread = asyncio.run(run())
    finally:
        del engine.rank
    assert len(concurrent) == CONCURRENT_CALLS
    for q, got in zip(calls, concurrent):
        want = sequential[q]
        # Exactly the sequential result: same documents (content, id, metadata) in the same order, same scores.
        assert got == want
        assert [d.metadata["relevance_score"] for d in got] == [d.metadata["relevance_score"] for d in want]
        assert [d.metadata["core_rerank_score"] for d in got] == [d.metadata["core_rerank_score"] for d in want]
    # The event loop never scored: every call ran in a worker thread.
    assert scoring_threads and loop_thread not in scoring_threads
    assert asyncio.run(compressor.acompress_documents([], FRUIT_Q)) == []
    with pytest.raises(ValueError):
        asyncio.run(compressor.acompress_documents(docs, ""))


# ---------------------------------------------------------------- serialization
def test_pydantic_round_trip():
    c = CoReRerank(top_n=2, min_relevance_score=0.01, heads=[(5, 1), (9, 3)], dtype="float32", max_doc_tokens=128)
    data = c.model_dump()
    assert data["heads"] == [(5, 1), (9, 3)] and data["top_n"] == 2
    assert CoReRerank(**data) == c
    assert CoReRerank.model_validate(data) == c
    assert CoReRerank.model_validate_json(c.model_dump_json()) == c
    built = CoReRerank.model_construct(**data)
    assert built.model_dump() == data


def test_round_tripped_compressor_ranks_the_same(compressor):
    original = CoReRerank(top_n=3)
    want = original.compress_documents(sanity_documents(), MOUNTAIN_Q)
    for clone in (
        CoReRerank(**original.model_dump()),
        CoReRerank.model_construct(**original.model_dump()),
        pickle.loads(pickle.dumps(original)),  # the engine is not pickled: rebuilt from the shared cache
        copy.deepcopy(original),
    ):
        got = clone.compress_documents(sanity_documents(), MOUNTAIN_Q)
        assert [d.id for d in got] == [d.id for d in want]
        assert clone.engine.loaded_model is original.engine.loaded_model
    assert len(pickle.dumps(original)) < 10_000


# ---------------------------------------------------------------- a real pipeline
class PromptCapture(BaseCallbackHandler):
    def __init__(self) -> None:
        self.prompts: list[list] = []

    def on_chat_model_start(self, serialized, messages, **kwargs) -> None:
        self.prompts.extend(messages)


@pytest.mark.slow  # a whole LCEL chain over embedded documents; the retriever pipeline is tested above
def test_contextual_compression_in_an_lcel_chain():
    from langchain_classic.retrievers import ContextualCompressionRetriever
    from langchain_core.language_models import FakeListChatModel
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_core.runnables import RunnablePassthrough

    queries, corpus = scifact_subset()
    _, base = scifact_retriever(corpus)
    retriever = ContextualCompressionRetriever(
        base_compressor=CoReRerank(top_n=3, max_doc_tokens=160), base_retriever=base
    )
    prompt = ChatPromptTemplate.from_messages([("system", "Context:\n{context}"), ("human", "{question}")])
    chain = (
        {"context": retriever | (lambda ds: "\n\n".join(d.page_content for d in ds)), "question": RunnablePassthrough()}
        | prompt
        | FakeListChatModel(responses=["an answer"] * len(SCIFACT_QUERIES))
        | StrOutputParser()
    )
    for qid in ("42", "248"):
        relevant = SCIFACT_QUERIES[qid]
        first_stage = [d.id for d in base.invoke(queries[qid])]
        assert relevant in first_stage and first_stage[0] != relevant  # the first stage ranks it below another
        reranked = retriever.invoke(queries[qid])
        assert next(d.id for d in reranked) == relevant  # ...and core-rerank moves it to the top
        assert all(d.id in first_stage for d in reranked)

        capture = PromptCapture()
        assert chain.invoke(queries[qid], config={"callbacks": [capture]}) == "an answer"
        system = capture.prompts[-1][0].content
        positions = [system.index(d.page_content) for d in reranked]
        assert positions == sorted(positions)  # the prompt holds the context in the re-ranked order
        assert system.index(corpus[relevant]["title"]) == len("Context:\n")  # the relevant abstract comes first


# ---------------------------------------------------------------- a model the application already holds
@pytest.fixture(scope="module")
def held(default_chat_model):
    """A Reranker on the full causal LM a chat application holds (``Reranker.from_model``)."""
    from core_rerank import Reranker

    model, tokenizer = default_chat_model
    return Reranker.from_model(model, tokenizer)


def test_a_ready_reranker_scores_with_the_held_model(held, default_chat_model):
    from core_rerank.loading import model_cache_info

    loads = model_cache_info().loads
    c = CoReRerank(reranker=held, top_n=3)
    assert c.engine is held and model_cache_info().loads == loads  # nothing loaded: the held model scores
    out = c.compress_documents(sanity_documents(), FRUIT_Q)
    expected = held.rank(FRUIT_Q, SANITY_DOCS, top_n=3)
    assert [d.id for d in out] == [f"id{i}" for i in expected.indices] and out[0].id == f"id{FRUIT}"
    assert [d.metadata["relevance_score"] for d in out] == [r.relevance_score for r in expected]
    assert [d.id for d in asyncio.run(c.acompress_documents(sanity_documents(), FRUIT_Q))] == [d.id for d in out]
    held_weights = {p.data_ptr() for p in default_chat_model[0].parameters()}
    assert {p.data_ptr() for p in c.engine.loaded_model.model.parameters()} <= held_weights


def test_a_ready_reranker_owns_the_engine_settings(held, default_chat_model):
    c = CoReRerank(reranker=held)
    # The fields describe the engine (so a dump records it): the model's name, its bundled heads, its dtype...
    assert c.model == held.source.location == default_chat_model[0].config.name_or_path
    assert (c.heads, c.dtype, c.device, c.quantization) == (None, "float32", "cpu", None)
    assert (c.max_doc_tokens, c.max_tokens, c.max_documents) == (200, held.settings.max_tokens, held.max_documents)
    assert CoReRerank(reranker=held, dtype="float32", model=c.model).engine is held  # agreeing settings are fine
    with pytest.raises(ValidationError, match="give heads, max_doc_tokens to the Reranker"):
        CoReRerank(reranker=held, max_doc_tokens=64, heads="all")  # they could not be honoured
    with pytest.raises(ValidationError, match=r"must be a core_rerank\.Reranker"):
        CoReRerank(reranker="default")
    changed = c.model_copy()
    changed.max_doc_tokens = 64  # a setting changed after construction cannot reach the given reranker
    with pytest.raises(InvalidInputError, match="max_doc_tokens no longer describe"):
        changed.compress_documents(sanity_documents(), FRUIT_Q)
    assert c.model_copy(update={"top_n": 1}).compress_documents(sanity_documents(), FRUIT_Q)[0].id == f"id{FRUIT}"


def test_a_ready_reranker_is_not_serialized_but_its_settings_are(held):
    c = CoReRerank(reranker=held, top_n=2)
    data = c.model_dump()
    assert "reranker" not in data and data["model"] == c.model and data["dtype"] == "float32"
    json.dumps(data)
    assert copy.deepcopy(c).engine.loaded_model is held.loaded_model  # a copy shares the model, never duplicates it
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(c)
    # Rebuilt from its dump, the wrapper loads the same model by name (core-rerank's own load) and ranks alike.
    rebuilt = CoReRerank(**data)
    assert rebuilt.reranker is None and rebuilt.engine is not held
    assert rebuilt.engine.loaded_model.layers_loaded == held.loaded_model.layers_loaded
    want = [(d.id, d.metadata["core_rerank_score"]) for d in c.compress_documents(sanity_documents(), MOUNTAIN_Q)]
    got = [(d.id, d.metadata["core_rerank_score"]) for d in rebuilt.compress_documents(sanity_documents(), MOUNTAIN_Q)]
    assert [i for i, _ in got] == [i for i, _ in want] and [s for _, s in got] == pytest.approx([s for _, s in want])


def test_held_model_in_a_contextual_compression_retriever(held):
    from langchain_classic.retrievers import ContextualCompressionRetriever
    from langchain_core.vectorstores import InMemoryVectorStore

    store = InMemoryVectorStore.from_documents(sanity_documents(), minilm_embeddings())
    retriever = ContextualCompressionRetriever(
        base_compressor=CoReRerank(reranker=held, top_n=2),
        base_retriever=store.as_retriever(search_kwargs={"k": 6}),
    )
    for query, relevant in (SANITY_QUERIES[0], SANITY_QUERIES[5]):
        found = retriever.invoke(query)
        assert len(found) == 2 and found[0].id == f"id{relevant}"
        assert 0 < found[1].metadata["relevance_score"] < found[0].metadata["relevance_score"] < 1


def test_first_stage_scores_from_metadata_are_fused():
    """first_stage_score_key: the retriever's score in each document's metadata is fused with the attention,
    exactly as Reranker.rank(first_stage_scores=...) does; a document without one turns fusion off."""
    from core_rerank import Reranker

    docs = sanity_documents()
    for i, d in enumerate(docs):
        d.metadata["score"] = float(i)  # a retriever that favours the last documents
    fused = CoReRerank(top_n=None, first_stage_score_key="score").compress_documents(docs, FRUIT_Q)
    expected = Reranker().rank(FRUIT_Q, SANITY_DOCS, first_stage_scores=[float(i) for i in range(len(docs))])
    assert [d.id for d in fused] == [f"id{i}" for i in expected.indices]
    assert [d.id for d in fused] != [d.id for d in CoReRerank(top_n=None).compress_documents(docs, FRUIT_Q)]
    docs[0].metadata.pop("score")
    partial = CoReRerank(top_n=None, first_stage_score_key="score").compress_documents(docs, FRUIT_Q)
    assert [d.id for d in partial] == [f"id{i}" for i in Reranker().rank(FRUIT_Q, SANITY_DOCS).indices]


# ---------------------------------------------------------------- highlights and context pruning
def _sentences_in_order(pruned: str, original: str, marker: str = "[...]") -> bool:
    """Every kept piece of ``pruned`` is text of ``original``, in the original's order."""
    at = 0
    for piece in (p.strip() for p in pruned.split(marker)):
        if piece:
            found = original.find(piece, at)
            if found < 0:
                return False
            at = found + len(piece)
    return True


def test_pruned_copies_in_a_contextual_compression_retriever():
    """keep=0.5 inside a ContextualCompressionRetriever: the re-ranked copies hold their best sentences in order,
    within half of the list's tokens, with highlights and the kept ratio; the store's documents are untouched."""
    from langchain_classic.retrievers import ContextualCompressionRetriever

    queries, corpus = scifact_subset()
    docs, base = scifact_retriever(corpus)
    pruner = CoReRerank(top_n=3, max_doc_tokens=160, keep=0.5)
    retriever = ContextualCompressionRetriever(base_compressor=pruner, base_retriever=base)
    whole = ContextualCompressionRetriever(base_compressor=CoReRerank(top_n=3, max_doc_tokens=160), base_retriever=base)
    for qid in ("42", "248"):
        pruned = retriever.invoke(queries[qid])
        full = whole.invoke(queries[qid])
        assert [d.id for d in pruned] == [d.id for d in full]  # pruning leaves the ranking alone
        assert pruned[0].id == SCIFACT_QUERIES[qid]
        bests = []
        for p, f in zip(pruned, full):
            assert f.page_content == docs[[d.id for d in docs].index(f.id)].page_content  # store untouched
            assert len(p.page_content) <= len(f.page_content)
            assert _sentences_in_order(p.page_content, f.page_content)
            hl = p.metadata["highlights"]
            assert 0 < p.metadata["kept_ratio"] <= 1
            assert sum(h["score"] for h in hl) == pytest.approx(p.metadata["core_rerank_score"], rel=1e-9)
            assert json.loads(json.dumps(p.metadata)) == p.metadata
            best = max(hl, key=lambda h: h["score"] / max(h["tokens"], 1))  # the default rule: score per token
            assert best["text"] in p.page_content
            bests.append(best["tokens"])
        # The default budget is over the returned list: half of the three documents' tokens, past each one's best.
        kept = sum(p.metadata["kept_tokens"] for p in pruned)
        total = sum(round(p.metadata["kept_tokens"] / p.metadata["kept_ratio"]) for p in pruned)
        assert kept <= max(math.floor(0.5 * total), sum(bests)) and any("[...]" in p.page_content for p in pruned)


def test_highlights_without_pruning_and_a_bad_budget(compressor):
    lit = CoReRerank(top_n=None, highlights=True)
    out = lit.compress_documents(sanity_documents(), FRUIT_Q)
    plain = compressor.compress_documents(sanity_documents(), FRUIT_Q)
    assert [d.page_content for d in out] == [d.page_content for d in plain]  # whole documents
    for d in out:
        assert [d.page_content[h["start"] : h["end"]] for h in d.metadata["highlights"]] == [
            h["text"] for h in d.metadata["highlights"]
        ]
        assert "kept_ratio" not in d.metadata
    assert "highlights" not in plain[0].metadata
    for bad in ({"keep": 1.5}, {"keep": 0}, {"keep": 0.5, "prune_scope": "corpus"}):
        with pytest.raises(ValidationError):
            CoReRerank(**bad)
