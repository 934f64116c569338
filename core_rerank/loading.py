"""Load a model truncated after its deepest selected layer, dense or 4-bit, once per process.

Truncation sets the config's layer count before the weights load, and loads the bare decoder
(``AutoModel``): later layers and the LM head are never allocated. Layer l's attention depends
only on layers < l, so the selected heads see bit-identical inputs (docs/method.md, section 5).
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import logging
import threading
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import capture
from .errors import (
    DependencyMissingError,
    DeviceUnavailableError,
    InvalidInputError,
    InvalidInputTypeError,
    QuantizationError,
    UnsupportedModelError,
)
from .kv_cache import DocumentKVCache
from .load_errors import caused_by, explain_load_failure
from .once import OncePerKey
from .sources import ModelSource, Weights, forget_cached_copy, weights

logger = logging.getLogger(__name__)

__all__ = [
    "AUTO_4BIT_PARAMETERS",
    "CacheInfo",
    "LoadedModel",
    "ModelShape",
    "clear_model_cache",
    "describe_model",
    "load_model",
    "model_cache_info",
    "model_shape",
    "resolve_device",
    "resolve_dtype",
    "resolve_quantization",
    "wrap_model",
]

QUANTIZATIONS = (None, "4bit", "8bit")
_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


@dataclass(frozen=True)
class ModelShape:
    """The full model's attention shape, read from its config before any weights load."""

    num_layers: int
    num_heads: int
    num_kv_heads: int
    context_length: int
    layer_parameters: int = 0  # estimated, one decoder layer
    embedding_parameters: int = 0

    def parameters(self, num_layers: int) -> int:
        """Estimated parameter count of the model cut to ``num_layers`` layers (no LM head)."""
        return self.embedding_parameters + num_layers * self.layer_parameters


@dataclass
class LoadedModel:
    """A loaded, truncated decoder shared by every reranker with the same settings."""

    model: Any
    tokenizer: Any
    source: ModelSource
    shape: ModelShape
    layers_loaded: int
    dtype: torch.dtype
    quantization: str | None
    device: str
    lock: threading.RLock = field(default_factory=threading.RLock)
    kv_cache: DocumentKVCache = field(default_factory=DocumentKVCache)
    """Document keys and values of block attention, shared by every reranker on this model."""
    engine: Any = None
    """What runs the prompts when transformers does not (``None``: ``model`` does): a
    :class:`core_rerank.vllm_backend.VllmEngine` for ``Reranker.from_vllm``, whose ``model`` is ``None``."""

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def weights_version(self) -> int:
        """A number that changes when any weight tensor is changed in place (an optimizer step, ``load_state_dict``
        on a model shared through ``from_model``): the sum of torch's per-tensor version counters. Part of the
        document KV cache's key, so keys and values computed with older weights are never read."""
        return sum(getattr(p, "_version", 0) for p in self.model.parameters())


_models: OncePerKey[LoadedModel] = OncePerKey()


@dataclass(frozen=True)
class CacheInfo:
    """How many models this process has loaded from disk, and how many it holds now."""

    loads: int
    models: int


def model_cache_info() -> CacheInfo:
    """Counters of the process-wide model cache (a load that was shared does not count)."""
    return CacheInfo(_models.builds, len(_models))


def _load_config(where: Weights, source: ModelSource, local_files_only: bool | None):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(
            where.location, revision=source.revision, **where.kwargs, **_offline_kwargs(local_files_only)
        )
    except Exception as exc:
        raise explain_load_failure(exc, source.model_id, where.location, local_files_only) from exc


def _offline_kwargs(local_files_only: bool | None) -> dict:
    return {} if local_files_only is None else {"local_files_only": local_files_only}


