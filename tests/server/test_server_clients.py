"""``core-rerank serve`` driven by clients nobody on this team wrote: the ``cohere`` SDK (v2 and v1 clients),
langchain-cohere's ``CohereRerank`` in a ``ContextualCompressionRetriever``, LlamaIndex's ``CohereRerank`` and its
text-embeddings-inference postprocessor in query engines. Each talks to a real uvicorn server on 127.0.0.1 (with an
API key, so authentication goes through each client too) and must get the in-process ``Reranker``'s order."""

from __future__ import annotations

import pytest
from conftest import SANITY_DOCS, SANITY_QUERIES, minilm_dir, minilm_embeddings
from server_harness import running  # skips without the [server] extra

for _name in ("cohere", "langchain_cohere", "llama_index.postprocessor.cohere_rerank",
              "llama_index.postprocessor.tei_rerank"):  # fmt: skip
    pytest.importorskip(
        _name, reason="the client libraries of the dev extra are not installed: pip install -e '.[dev]'"
    )

import cohere  # noqa: E402

from core_rerank.server import ServerSettings, create_app  # noqa: E402

KEY = "client-test-key"
QUERY, RELEVANT = SANITY_QUERIES[4]  # which organelle makes ATP: document 6


@pytest.fixture(scope="module")
def base(default_rr):
    with running(create_app(ServerSettings(api_key=KEY), default_rr)) as url:
        yield url


# ---------------------------------------------------------------- the cohere SDK
def test_cohere_client_v2(base, default_rr):
    client = cohere.ClientV2(api_key=KEY, base_url=base)
    out = client.rerank(model="rerank-v3.5", query=QUERY, documents=SANITY_DOCS, top_n=3)
    expected = default_rr.rank(QUERY, SANITY_DOCS, top_n=3)
    assert [r.index for r in out.results] == expected.indices and out.results[0].index == RELEVANT
    assert [r.relevance_score for r in out.results] == pytest.approx([e.relevance for e in expected], abs=1e-9)
    assert out.meta.api_version.version == "2" and out.id
    cut = client.rerank(model="rerank-v3.5", query=QUERY, documents=SANITY_DOCS, max_tokens_per_doc=8)
    assert cut.meta.warnings and "cut to their first 8 tokens" in cut.meta.warnings[0]


def test_cohere_client_v1(base, default_rr):
    client = cohere.Client(api_key=KEY, base_url=base)
    out = client.rerank(model="rerank-english-v3.0", query=QUERY, documents=SANITY_DOCS, top_n=4, return_documents=True)
    expected = default_rr.rank(QUERY, SANITY_DOCS, top_n=4)
    assert [r.index for r in out.results] == expected.indices
    assert [r.document.text for r in out.results] == [e.text for e in expected]
    assert [r.relevance_score for r in out.results] == pytest.approx([e.relevance for e in expected], abs=1e-9)
    # semi-structured documents: rank_fields picks what is scored
    docs = [{"body": text, "id": f"d{i}"} for i, text in enumerate(SANITY_DOCS)]
    fields = client.rerank(model="m", query=QUERY, documents=docs, rank_fields=["body"], top_n=2)
    by_fields = default_rr.rank(QUERY, [f"body: {d['body']}" for d in docs], top_n=2)
    assert [r.index for r in fields.results] == by_fields.indices


def test_cohere_sdk_sends_the_extension_fields_and_reads_them_back(base, default_rr):
    """The extension fields through the SDK's own door (additional_body_parameters): its results parse as
    always, and carry the highlights and the pruned text the engine gives in process."""
    client = cohere.ClientV2(api_key=KEY, base_url=base)
    docs = [SANITY_DOCS[i] + " " + SANITY_DOCS[j] for i, j in ((1, 3), (6, 0), (5, 7))]
    extra = {"return_highlights": True, "prune": {"keep": 0.5}}
    out = client.rerank(
        model="m", query=QUERY, documents=docs, top_n=2, request_options={"additional_body_parameters": extra}
    )
    expected = default_rr.compress(QUERY, docs, top_n=2, keep=0.5)
    assert [r.index for r in out.results] == expected.indices and out.results[0].index == 1
    for got, want in zip(out.results, expected):
        assert got.compression["text"] == want.compression.text
        assert [h["text"] for h in got.highlights] == [h.text for h in want.highlights]
    assert out.results[0].compression["text"] == SANITY_DOCS[6] + " [...]"


