"""LlamaIndex integration: ``llama_index.postprocessor.core_rerank.CoReRerank`` on the real model and real LlamaIndex;
and one model shared by the LangChain and LlamaIndex wrappers."""

from __future__ import annotations

import asyncio
import copy
import json
import pickle
import subprocess
import sys
import threading
from pathlib import Path

import llama_index.postprocessor.core_rerank as li_pkg
import pytest
from conftest import SANITY_DOCS, SANITY_QUERIES, SCIFACT_QUERIES, minilm_dir, scifact_subset
from llama_index.core.bridge.pydantic import Field, ValidationError
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle, TextNode
from llama_index.postprocessor.core_rerank import CoReRerank

from core_rerank.errors import CoreRerankError, InvalidInputError, InvalidInputTypeError

FRUIT_Q, FRUIT = SANITY_QUERIES[1]
MOUNTAIN_Q, MOUNTAIN = SANITY_QUERIES[2]


def sanity_nodes() -> list[NodeWithScore]:
    # First-stage scores that put the documents in input order.
    return [
        NodeWithScore(node=TextNode(text=text, id_=f"n{i}", metadata={"source": f"doc{i}"}), score=1.0 - i / 10)
        for i, text in enumerate(SANITY_DOCS)
    ]


@pytest.fixture(scope="module")
def post() -> CoReRerank:
    return CoReRerank(top_n=None)


class EventCapture(BaseEventHandler):
    events: list = Field(default_factory=list)

    @classmethod
    def class_name(cls) -> str:
        return "EventCapture"

    def handle(self, event, **kwargs) -> None:
        if isinstance(event, (ReRankStartEvent, ReRankEndEvent)):
            self.events.append(event)


@pytest.fixture
def rerank_events():
    capture = EventCapture(events=[])
    dispatcher = get_dispatcher()
    dispatcher.add_event_handler(capture)
    yield capture.events
    dispatcher.event_handlers.remove(capture)


# ---------------------------------------------------------------- package and class
def test_namespace_package_layout():
    assert li_pkg.__all__ == ["CoReRerank"]
    assert issubclass(CoReRerank, BaseNodePostprocessor)
    assert CoReRerank.class_name() == "CoReRerank"
    here = Path(li_pkg.__file__).resolve().parent  # .../llama_index/postprocessor/core_rerank
    assert not (here.parent / "__init__.py").exists() and not (here.parent.parent / "__init__.py").exists()
    import llama_index.core  # the namespace still resolves llama-index-core's own modules

    assert llama_index.core.__file__
    p = CoReRerank()
    assert (p.model, p.top_n, p.min_relevance_score, p.keep_retrieval_score) == ("default", 3, None, False)


def test_max_documents_setting():
    from core_rerank.errors import TooManyDocumentsError
    from core_rerank.settings import DEFAULT_MAX_DOCUMENTS, option_names

    assert set(option_names()) <= set(CoReRerank.model_fields)
    assert CoReRerank().max_documents == DEFAULT_MAX_DOCUMENTS == CoReRerank().engine.max_documents
    nodes = sanity_nodes()
    capped = CoReRerank(max_documents=3, top_n=None)
    assert capped.engine.max_documents == 3
    assert len(capped.postprocess_nodes(nodes[:3], query_str=FRUIT_Q)) == 3
    with pytest.raises(TooManyDocumentsError, match="max_documents=3"):
        capped.postprocess_nodes(nodes, query_str=FRUIT_Q)
    with pytest.raises(TooManyDocumentsError):
        asyncio.run(capped.apostprocess_nodes(nodes, query_str=FRUIT_Q))
    unlimited = CoReRerank(max_documents=None, top_n=None)
    assert unlimited.engine.max_documents is None
    assert len(unlimited.postprocess_nodes(nodes, query_str=FRUIT_Q)) == len(nodes)
    assert CoReRerank.from_dict(capped.to_dict()).max_documents == 3
    for bad in (0, -5):
        with pytest.raises(ValidationError, match="max_documents"):
            CoReRerank(max_documents=bad)


def test_setting_docs_say_what_loads_and_which_dtype():
    fields = CoReRerank.model_fields
    model = fields["model"].description
    assert "never needs the network" in model and "another packaged model by name" in model
    assert "downloaded first when online" in model and "HF_HUB_OFFLINE=1 forbids downloads" in model
    assert "Nothing is downloaded" not in model
    dtype = fields["dtype"].description
    assert "CPUs with native bfloat16" in dtype and "float32 on other CPUs" in dtype
    assert "TooManyDocumentsError" in fields["max_documents"].description