def model_shape(config) -> ModelShape:
    """Layer/head/kv-head counts and context length of a (possibly multimodal) config."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    hidden = getattr(text, "hidden_size", 0) or 0
    head_dim = getattr(text, "head_dim", None) or (hidden // heads if heads else 0)
    inter = getattr(text, "intermediate_size", 0) or 0
    return ModelShape(
        num_layers=text.num_hidden_layers,
        num_heads=heads,
        num_kv_heads=kv_heads,
        context_length=getattr(text, "max_position_embeddings", None) or 4096,
        layer_parameters=2 * hidden * head_dim * (heads + kv_heads) + 3 * hidden * inter,
        embedding_parameters=(getattr(text, "vocab_size", 0) or 0) * hidden,
    )


# Models at or above this size (after truncation) load in 4-bit on CUDA when quantization="auto".
AUTO_4BIT_PARAMETERS = 1_000_000_000


def resolve_quantization(quantization: str | None, device: str, shape: ModelShape, num_layers: int) -> str | None:
    """``"auto"``: 4-bit NF4 on CUDA for models of >= 1B parameters after truncation, else dense.

    On CPU, dense bfloat16 is both faster and closer to float32 than bitsandbytes 4-bit (README,
    "Precision and quantization"), so auto never quantizes there.
    """
    if quantization != "auto":
        if quantization not in QUANTIZATIONS:
            raise InvalidInputError(f"quantization must be 'auto', None, '4bit' or '8bit', got {quantization!r}")
        return quantization
    if device.startswith("cuda") and shape.parameters(num_layers) >= AUTO_4BIT_PARAMETERS:
        if importlib.util.find_spec("bitsandbytes") is None:
            raise DependencyMissingError(
                "quantization='auto' loads models of 1B+ parameters in 4-bit on CUDA, which needs bitsandbytes: "
                "pip install 'core-rerank[quant]', or pass quantization=None to load it dense"
            )
        return "4bit"
    return None


def resolve_device(device: str | None) -> str:
    """``None`` picks CUDA when available, else CPU; an unavailable device is an error, not a fallback."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not isinstance(device, (str, torch.device)):
        raise InvalidInputTypeError(f"device must be a string such as 'cpu' or 'cuda', got {type(device).__name__}")
    device = str(device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceUnavailableError(
            f"device={device!r} was requested but CUDA is not available to this torch "
            f"({torch.__version__}). Install a CUDA build of torch on a GPU machine, or pass device='cpu'."
        )
    if device == "mps" and not torch.backends.mps.is_available():
        raise DeviceUnavailableError("device='mps' was requested but MPS is not available; pass device='cpu'.")
    return device


def cpu_has_native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX): only then is bf16 faster than fp32."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def resolve_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    """The compute dtype: the caller's, else the fastest one that keeps the rankings (README, "Precision").

    ``None``: bfloat16 on CUDA GPUs that support it and float16 on older ones; on CPU, bfloat16 where the
    CPU has native bfloat16 instructions and float32 elsewhere (emulated bfloat16 is slower than float32
    there, docs/benchmarks.md); float16 on Apple MPS.
    """
    if dtype is None:
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device == "mps":
            return torch.float16
        return torch.bfloat16 if cpu_has_native_bfloat16() else torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in set(_DTYPES.values()):
            raise InvalidInputError(f"dtype must be a floating dtype ({sorted(set(_DTYPES))}), got {dtype}")
        return dtype
    if not isinstance(dtype, str):
        raise InvalidInputTypeError(f"dtype must be a string or a torch.dtype, got {type(dtype).__name__}")
    try:
        return _DTYPES[dtype.lower().removeprefix("torch.")]
    except KeyError:
        raise InvalidInputError(f"dtype must be one of {sorted(_DTYPES)} or a torch.dtype, got {dtype!r}") from None


def _quantization_config(quantization: str | None, dtype: torch.dtype):
    if quantization is None:
        return None
    if quantization not in QUANTIZATIONS:
        raise InvalidInputError(f"quantization must be 'auto', None, '4bit' or '8bit', got {quantization!r}")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise DependencyMissingError(
            f"quantization={quantization!r} needs bitsandbytes: pip install 'core-rerank[quant]'"
        )
    from transformers import BitsAndBytesConfig

    if quantization == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
    return BitsAndBytesConfig(load_in_8bit=True)


def read_shape(source: ModelSource, local_files_only: bool | None = None) -> tuple[ModelShape, Weights]:
    """The model's shape and where its weights load from (dequantizing a GGUF once)."""
    where = weights(source)
    return model_shape(_load_config(where, source, local_files_only)), where