def test_cohere_sdk_raises_its_own_error_for_each_code(base):
    client = cohere.ClientV2(api_key=KEY, base_url=base)
    with pytest.raises(cohere.BadRequestError) as empty:
        client.rerank(model="m", query=QUERY, documents=[])
    assert empty.value.body["error_type"] == "Empty"
    with pytest.raises(cohere.UnprocessableEntityError) as invalid:
        client.rerank(model="m", query="  ", documents=SANITY_DOCS)
    assert invalid.value.body["error_type"] == "Validation"
    with pytest.raises(cohere.UnauthorizedError):
        cohere.ClientV2(api_key="wrong", base_url=base).rerank(model="m", query=QUERY, documents=SANITY_DOCS)


# ---------------------------------------------------------------- LangChain
def test_langchain_cohere_in_a_contextual_compression_retriever(base, default_rr):
    from langchain_classic.retrievers import ContextualCompressionRetriever
    from langchain_cohere import CohereRerank
    from langchain_core.documents import Document
    from langchain_core.vectorstores import InMemoryVectorStore

    docs = [Document(page_content=t, metadata={"doc": i}, id=f"d{i}") for i, t in enumerate(SANITY_DOCS)]
    first_stage = InMemoryVectorStore.from_documents(docs, minilm_embeddings()).as_retriever(search_kwargs={"k": 6})
    compressor = CohereRerank(model="rerank-v3.5", cohere_api_key=KEY, base_url=base, top_n=3)
    retriever = ContextualCompressionRetriever(base_compressor=compressor, base_retriever=first_stage)
    for query, relevant in (SANITY_QUERIES[0], SANITY_QUERIES[4]):
        candidates = first_stage.invoke(query)
        expected = default_rr.rank(query, [d.page_content for d in candidates], top_n=3)
        out = retriever.invoke(query)
        assert [d.metadata["doc"] for d in out] == [candidates[i].metadata["doc"] for i in expected.indices]
        assert out[0].metadata["doc"] == relevant
        assert [d.metadata["relevance_score"] for d in out] == pytest.approx([e.relevance for e in expected])


# ---------------------------------------------------------------- LlamaIndex
@pytest.fixture(scope="module")
def index():
    from llama_index.core import Document, VectorStoreIndex
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

    docs = [Document(text=text, id_=f"d{i}") for i, text in enumerate(SANITY_DOCS)]
    return VectorStoreIndex.from_documents(docs, embed_model=HuggingFaceEmbedding(model_name=minilm_dir()))


def _check_query_engine(index, postprocessor, default_rr, top_n: int) -> None:
    """The engine's sources are the in-process ranking of what the retriever gave, with its scores."""
    from llama_index.core.llms import MockLLM
    from llama_index.core.schema import MetadataMode

    engine = index.as_query_engine(llm=MockLLM(), similarity_top_k=6, node_postprocessors=[postprocessor])
    retriever = index.as_retriever(similarity_top_k=6)
    for query, relevant in (SANITY_QUERIES[0], SANITY_QUERIES[5]):
        candidates = retriever.retrieve(query)
        texts = [n.node.get_content(metadata_mode=MetadataMode.EMBED) for n in candidates]
        expected = default_rr.rank(query, texts, top_n=top_n)
        response = engine.query(query)
        sources = response.source_nodes
        assert [n.node.node_id for n in sources] == [candidates[i].node.node_id for i in expected.indices]
        assert sources[0].node.ref_doc_id == f"d{relevant}"
        assert [n.score for n in sources] == pytest.approx([e.relevance for e in expected])
        assert SANITY_DOCS[relevant] in str(response)  # MockLLM echoes its prompt: the context reached it


def test_llamaindex_cohere_rerank_in_a_query_engine(base, index, default_rr):
    from llama_index.postprocessor.cohere_rerank import CohereRerank

    _check_query_engine(index, CohereRerank(api_key=KEY, base_url=base, top_n=2, max_retries=1), default_rr, 2)


def test_llamaindex_tei_rerank_in_a_query_engine(base, index, default_rr):
    from llama_index.postprocessor.tei_rerank import TextEmbeddingInference

    post = TextEmbeddingInference(base_url=base, top_n=3, auth_token=f"Bearer {KEY}", timeout=300)
    _check_query_engine(index, post, default_rr, 3)