def test_import_stays_light():
    # The engine's heavy modules load on first use, not when the integration is imported.
    script = (
        "import sys; from llama_index.postprocessor.core_rerank import CoReRerank; "
        "print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["[]"]


# ---------------------------------------------------------------- postprocess_nodes
def test_postprocess_sorts_and_scores(post, default_rr):
    nodes = sanity_nodes()
    before = [(n.node.node_id, n.score, dict(n.node.metadata)) for n in nodes]
    out = post.postprocess_nodes(nodes, query_str=FRUIT_Q)
    assert [(n.node.node_id, n.score, dict(n.node.metadata)) for n in nodes] == before  # inputs untouched

    # Like LlamaIndex's own rerankers, it scores the text an embedding sees (with embed-visible metadata).
    texts = [n.node.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes]
    assert texts[0] == f"source: doc0\n\n{SANITY_DOCS[0]}"
    expected = default_rr.rank(FRUIT_Q, texts)
    assert [n.node.node_id for n in out] == [f"n{i}" for i in expected.indices]
    assert out[0].node.node_id == f"n{FRUIT}"
    assert [n.score for n in out] == pytest.approx([r.relevance for r in expected], abs=1e-6)  # calibrated
    assert all(0 <= n.score <= 1 for n in out)
    assert all(n.node is nodes[r.index].node for n, r in zip(out, expected))  # same nodes, new scores
    assert "retrieval_score" not in out[0].node.metadata


def test_top_n_threshold_and_retrieval_score(post):
    nodes = sanity_nodes()
    full = post.postprocess_nodes(nodes, query_bundle=QueryBundle(MOUNTAIN_Q))
    assert full[0].node.node_id == f"n{MOUNTAIN}"

    kept = CoReRerank(keep_retrieval_score=True).postprocess_nodes(nodes, query_str=MOUNTAIN_Q)
    assert [n.node.node_id for n in kept] == [n.node.node_id for n in full[:3]]  # top_n defaults to 3
    for n in kept:
        first_stage = next(m for m in nodes if m.node.node_id == n.node.node_id)
        assert n.node.metadata == {**first_stage.node.metadata, "retrieval_score": first_stage.score}
        assert "retrieval_score" not in first_stage.node.metadata  # the retrieved node is not modified

    assert len(CoReRerank(top_n=50).postprocess_nodes(nodes[:4], query_str=MOUNTAIN_Q)) == 4
    cut = (full[1].score + full[2].score) / 2
    above = CoReRerank(top_n=None, min_relevance_score=cut).postprocess_nodes(nodes, query_str=MOUNTAIN_Q)
    assert [n.node.node_id for n in above] == [n.node.node_id for n in full[:2]]  # filters on NodeWithScore.score
    best = CoReRerank(top_n=1, min_relevance_score=cut).postprocess_nodes(nodes, query_str=MOUNTAIN_Q)
    assert [n.node.node_id for n in best] == [full[0].node.node_id]  # the filter applies before top_n
    assert CoReRerank(min_relevance_score=1.01).postprocess_nodes(nodes, query_str=MOUNTAIN_Q) == []
    with pytest.raises(ValidationError, match="min_relevance_score"):
        CoReRerank(min_relevance_score=float("nan"))


def test_unknown_settings_are_refused():
    # Nothing was released: the pre-release name score_threshold is gone, not an alias (CHANGELOG.md), and a
    # misspelled setting is an error, never silently ignored.
    for bad in ({"score_threshold": 0.5}, {"max_doc_token": 64}):
        with pytest.raises(ValidationError, match=next(iter(bad))):
            CoReRerank(**bad)
    saved = CoReRerank(top_n=2).to_dict()
    assert CoReRerank.from_dict(saved).top_n == 2  # its own dump (with class_name) loads


def test_field_descriptions_name_the_score_they_read():
    fields = CoReRerank.model_fields
    assert "NodeWithScore.score" in fields["min_relevance_score"].description
    assert "before top_n" in fields["min_relevance_score"].description
    assert fields["top_n"].description.startswith("Number of nodes kept")


def test_bad_input_the_llamaindex_way(post):
    # The engine's typed errors (CoreRerankError subclasses, and the builtins a LlamaIndex user catches).
    for nodes in (sanity_nodes(), []):  # checked even when there is nothing to rank
        with pytest.raises(InvalidInputError, match="needs a query"):
            post.postprocess_nodes(nodes)  # query_bundle is None
        with pytest.raises(InvalidInputError, match="needs a query"):
            asyncio.run(post.apostprocess_nodes(nodes))
        with pytest.raises(InvalidInputError, match="query is empty"):
            post.postprocess_nodes(nodes, query_str=" ")
        with pytest.raises(InvalidInputError, match="query is empty"):
            asyncio.run(post.apostprocess_nodes(nodes, query_bundle=QueryBundle("")))
        with pytest.raises(InvalidInputTypeError, match="query must be a string"):
            post.postprocess_nodes(nodes, query_bundle=QueryBundle(query_str=42))  # type: ignore[arg-type]
    assert issubclass(InvalidInputError, CoreRerankError) and issubclass(InvalidInputError, ValueError)
    assert issubclass(InvalidInputTypeError, InvalidInputError) and issubclass(InvalidInputTypeError, TypeError)
    assert post.postprocess_nodes([], query_str=FRUIT_Q) == []
    for top_n in (0, -2):
        with pytest.raises(ValidationError, match="top_n"):
            CoReRerank(top_n=top_n)

    empty = [NodeWithScore(node=TextNode(text="", id_="empty"), score=0.9)]
    out = post.postprocess_nodes(empty + sanity_nodes()[:3], query_str=FRUIT_Q)
    assert next(n.node.node_id for n in out) == f"n{FRUIT}"
    assert out[-1].node.node_id == "empty" and out[-1].score == 0.0  # a node without text ranks last


def test_scores_and_metadata_are_valid_json_with_empty_nodes(post):
    nodes = sanity_nodes()
    empties = [
        NodeWithScore(node=TextNode(text="", id_="empty"), score=0.5),
        NodeWithScore(node=TextNode(text=" \n\t ", id_="blank"), score=0.4),
    ]
    candidates = [*nodes[:3], empties[0], nodes[3], empties[1]]
    keep = CoReRerank(top_n=None, keep_retrieval_score=True)
    for out in (
        keep.postprocess_nodes(candidates, query_str=FRUIT_Q),
        asyncio.run(keep.apostprocess_nodes(candidates, query_str=FRUIT_Q)),
    ):
        assert out[0].node.node_id == f"n{FRUIT}"
        assert {n.node.node_id for n in out[-2:]} == {"empty", "blank"} and [n.score for n in out[-2:]] == [0.0, 0.0]
        for n in out:
            # Every score the wrapper returns or stores is finite: no -inf reaches a JSON encoder.
            json.dumps({"score": n.score, "metadata": n.node.metadata}, allow_nan=False)
            assert 0.0 <= n.score <= 1.0
        assert [n.node.metadata["retrieval_score"] for n in out[-2:]] in ([0.5, 0.4], [0.4, 0.5])
        assert json.loads(out[-1].to_json())["score"] == 0.0


def test_rerank_events(post, rerank_events):
    nodes = sanity_nodes()
    out = CoReRerank(top_n=2).postprocess_nodes(nodes, query_str=FRUIT_Q)
    start, end = rerank_events
    assert isinstance(start, ReRankStartEvent) and isinstance(end, ReRankEndEvent)
    assert start.query.query_str == FRUIT_Q and start.top_n == 2 and start.model_name == "default"
    assert [n.node.node_id for n in start.nodes] == [n.node.node_id for n in nodes]  # first-stage order
    assert [n.node.node_id for n in end.nodes] == [n.node.node_id for n in out]
    assert end.nodes[0].score == out[0].score


CONCURRENT_CALLS = 4


def test_async_path(post, rerank_events):
    nodes = sanity_nodes()
    queries = [q for q, _ in SANITY_QUERIES[:4]]
    sequential = {q: post.postprocess_nodes(nodes, query_str=q) for q in queries}
    assert len({tuple(n.node.node_id for n in out) for out in sequential.values()}) == len(queries)  # distinct
    calls = [queries[i % len(queries)] for i in range(CONCURRENT_CALLS)]
    del rerank_events[:]

    engine = post.engine
    scoring_threads: set[int] = set()
    real_rank = engine.rank

    def rank_and_note_thread(*args, **kwargs):
        scoring_threads.add(threading.get_ident())
        return real_rank(*args, **kwargs)

    async def run():
        loop_thread = threading.get_ident()
        results = await asyncio.gather(*(post.apostprocess_nodes(nodes, query_str=q) for q in calls))
        return results, loop_thread

    engine.rank = rank_and_note_thread  # instance attribute: the shared engine is restored below
    try:
        concurrent, loop_thread = asyncio.run(run())
    finally:
        del engine.rank
    assert len(concurrent) == CONCURRENT_CALLS
    for q, got in zip(calls, concurrent):
        want = sequential[q]
        # Exactly the sequential result: the same nodes in the same order, with the same scores.
        assert [(n.node.node_id, n.score) for n in got] == [(n.node.node_id, n.score) for n in want]
        assert all(g.node is w.node for g, w in zip(got, want))
    # The event loop never scored: every call ran in a worker thread.
    assert scoring_threads and loop_thread not in scoring_threads
    assert sum(isinstance(e, ReRankEndEvent) for e in rerank_events) == CONCURRENT_CALLS
    assert asyncio.run(post.apostprocess_nodes([], query_str=FRUIT_Q)) == []
    with pytest.raises(InvalidInputError, match="needs a query"):
        asyncio.run(post.apostprocess_nodes(nodes))


# ---------------------------------------------------------------- serialization
def test_to_dict_from_dict_round_trip():
    p = CoReRerank(top_n=2, heads=[(5, 1), (9, 3)], dtype="float32", keep_retrieval_score=True, min_relevance_score=0.1)
    data = p.to_dict()
    assert data["class_name"] == "CoReRerank" and data["top_n"] == 2 and data["keep_retrieval_score"] is True
    again = CoReRerank.from_dict(data)
    assert again.to_dict() == data
    assert CoReRerank.from_json(p.to_json()).to_dict() == data
    assert copy.deepcopy(p).to_dict() == data


def test_round_tripped_postprocessor_ranks_the_same():
    original = CoReRerank(top_n=3)
    want = original.postprocess_nodes(sanity_nodes(), query_str=MOUNTAIN_Q)
    clone = CoReRerank.from_dict(original.to_dict())
    got = clone.postprocess_nodes(sanity_nodes(), query_str=MOUNTAIN_Q)
    assert [(n.node.node_id, n.score) for n in got] == [(n.node.node_id, n.score) for n in want]
    assert clone.engine.loaded_model is original.engine.loaded_model


# ---------------------------------------------------------------- one model, two wrappers
def test_langchain_and_llamaindex_share_one_model(tmp_path):
    """Two wrappers configured alike load the model once. The model is one nobody else in the process loads (a tiny
    random-weight decoder saved just now), so what other tests loaded before never decides this one's result."""
    from conftest import save_tiny_model
    from langchain_core.documents import Document
    from langchain_corerank import CoReRerank as LangChainCoReRerank

    from core_rerank.loading import model_cache_info

    path = save_tiny_model(tmp_path / "only-here")
    settings = {"model": str(path), "heads": [(1, 0), (2, 3), (3, 1)], "dtype": "float32"}
    before = model_cache_info().loads
    lc = LangChainCoReRerank(**settings)
    li = CoReRerank(**settings)
    assert model_cache_info().loads == before  # lazy: nothing loads at construction
    lc.compress_documents([Document(page_content=t) for t in SANITY_DOCS[:3]], FRUIT_Q)
    li.postprocess_nodes(sanity_nodes()[:3], query_str=FRUIT_Q)
    assert model_cache_info().loads == before + 1  # loaded once, for both wrappers
    assert lc.engine is li.engine  # configured alike: one engine over one model
    assert lc.engine.loaded_model.model is li.engine.loaded_model.model


def test_default_wrappers_share_the_default_model(default_rr):
    from langchain_corerank import CoReRerank as LangChainCoReRerank

    assert LangChainCoReRerank().engine.loaded_model is CoReRerank().engine.loaded_model is default_rr.loaded_model


# ---------------------------------------------------------------- a real pipeline
def test_vector_store_index_query_engine(rerank_events):
    from llama_index.core import Document, VectorStoreIndex
    from llama_index.core.llms import MockLLM
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

    queries, corpus = scifact_subset()
    docs = [
        Document(text=f"{d['title']}\n{d['text']}", id_=d["_id"], metadata={"doc_id": d["_id"]},
                 excluded_embed_metadata_keys=["doc_id"], excluded_llm_metadata_keys=["doc_id"])
        for d in corpus.values()
    ]  # fmt: skip
    index = VectorStoreIndex.from_documents(docs, embed_model=HuggingFaceEmbedding(model_name=minilm_dir()))
    engine = index.as_query_engine(
        llm=MockLLM(),
        similarity_top_k=6,
        node_postprocessors=[CoReRerank(top_n=3, max_doc_tokens=160)],
    )
    for qid in ("338", "42"):
        relevant = SCIFACT_QUERIES[qid]
        del rerank_events[:]
        response = engine.query(queries[qid])
        start, end = rerank_events
        first_stage = [n.node.ref_doc_id for n in start.nodes]
        assert len(first_stage) == 6 and relevant in first_stage and first_stage[0] != relevant
        sources = response.source_nodes
        assert next(n.node.ref_doc_id for n in sources) == relevant  # re-ranked to the top
        assert len(sources) == 3 and [n.node.node_id for n in sources] == [n.node.node_id for n in end.nodes]
        scores = [n.score for n in sources]
        assert scores == sorted(scores, reverse=True) and all(0 < s < 1 for s in scores)
        assert corpus[relevant]["title"] in str(response)  # MockLLM echoes its prompt: the context reached it


# ---------------------------------------------------------------- a model the application already holds
@pytest.fixture(scope="module")
def held(default_chat_model):
    """A Reranker on the full causal LM a chat application holds (``Reranker.from_model``)."""
    from core_rerank import Reranker

    model, tokenizer = default_chat_model
    return Reranker.from_model(model, tokenizer)


def test_a_ready_reranker_scores_with_the_held_model(held, rerank_events):
    from core_rerank.loading import model_cache_info

    loads = model_cache_info().loads
    p = CoReRerank(reranker=held, top_n=3)
    assert p.engine is held and p.model == held.source.location  # the held model's name, for events and dumps
    out = p.postprocess_nodes(sanity_nodes(), query_str=FRUIT_Q)
    assert model_cache_info().loads == loads  # nothing loaded: the held model scored
    texts = [n.node.get_content(metadata_mode=MetadataMode.EMBED) for n in sanity_nodes()]
    expected = held.rank(FRUIT_Q, texts, top_n=3)
    assert [n.node.node_id for n in out] == [f"n{i}" for i in expected.indices] and out[0].node.node_id == f"n{FRUIT}"
    assert [n.score for n in out] == [r.relevance_score for r in expected]
    start, _ = rerank_events
    assert start.model_name == held.source.location
    again = asyncio.run(p.apostprocess_nodes(sanity_nodes(), query_str=FRUIT_Q))
    assert [n.node.node_id for n in again] == [n.node.node_id for n in out]
    with pytest.raises(ValidationError, match="give max_doc_tokens to the Reranker"):
        CoReRerank(reranker=held, max_doc_tokens=64)


def test_a_ready_reranker_is_not_serialized_but_its_settings_are(held):
    p = CoReRerank(reranker=held, top_n=2, keep_retrieval_score=True)
    data = p.to_dict()
    assert "reranker" not in data and data["model"] == held.source.location and data["dtype"] == "float32"
    json.dumps(data)
    again = CoReRerank.from_dict(data)
    assert again.reranker is None and again.to_dict() == data  # loads the same model by name on first use
    assert copy.deepcopy(p).engine.loaded_model is held.loaded_model  # a copy shares the model, never duplicates it
    # LlamaIndex's pickling drops what cannot be pickled (with a warning) and rebuilds from the rest: the settings.
    unpickled = pickle.loads(pickle.dumps(p))
    assert unpickled.reranker is None and unpickled.to_dict() == data


def test_held_model_in_a_vector_store_query_engine(held, rerank_events):
    from llama_index.core import Document, VectorStoreIndex
    from llama_index.core.llms import MockLLM
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

    docs = [Document(text=text, id_=f"d{i}") for i, text in enumerate(SANITY_DOCS)]
    index = VectorStoreIndex.from_documents(docs, embed_model=HuggingFaceEmbedding(model_name=minilm_dir()))
    engine = index.as_query_engine(
        llm=MockLLM(), similarity_top_k=6, node_postprocessors=[CoReRerank(reranker=held, top_n=2)]
    )
    for query, relevant in (SANITY_QUERIES[0], SANITY_QUERIES[5]):
        del rerank_events[:]
        response = engine.query(query)
        start, end = rerank_events
        assert len(start.nodes) == 6 and start.model_name == held.source.location
        sources = response.source_nodes
        assert len(sources) == 2 and sources[0].node.ref_doc_id == f"d{relevant}"
        assert [n.node.node_id for n in sources] == [n.node.node_id for n in end.nodes]
        assert SANITY_DOCS[relevant] in str(response)  # MockLLM echoes its prompt: the context reached it


def test_use_retrieval_scores_fuses_the_retrievers_scores():
    """use_retrieval_scores=True: NodeWithScore.score from the retriever is fused with the attention, as
    Reranker.rank(first_stage_scores=...) does; a node without a score turns fusion off; off by default."""
    from core_rerank import Reranker

    nodes = sanity_nodes()
    for i, n in enumerate(nodes):
        n.score = float(i)  # a retriever that favours the last nodes
    texts = [n.node.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes]
    fused = CoReRerank(top_n=None, use_retrieval_scores=True).postprocess_nodes(nodes, query_str=FRUIT_Q)
    expected = Reranker().rank(FRUIT_Q, texts, first_stage_scores=[float(i) for i in range(len(nodes))])
    assert [n.node.node_id for n in fused] == [f"n{i}" for i in expected.indices]
    plain = CoReRerank(top_n=None).postprocess_nodes(nodes, query_str=FRUIT_Q)
    assert [n.node.node_id for n in plain] == [f"n{i}" for i in Reranker().rank(FRUIT_Q, texts).indices]
    assert [n.node.node_id for n in fused] != [n.node.node_id for n in plain]
    nodes[0].score = None
    partial = CoReRerank(top_n=None, use_retrieval_scores=True).postprocess_nodes(nodes, query_str=FRUIT_Q)
    assert [n.node.node_id for n in partial] == [n.node.node_id for n in plain]


# ---------------------------------------------------------------- highlights and context pruning
def test_pruning_prunes_copies_of_the_node_text_and_never_its_metadata(post):
    """keep=0.4: each returned node is a copy whose text is its best sentences (offsets into that text), the
    metadata LlamaIndex scores with it is untouched, what the re-ranker adds stays out of the LLM's text, and the
    input nodes are unchanged."""
    two = [SANITY_DOCS[i] + " " + SANITY_DOCS[j] for i, j in ((1, 3), (5, 7), (0, 4))]
    nodes = [
        NodeWithScore(node=TextNode(text=t, id_=f"m{i}", metadata={"source": f"doc{i}"}), score=0.5)
        for i, t in enumerate(two)
    ]
    before = [n.node.model_dump() for n in nodes]
    out = CoReRerank(top_n=2, keep=0.4).postprocess_nodes(nodes, query_str=FRUIT_Q)
    assert [n.node.model_dump() for n in nodes] == before
    plain = post.postprocess_nodes(nodes, query_str=FRUIT_Q)[:2]
    assert [n.node.node_id for n in out] == [n.node.node_id for n in plain]
    top = out[0].node
    assert top.node_id == "m0" and top.text == SANITY_DOCS[1] + " [...]"  # the fruit sentence, the Bastille dropped
    assert top.metadata["source"] == "doc0" and 0 < top.metadata["kept_ratio"] < 1
    for h in top.metadata["highlights"]:
        assert two[0][h["start"] : h["end"]] == h["text"]  # offsets into the node's own text, not its metadata
    llm_text = top.get_content(metadata_mode=MetadataMode.LLM)
    assert "source: doc0" in llm_text and "highlights" not in llm_text and "kept_ratio" not in llm_text


def test_pruned_context_reaches_the_query_engines_llm():
    from llama_index.core import Document, VectorStoreIndex
    from llama_index.core.llms import MockLLM
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

    queries, corpus = scifact_subset()
    docs = [Document(text=f"{d['title']}\n{d['text']}", id_=d["_id"]) for d in corpus.values()]
    index = VectorStoreIndex.from_documents(docs, embed_model=HuggingFaceEmbedding(model_name=minilm_dir()))
    engine = index.as_query_engine(
        llm=MockLLM(), similarity_top_k=6, node_postprocessors=[CoReRerank(top_n=3, max_doc_tokens=160, keep=0.3)]
    )
    qid = "42"
    response = engine.query(queries[qid])
    sources = response.source_nodes
    assert sources[0].node.ref_doc_id == SCIFACT_QUERIES[qid]
    for n in sources:
        assert "[...]" in n.node.text and n.node.text in str(response)  # the pruned text is what the LLM read
        assert n.node.metadata["kept_ratio"] <= 0.3 or len(n.node.text.split("[...]")) <= 3