def load_model(
    source: ModelSource,
    num_layers: int,
    *,
    dtype: torch.dtype,
    quantization: str | None,
    device: str,
    local_files_only: bool | None = None,
) -> LoadedModel:
    """Load (or reuse) ``source`` with only its first ``num_layers`` layers."""
    key = (source, num_layers, dtype, quantization, device, local_files_only)
    return _models.get(key, lambda: _load(source, num_layers, dtype, quantization, device, local_files_only))


_DAMAGED_FILE = ("SafetensorError", "JSONDecodeError", "UnicodeDecodeError", "EOFError", "HeaderTooLarge")


def _load(source, num_layers, dtype, quantization, device, local_files_only) -> LoadedModel:
    """Load from :func:`weights`; a dequantized copy in the cache whose files fail to read (damaged in a way its
    size checks did not show) is deleted, rebuilt and loaded again, once."""
    where = weights(source)
    try:
        return _load_from(where, source, num_layers, dtype, quantization, device, local_files_only)
    except Exception as exc:
        if not caused_by(exc, *_DAMAGED_FILE) or not forget_cached_copy(where.location, f"{type(exc).__name__}: {exc}"):
            raise
    return _load_from(weights(source), source, num_layers, dtype, quantization, device, local_files_only)


def _load_from(where: Weights, source, num_layers, dtype, quantization, device, local_files_only) -> LoadedModel:
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    quant_config = _quantization_config(quantization, dtype)
    if quant_config is not None and where.gguf_file is not None:
        raise QuantizationError(
            f"{source.model_id}: bitsandbytes cannot quantize a model read from its GGUF file in memory (the "
            "dequantized cache could not be written): make the cache writable, or use quantization=None"
        )
    config = _load_config(where, source, local_files_only)
    shape = model_shape(config)  # of the full model: read before the layer count is cut below
    if not 1 <= num_layers <= shape.num_layers:
        raise InvalidInputError(f"cannot keep {num_layers} layers of a {shape.num_layers}-layer model")
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    text_config.num_hidden_layers = num_layers
    if isinstance(getattr(text_config, "layer_types", None), list):
        text_config.layer_types = text_config.layer_types[:num_layers]
    kwargs: dict[str, Any] = dict(
        config=config,
        dtype=dtype,
        attn_implementation=capture.ATTN_IMPLEMENTATION,
        revision=source.revision,
        **where.kwargs,
        **_offline_kwargs(local_files_only),
    )
    if quant_config is not None:
        kwargs["quantization_config"] = quant_config
        kwargs["device_map"] = {"": 0 if device == "cuda" else device}
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the dropped layers are reported as "unused weights": expected
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            where.location, revision=source.revision, **where.kwargs, **_offline_kwargs(local_files_only)
        )
        model = AutoModel.from_pretrained(where.location, **kwargs)
    except Exception as exc:
        bnb_failed = isinstance(exc, RuntimeError) and quant_config is not None
        if bnb_failed and "out of memory" not in str(exc).lower():
            raise DeviceUnavailableError(
                f"bitsandbytes {quantization} could not load on device {device!r}: {exc}. "
                "Use quantization=None (dense) or a device bitsandbytes supports."
            ) from exc
        raise explain_load_failure(exc, source.model_id, where.location, local_files_only, quantization) from exc
    finally:
        hf_logging.set_verbosity(verbosity)
    _refuse_encoder(model, source.model_id)
    if quant_config is None:
        model.to(device)
    model.eval()
    _require_fast_tokenizer(tokenizer, source.model_id)
    return LoadedModel(model, tokenizer, source, shape, num_layers, dtype, quantization, device)


def _refuse_encoder(model: torch.nn.Module, model_id: str) -> None:
    if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        raise UnsupportedModelError(
            f"model {model_id!r} is an encoder-decoder (such as T5 or BART), not a decoder-only language model. "
            "core-rerank reads the attention of a decoder (causal) language model."
        )
    # Decoder-layer attention carries a layer_idx (for the KV cache); a vision tower's usually does not.
    if any(getattr(m, "is_causal", None) is False and hasattr(m, "layer_idx") for m in model.modules()):
        raise UnsupportedModelError(
            f"model {model_id!r} attends in both directions: it is an encoder such as BERT, not a decoder. "
            "core-rerank reads the attention of a decoder (causal) language model."
        )


def _require_fast_tokenizer(tokenizer: Any, model_id: str) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise UnsupportedModelError(
            f"model {model_id!r} has no fast tokenizer; core-rerank needs token offsets (tokenizer.json)"
        )


# ------------------------------------------------------------------ a model the caller already holds
def describe_model(model: Any) -> tuple[ModelSource, ModelShape]:
    """Name and shape of a Hugging Face model the caller loaded (``Reranker.from_model``), read from its config.

    The name is the config's ``name_or_path`` (what ``from_pretrained`` was given): a hub id as is, a
    directory by its last part, as ``Reranker(directory)`` names it; head lists are matched on it.
    Raises :class:`UnsupportedModelError` for encoders and encoder-decoders.
    """
    from transformers import PreTrainedModel

    if not isinstance(model, PreTrainedModel):
        raise InvalidInputTypeError(
            "from_model needs a loaded Hugging Face transformers model (a PreTrainedModel such as "
            f"AutoModelForCausalLM.from_pretrained(...)), got {type(model).__name__}"
        )
    name = str(getattr(model.config, "name_or_path", "") or "")
    if not name:
        model_id = f"<unnamed {type(model).__name__}>"
    elif Path(name).is_dir():
        model_id = Path(name).resolve().name
    else:
        model_id = name
    _refuse_encoder(model, model_id)
    return ModelSource("hf", model_id, name), model_shape(model.config)


def _quantization_of(model: Any) -> str | None:
    """How the caller's model is quantized, as ``Reranker.quantization`` reports it (``None``: dense)."""
    if getattr(model, "is_loaded_in_4bit", False):
        return "4bit"
    if getattr(model, "is_loaded_in_8bit", False):
        return "8bit"
    config = getattr(model.config, "quantization_config", None)
    method = config.get("quant_method") if isinstance(config, dict) else getattr(config, "quant_method", None)
    return None if method is None else str(getattr(method, "value", method))


def wrap_model(model: Any, tokenizer: Any, source: ModelSource, shape: ModelShape, num_layers: int) -> LoadedModel:
    """The caller's model as a :class:`LoadedModel` running only its first ``num_layers`` decoder layers.

    Nothing is loaded or copied: :func:`truncated_view` shares the model's weight tensors. dtype, device and
    quantization are the model's own. The tokenizer is copied (a few MB): fast tokenizers are not safe to use
    from two threads at once, and scoring toggles a setting of the Rust tokenizer on each call, which would
    leak into the caller's own tokenization (chat markers read as plain text) if it ran at the same moment.
    """
    _require_fast_tokenizer(tokenizer, source.model_id)
    if not 1 <= num_layers <= shape.num_layers:
        raise InvalidInputError(f"cannot keep {num_layers} layers of a {shape.num_layers}-layer model")
    first = next(model.parameters())
    view = truncated_view(model.get_decoder(), num_layers, source.model_id)
    if any(p.device.type == "meta" for p in view.parameters()):
        raise UnsupportedModelError(
            f"model {source.model_id!r} has offloaded weights (on the meta device, brought in for each forward pass "
            "by accelerate): from_model needs the first layers' weights in memory. Load the model without CPU or "
            "disk offload, or let core-rerank load it: Reranker(model=...)."
        )
    return LoadedModel(
        view,
        copy.deepcopy(tokenizer),
        source,
        shape,
        num_layers,
        model.dtype,
        _quantization_of(model),
        str(first.device),
    )


def truncated_view(decoder: torch.nn.Module, num_layers: int, model_id: str = "") -> torch.nn.Module:
    """A module of ``decoder``'s class that runs its first ``num_layers`` layers with core-rerank's attention.

    The view is made of new module objects around the very same parameter and buffer tensors (no weight is
    copied: ``data_ptr`` is shared), so the caller's model is never modified, not even for the length of a
    forward pass: its config and attention implementation, its train/eval mode and its hooks stay as they
    were, and it can generate on another thread while the view scores. The view has its own copy of the
    config, cut to ``num_layers`` layers and set to ``capture.ATTN_IMPLEMENTATION``; it is in eval mode; the
    layers after ``num_layers`` and the LM head are not part of it. Hooks the modules have when the view is
    made run in the view too (accelerate's device hooks are re-bound to the view's modules). The view reflects
    the model when it is made: in-place changes to the weights are seen, structural ones (new modules,
    adapters, hooks) are not, and a model moved to another device needs a new view.
    """
    config = decoder.config
    layers = [
        (name, child)
        for name, child in decoder.named_children()
        if isinstance(child, torch.nn.ModuleList) and len(child) == config.num_hidden_layers
    ]
    if len(layers) != 1:
        raise UnsupportedModelError(
            f"model {model_id!r}: cannot find its list of {config.num_hidden_layers} decoder layers "
            f"({type(decoder).__name__} has {len(layers)} candidate module lists)"
        )
    layers_name, all_layers = layers[0]
    view_config = copy.deepcopy(config)
    view_config.num_hidden_layers = num_layers
    if isinstance(getattr(view_config, "layer_types", None), list):
        view_config.layer_types = view_config.layer_types[:num_layers]
    view_config._attn_implementation = capture.ATTN_IMPLEMENTATION
    view_config.output_attentions = False
    view_config.output_hidden_states = False
    memo: dict[int, torch.nn.Module] = {}
    view = _clone_module(decoder, config, view_config, memo, skip=frozenset({id(all_layers)}))
    kept = torch.nn.ModuleList([_clone_module(layer, config, view_config, memo) for layer in all_layers[:num_layers]])
    view._modules[layers_name] = kept
    return view.eval()


def _clone_module(
    module: torch.nn.Module,
    config: Any,
    view_config: Any,
    memo: dict[int, torch.nn.Module],
    skip: frozenset[int] = frozenset(),
) -> torch.nn.Module:
    """A new module object of ``module``'s class sharing its parameters, buffers and hooks (the containers are
    copied, their tensors and functions are not); children are cloned the same way, except those in ``skip``."""
    if id(module) in memo:
        return memo[id(module)]
    new = object.__new__(type(module))
    state = dict(module.__dict__)
    for key, value in state.items():
        if value is config:
            state[key] = view_config
        elif isinstance(value, (dict, list, set)):
            state[key] = copy.copy(value)  # _parameters, _buffers, hook dicts, ...: same entries, own container
        elif isinstance(value, types.MethodType) and value.__self__ is module:
            state[key] = types.MethodType(value.__func__, new)  # e.g. accelerate's saved _old_forward
        elif isinstance(value, functools.partial) and value.args and value.args[0] is module:
            state[key] = functools.partial(value.func, new, *value.args[1:], **value.keywords)  # accelerate's forward
    new.__dict__.update(state)
    memo[id(module)] = new
    new.__dict__["_modules"] = {
        name: None if child is None or id(child) in skip else _clone_module(child, config, view_config, memo)
        for name, child in module._modules.items()
    }
    return new


def clear_model_cache() -> int:
    """Forget every loaded model (each is freed once no reranker holds it); returns how many were held."""
    return _models.clear()
