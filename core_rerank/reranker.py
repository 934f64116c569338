"""``Reranker``: the one public entry point of the engine.

A reranker is a loaded, truncated model with its head list and its :class:`~core_rerank.EngineSettings`. It ranks
(``rank``, ``rank_batch``, ``score``) and, for research and benchmarks, shows every step of that on its public
engine API: :meth:`Reranker.prepare` (check and cut documents), :meth:`Reranker.plan` (place them and split them
into prompts that fit), :meth:`Reranker.signals` (run prompts, capture the selected heads' attention) and
:meth:`Reranker.window_scores` (the document scores of one prompt). The scoring formula itself is in
:mod:`core_rerank.scoring`.
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from . import highlights as sentences
from . import scoring
from .block import BlockLayout, BlockPrompt, block_context, supports_blocks
from .errors import (
    ContextLengthError,
    HeadListNotFoundError,
    InvalidInputError,
    InvalidInputTypeError,
    UnsupportedModelError,
)
from .head_signal import HeadSignals, PromptTokens, head_signals_many
from .heads import HeadList, HeadSpec, resolve_head_list
from .inputs import check_documents, check_first_stage_scores, check_query, check_threshold, check_top_n, document_text
from .loading import LoadedModel, load_model, read_shape, resolve_device, resolve_dtype, resolve_quantization
from .prompt import (
    GENERATION_INSTRUCTION,
    NULL_QUERY,
    TokenSpans,
    block_parts,
    build_prompt,
    chat_markers,
    cut_to_tokens,
    encode_prompt,
    plain_ids,
    plain_token_count,
    query_suffix,
)
from .results import RankedResults, RankResult
from .settings import DEFAULT_FUSION_WEIGHT, DEFAULT_MAX_TOKENS, LOAD_SETTINGS, EngineSettings
from .sources import resolve_source
from .windows import plan_windows

logger = logging.getLogger(__name__)

__all__ = ["BlockPrompt", "PreparedDocument", "Prompt", "Reranker", "Window", "WindowSignals"]

Document = str | Mapping[str, Any]

_PROGRESS_WINDOWS = 3  # show_progress_bar=None shows a bar for calls of at least this many windows


@dataclass(frozen=True)
class PreparedDocument:
    """One input document as the engine scores it: ``text`` as given (``title\\ntext`` for a dict), ``scored_text``
    after the per-document token budget (``tokens`` of them; ``truncated`` when cut), ``original`` the caller's
    object and ``index`` its input position."""

    index: int
    original: Any
    text: str
    scored_text: str
    tokens: int
    truncated: bool


@dataclass(frozen=True)
class Prompt:
    """One prompt ready to run, in token ids: the real prompt and the N/A prompt over the same documents, the
    token range of each one's query span, the token span of every document (placement order) and, per document,
    the character offsets of its span's tokens in its own text (what highlights map token scores back with)."""

    ids_query: list[int]
    query_rows: tuple[int, int]
    ids_null: list[int]
    null_rows: tuple[int, int]
    doc_spans: list[tuple[int, int]]
    doc_offsets: list[list[tuple[int, int]]] = field(default_factory=list)

    @property
    def length(self) -> int:
        return max(len(self.ids_query), len(self.ids_null))


@dataclass(frozen=True)
class Window:
    """One forward pass of a ranking: its documents in placement order (``placed[i]`` is at ``prompt.doc_spans[i]``)
    and its prompt (a :class:`Prompt`, or a :class:`~core_rerank.block.BlockPrompt` with ``attention="block"``)."""

    placed: list[PreparedDocument]
    prompt: Prompt | BlockPrompt


@dataclass(frozen=True)
class WindowSignals:
    """Attention signals of one prompt, and the prompt (where its parts sit, in token indices)."""

    prompt: Prompt | BlockPrompt
    signals: HeadSignals

    @property
    def doc_spans(self) -> list[tuple[int, int]]:
        return self.prompt.doc_spans


class Reranker:
    """Re-rank documents for a query with the attention of a few selected heads of a decoder LLM.

    ``Reranker(model, heads, **options)``: ``model`` and ``heads`` and every keyword option are the fields of
    :class:`~core_rerank.EngineSettings` (each documented there: ``quantization``, ``dtype``, ``device``,
    ``max_doc_tokens``, ``max_tokens``, ``max_documents``, ``fusion_weight``, ``attention``, ``kv_cache_mb``,
    ``order``, ``temperature``, ``local_files_only``, ``revision``, ``allow_other_model_heads``);
    ``Reranker.from_settings(settings)`` takes a settings object. An unknown option is an
    :class:`~core_rerank.InvalidInputTypeError` listing the known ones.
    ``model="default"`` is the embedded SmolLM2-135M-Instruct with its bundled CoRe heads: it never needs the
    network. The model is loaded only up to the deepest selected layer, once per process (rerankers that differ only
    in settings such as ``max_doc_tokens`` share it).
    """

    settings: EngineSettings
    head_list_match: str
    """How the head list was found: ``"given"``, by the model's name, or (``from_model``) by a fingerprint of its
    weights."""

    def __init__(self, model: str | os.PathLike = "default", heads: HeadSpec = None, **options: Any) -> None:
        settings = EngineSettings.from_options({"model": model, "heads": heads, **options})
        self._load(settings)

    @classmethod
    def from_settings(cls, settings: EngineSettings) -> Reranker:
        """The reranker these settings describe (loading its model, or sharing one already loaded)."""
        if not isinstance(settings, EngineSettings):
            raise InvalidInputTypeError(f"settings must be an EngineSettings, got {type(settings).__name__}")
        self = cls.__new__(cls)
        self._load(settings)
        return self

    def _load(self, settings: EngineSettings) -> None:
        self.source = resolve_source(settings.model, settings.revision)
        self.device = resolve_device(settings.device)
        self.dtype = resolve_dtype(settings.dtype, self.device)
        shape, _ = read_shape(self.source, settings.local_files_only)
        self.head_list: HeadList = resolve_head_list(
            settings.heads,
            self.source.model_id,
            shape.num_layers,
            shape.num_heads,
            shape.num_kv_heads,
            allow_other_model=settings.allow_other_model_heads,
        )
        self.head_list_match = "given" if settings.heads is not None else f"its name {self.source.model_id!r}"
        self.quantization = resolve_quantization(
            settings.quantization, self.device, shape, self.head_list.max_layer + 1
        )
        loaded = load_model(
            self.source,
            self.head_list.max_layer + 1,
            dtype=self.dtype,
            quantization=self.quantization,
            device=self.device,
            local_files_only=settings.local_files_only,
        )
        self._configure(loaded, settings)

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any, heads: HeadSpec = None, **options: Any) -> Reranker:
        """A reranker on a model you have already loaded, e.g. the one your chatbot generates with.

        ``model`` is a Hugging Face decoder: ``AutoModelForCausalLM.from_pretrained(...)`` (its LM head never
        runs) or a bare ``AutoModel`` decoder; ``tokenizer`` is its (fast) tokenizer. Nothing is loaded or
        copied: scoring runs the model's first layers, up to the deepest selected head, through a view that
        shares the model's weight tensors (``core_rerank.loading.truncated_view``). dtype, device and
        quantization (e.g. bitsandbytes 4-bit) are the model's own, so the options that choose them when loading
        (``model``, ``quantization``, ``dtype``, ``device``, ``local_files_only``, ``revision``) are refused here;
        the others are those of :class:`~core_rerank.EngineSettings`.

        Your model is left exactly as it is, even while scoring: the view has its own config (with core-rerank's
        attention function, which computes the outputs with SDPA and captures the selected heads' rows on the
        scoring thread only), its own eval mode and module objects, and the tokenizer is copied. So the model can
        keep its attention implementation and train/eval mode, and generate on another thread while this
        reranker scores; calls to this reranker from several threads are serialised, as for every reranker.
        The view is taken now: later in-place weight changes are seen; new modules, adapters or hooks, or moving
        the model to another device, need a new ``from_model``.

        ``heads=None`` picks the head list bundled for these weights, however they were loaded (a hub id, a
        directory, a GGUF file): found by the config's ``name_or_path``, else by a fingerprint of the weights
        (:mod:`core_rerank.recognition`); ``head_list_match`` says which. Weights without a bundled list raise
        :class:`~core_rerank.HeadListNotFoundError` unless ``heads`` is given. Encoders are refused with
        :class:`~core_rerank.UnsupportedModelError`.
        """
        from .loading import describe_model, wrap_model

        settings = _settings_of_loaded(
            heads,
            options,
            "from_model uses the model as you loaded it",
            "load the model with them, or let core-rerank load it: Reranker(model=..., ...)",
        )
        source, shape = describe_model(model)
        from .recognition import fingerprint_of

        head_list, source, match = _find_head_list(settings, source, shape, lambda: fingerprint_of(model), "from_model")
        logger.info("from_model: the %s, found by %s", head_list.describe(), match)
        loaded = wrap_model(model, tokenizer, source, shape, head_list.max_layer + 1)
        self = cls.__new__(cls)
        self.source, self.head_list, self.head_list_match = source, head_list, match
        self.device, self.dtype, self.quantization = loaded.device, loaded.dtype, loaded.quantization
        settings = settings.replace(
            model=source.setting,
            dtype=str(loaded.dtype).removeprefix("torch."),
            device=loaded.device,
            quantization=loaded.quantization if loaded.quantization in ("4bit", "8bit") else None,
        )
        self._configure(loaded, settings)
        return self

    @classmethod
    def from_vllm(cls, llm: Any, heads: HeadSpec = None, **options: Any) -> Reranker:
        """A reranker inside a ``vllm.LLM`` you already hold, e.g. the one that serves your generator: the same
        weights and KV cache, no second copy of the model (:mod:`core_rerank.vllm_backend`).

        The prompts, the N/A contrast, truncation, windows and results are the transformers engine's; only the
        forward passes run in vLLM, as prefill-only requests whose selected heads' post-RoPE queries and keys
        forward hooks record. Scores equal ``Reranker(<same weights>, dtype="float32")`` within float32 tolerance
        when the LLM computes in float32. The documents come first in every prompt, so vLLM's prefix cache serves
        them to the N/A pass, to every query over the same list, and to a generation whose prompt starts with them.

        ``llm`` needs ``enforce_eager=True`` (hooks do not run inside compiled graphs), with vLLM's engine in its own
        process ``worker_extension_cls=core_rerank.vllm_backend.EXTENSION``, and one worker (tensor and
        pipeline parallel size 1). ``heads=None`` picks the bundled list by the model's name, else by a fingerprint
        of its embedding weights (:class:`~core_rerank.HeadListNotFoundError` when neither matches). The options
        that choose how a model loads (``model``, ``quantization``, ``dtype``, ``device``, ...) are the LLM's and
        are refused here; ``attention="block"`` is not available on this engine. Calls are serialised; do not
        generate with the same ``LLM`` from another thread while it scores (``vllm.LLM`` is not thread-safe).
        """
        from .loading import model_shape
        from .sources import ModelSource
        from .vllm_backend import VllmEngine

        settings = _settings_of_loaded(
            heads, options, "from_vllm uses the LLM as you created it", "create the LLM with them"
        )
        if settings.attention == "block":
            raise UnsupportedModelError("attention='block' is not available with from_vllm: use attention='full'")
        engine = VllmEngine(llm)
        model_config = llm.llm_engine.vllm_config.model_config
        name = str(model_config.served_model_name or model_config.model)
        source = ModelSource("hf", os.path.basename(name.rstrip("/")) if os.path.isdir(name) else name, name)
        shape = model_shape(engine.config)
        shape = replace(shape, context_length=min(shape.context_length, engine.max_model_len - 1))
        head_list, source, match = _find_head_list(
            settings, source, shape, lambda: engine.info.get("fingerprint"), "from_vllm"
        )
        engine.check_heads(head_list.heads_by_layer, source.model_id)
        import copy

        tokenizer = copy.deepcopy(llm.get_tokenizer())
        dtype = model_config.dtype
        loaded = LoadedModel(None, tokenizer, source, shape, shape.num_layers, dtype, None, "vllm", engine=engine)
        self = cls.__new__(cls)
        self.source, self.head_list, self.head_list_match = source, head_list, match
        self.device, self.dtype, self.quantization = "vllm", dtype, None
        settings = settings.replace(model=source.setting, dtype=str(dtype).removeprefix("torch."))
        self._configure(loaded, settings)
        return self

    def _configure(self, loaded: LoadedModel, settings: EngineSettings) -> None:
        """What every constructor does once the model is loaded: read its prompt format, then apply ``settings``."""
        self._loaded: LoadedModel = loaded
        self._markers = chat_markers(loaded.tokenizer)
        self._overhead = len(self._encode(build_prompt(self._markers, [], NULL_QUERY)).ids)
        with loaded.lock:
            self._block_parts = block_parts(loaded.tokenizer, self._markers, self._add_special)
        self._apply(settings)

    def _apply(self, settings: EngineSettings) -> None:
        """The settings that need no model work: the context cap, the fusion weight, and the check that one document
        of ``max_doc_tokens`` fits ``max_tokens``."""
        context = self._loaded.shape.context_length
        if settings.max_tokens is not None and settings.max_tokens > context:
            logger.warning(
                "max_tokens=%d exceeds %s's context of %d tokens: using %d",
                settings.max_tokens,
                self.model_id,
                context,
                context,
            )
        max_tokens = min(settings.max_tokens or DEFAULT_MAX_TOKENS, context)
        if self._overhead + self._label_tokens(1) + settings.max_doc_tokens + 64 > max_tokens:
            raise InvalidInputError(
                f"max_tokens={max_tokens} cannot hold one document of max_doc_tokens={settings.max_doc_tokens} "
                f"plus the prompt ({self._overhead} tokens) and a query; raise max_tokens or lower max_doc_tokens"
            )
        if settings.attention == "block" and not supports_blocks(self._loaded.model.config):
            raise UnsupportedModelError(
                f"attention='block' needs full attention in every layer, and {self.model_id} has sliding-window "
                "layers (their KV cache cannot be put together from documents encoded apart): use attention='full'"
            )
        parts = self._block_parts
        self.block_layout = BlockLayout(parts.prefix, parts.separator, settings.max_doc_tokens + len(parts.separator))
        """Where block attention places the prefix, documents and query (:mod:`core_rerank.block`)."""
        if settings.attention == "block":
            self._loaded.kv_cache.reserve(settings.kv_cache_mb * 2**20)
        chosen = self.head_list.fusion
        self.settings = settings
        self.max_tokens = max_tokens
        self.fusion_weight = (
            settings.fusion_weight
            if settings.fusion_weight is not None
            else chosen.weight
            if chosen is not None
            else DEFAULT_FUSION_WEIGHT
        )

    def with_options(self, **changes: Any) -> Reranker:
        """A reranker on the same loaded model with some settings changed (``max_doc_tokens``, ``order``, ...): no
        second copy of the weights, no model work. Settings that choose the model (``LOAD_SETTINGS``) cannot change
        this way."""
        fixed = sorted(set(changes) & set(LOAD_SETTINGS))
        if fixed:
            raise InvalidInputError(f"{', '.join(fixed)} choose the model: build another Reranker for them")
        settings = EngineSettings.from_options({**self.settings.to_dict(), **changes})
        if settings == self.settings:
            return self
        clone = self.__copy__()
        clone._apply(settings)
        return clone

    # ------------------------------------------------------------------ settings as attributes
    @property
    def model_id(self) -> str:
        return self.source.model_id

    @property
    def loaded_model(self) -> LoadedModel:
        """The shared, truncated model (and its tokenizer) this reranker scores with."""
        return self._loaded

    @property
    def max_doc_tokens(self) -> int:
        return self.settings.max_doc_tokens

    @property
    def max_documents(self) -> int | None:
        return self.settings.max_documents

    @property
    def order(self) -> str:
        return self.settings.order

    @property
    def temperature(self) -> float | None:
        return self.settings.temperature

    @property
    def calibrated(self) -> bool:
        """Whether results carry a calibrated ``relevance`` (the head list has a fitted relevance map)."""
        return self.head_list.relevance_map_for(self.settings.attention) is not None

    # ------------------------------------------------------------------ ranking
    def rank(
        self,
        query: str,
        documents: Sequence[Document],
        top_n: int | None = None,
        min_score: float | None = None,
        *,
        first_stage_scores: Sequence[float] | None = None,
        show_progress_bar: bool | None = None,
        highlights: bool = False,
    ) -> RankedResults:
        """Documents ordered by relevance to ``query``, best first.

        ``top_n`` keeps the best n; ``min_score`` drops results whose ``score`` is below it. An empty
        ``documents`` list gives empty results.
        ``first_stage_scores``: the retriever's own score of each document (higher = better; BM25, cosine...),
        fused with the attention (``fusion_weight``); for the default model this ranked better than either alone
        behind BM25 and dense retrievers, not for every model (docs/retriever_study.md).
        ``show_progress_bar``: ``None`` shows one when the list needs several windows.
        ``highlights``: every result gets ``highlights``, the sentences of its scored text with their scores, from
        the same forward passes (:mod:`core_rerank.highlights`).
        """
        top_n = check_top_n(top_n)
        min_score = check_threshold("min_score", min_score)
        query = check_query(query)
        docs = self.prepare(documents)
        first = check_first_stage_scores(first_stage_scores, len(docs))
        if not docs:
            return RankedResults(query, [], 0, self.head_list.describe())
        tokens = [{}] if highlights else None
        raw, windows = self._score([query], docs, show_progress_bar, token_out=tokens)[0]
        return self._results(query, docs, raw, windows, top_n, min_score, first, tokens[0] if tokens else None)

    def compress(
        self,
        query: str,
        documents: Sequence[Document],
        top_n: int | None = None,
        *,
        keep: float | int | None = 0.5,
        scope: str = "list",
        min_sentence_score: float | None = None,
        marker: str = " [...] ",
        rank_by: str = "density",
        min_score: float | None = None,
        first_stage_scores: Sequence[float] | None = None,
        show_progress_bar: bool | None = None,
    ) -> RankedResults:
        """:meth:`rank` with ``highlights``, each result's text pruned to its best sentences: ``result.compression``
        holds the kept sentences in their original order (``marker`` where sentences were dropped) and the kept
        share of the document's tokens.

        ``keep``: the token budget, a fraction in (0, 1] (a ``float``) or a number of tokens (an ``int``); ``None``:
        no budget (``min_sentence_score`` alone decides). ``scope``: ``"list"`` (default) one budget over all the
        returned documents (their sentences compete: a document may keep only its best one); ``"document"`` gives
        every returned document its own. ``rank_by``: which sentences go first, ``"density"`` (default: score per
        token, what a token of the budget buys) or ``"score"``. The defaults are the rule chosen on dev sentence
        labels (docs/highlights.md, "Quality"). Sentences scoring below ``min_sentence_score`` are dropped. Every
        returned document keeps at least its best sentence; the text past ``max_doc_tokens`` is never kept. The
        other options are :meth:`rank`'s (``top_n`` applies before pruning: only returned documents share a list
        budget).
        """
        budget = sentences.check_budget(keep, scope, min_sentence_score, marker, rank_by)
        ranked = self.rank(
            query,
            documents,
            top_n,
            min_score,
            first_stage_scores=first_stage_scores,
            show_progress_bar=show_progress_bar,
            highlights=True,
        )
        results = self.prune(
            ranked,
            keep=budget.keep,
            scope=budget.scope,
            min_sentence_score=budget.min_score,
            marker=budget.marker,
            rank_by=budget.rank_by,
        )
        return RankedResults(ranked.query, results, ranked.num_windows, ranked.head_list)

    def prune(
        self,
        results: Sequence[RankResult],
        *,
        keep: float | int | None = 0.5,
        scope: str = "list",
        min_sentence_score: float | None = None,
        marker: str = " [...] ",
        rank_by: str = "density",
    ) -> list[RankResult]:
        """Copies of ``results`` (from ``rank(..., highlights=True)``, or a selection of them) with ``compression``
        set as :meth:`compress` sets it: what framework wrappers use after picking their ``top_n``."""
        budget = sentences.check_budget(keep, scope, min_sentence_score, marker, rank_by)
        if any(r.highlights is None for r in results):
            raise InvalidInputError("prune needs results ranked with highlights=True")
        totals = [r.tokens if not r.truncated else self._count(r.text) for r in results]
        pruned = sentences.prune([r.highlights for r in results], [r.text for r in results], totals, budget)
        return [replace(r, compression=c) for r, c in zip(results, pruned)]

    def score(self, query: str, documents: Sequence[Document], *, show_progress_bar: bool | None = None) -> list[float]:
        """Raw relevance scores in input order (``-inf`` for an empty document)."""
        query = check_query(query)
        docs = self.prepare(documents)
        return self._score([query], docs, show_progress_bar)[0][0] if docs else []

    def score_head_sets(
        self,
        query: str,
        documents: Sequence[Document],
        head_sets: Mapping[str, Sequence[tuple[int, int]]],
        *,
        contrast: bool = True,
    ) -> dict[str, list[float]]:
        """Scores in input order under several subsets of this reranker's heads, from the same forward
        passes (placement, cuts and windows exactly as :meth:`score`): how head lists are compared
        (evaluation, detection sweeps). ``contrast=False`` gives the attention masses without the N/A contrast
        and the mask (:func:`core_rerank.scoring.document_masses`)."""
        rows = self._head_rows(head_sets)
        query = check_query(query)
        docs = self.prepare(documents)
        if not docs:
            return {name: [] for name in rows}
        return self._score([query], docs, False, rows, contrast)[0][0]

    def rank_batch(
        self,
        queries: Sequence[str],
        documents: Sequence[Sequence[Document]] | Sequence[Document],
        top_n: int | None = None,
        min_score: float | None = None,
        show_progress_bar: bool | None = None,
        *,
        first_stage_scores: Sequence[Sequence[float]] | None = None,
        highlights: bool = False,
    ) -> list[RankedResults]:
        """Rank for many queries: ``documents`` is one list per query, or one list shared by all.

        Each result equals ``rank(query, ...)`` for its query. With one shared list, the queries are scored
        together: per window, the system turn and documents (the prompt's query-independent prefix) and the
        content-free N/A pass run once, and only each query's short suffix runs per query, so many queries
        over one list cost little more than one. ``show_progress_bar``: ``None`` shows one for several queries.
        ``first_stage_scores``: one list per query (see :meth:`rank`); ``highlights`` as in :meth:`rank`.
        """
        if isinstance(queries, str) or not isinstance(queries, Sequence):
            raise InvalidInputTypeError("queries must be a list of strings; use rank() for one query")
        shared = not documents or not all(isinstance(d, Sequence) and not isinstance(d, str) for d in documents)
        if not shared and len(documents) != len(queries):
            raise InvalidInputError(f"{len(queries)} queries but {len(documents)} document lists")
        if first_stage_scores is not None and (
            isinstance(first_stage_scores, (str, bytes))
            or not isinstance(first_stage_scores, Sequence)
            or len(first_stage_scores) != len(queries)
        ):
            raise InvalidInputError("first_stage_scores must hold one list of scores per query")
        firsts = list(first_stage_scores) if first_stage_scores is not None else [None] * len(queries)
        show = len(queries) > 1 if show_progress_bar is None else show_progress_bar
        if shared and queries:
            return self._rank_shared(queries, documents, top_n, min_score, show, firsts, highlights)
        from tqdm.auto import tqdm

        out = []
        for qi, query in enumerate(tqdm(queries, desc="re-ranking", unit="query", disable=not show)):
            docs = documents if shared else documents[qi]
            out.append(
                self.rank(
                    query,
                    docs,
                    top_n,
                    min_score,
                    first_stage_scores=firsts[qi],
                    show_progress_bar=False,
                    highlights=highlights,
                )
            )
        return out

    # ------------------------------------------------------------------ the engine, step by step (public API)
    def prepare(self, documents: Sequence[Document]) -> list[PreparedDocument]:
        """Check ``documents`` (types, ``max_documents``) and cut each to ``max_doc_tokens``: what every ranking
        scores, in input order."""
        documents = check_documents(documents, self.max_documents)
        texts = [document_text(i, d) for i, d in enumerate(documents)]
        with self._loaded.lock:
            cut = cut_to_tokens(self._loaded.tokenizer, texts, self.max_doc_tokens)
        docs = []
        for i, (text, (kept, tokens, truncated)) in enumerate(zip(texts, cut)):
            if truncated:
                logger.info("document %d truncated to %d tokens", i, self.max_doc_tokens)
            docs.append(PreparedDocument(i, documents[i], text, kept, tokens, truncated))
        return docs

    def placed(self, docs: Sequence[PreparedDocument]) -> list[PreparedDocument]:
        """``docs`` in the order the prompt holds them (``order``: ``"reverse"`` puts the first one last, nearest
        the query; with ``attention="block"`` there is no order and the input order is kept)."""
        return list(docs[::-1]) if self.order == "reverse" and self.settings.attention == "full" else list(docs)

    def prompt(self, query: str, texts: Sequence[str]) -> Prompt | BlockPrompt:
        """The prompt (real and N/A) holding ``texts`` in exactly this order (no placement, no cut, no window): a
        :class:`BlockPrompt` with ``attention="block"``."""
        if self.settings.attention == "block":
            return self._block_prompt(query, texts)
        real = build_prompt(self._markers, texts, query)
        null = build_prompt(self._markers, texts, NULL_QUERY)
        enc_r, enc_n = self._encode(real), self._encode(null)
        spans_r, spans_n = TokenSpans(enc_r.offsets), TokenSpans(enc_n.offsets)
        doc_spans = [spans_r(s) for s in real.doc_spans]
        offsets = [
            [(min(max(x - c0, 0), c1 - c0), min(max(y - c0, 0), c1 - c0)) for x, y in enc_r.offsets[t0:t1]]
            for (c0, c1), (t0, t1) in zip(real.doc_spans, doc_spans)
        ]
        return Prompt(enc_r.ids, spans_r(real.query_span), enc_n.ids, spans_n(null.query_span), doc_spans, offsets)

    def _block_prompt(self, query: str, texts: Sequence[str], clip: int | None = None) -> BlockPrompt:
        """The block prompt of ``texts``; ``clip`` cuts each one's token ids to that many (a text cut to
        ``max_doc_tokens`` may tokenize one token longer on its own than where it was cut: clipped, it never moves the
        layout's alignment point)."""
        with self._loaded.lock:
            tok = self._loaded.tokenizer
            docs = [plain_ids(tok, t)[:clip] for t in texts]
            real = query_suffix(tok, self._block_parts, query)
            null = query_suffix(tok, self._block_parts, NULL_QUERY)
        return BlockPrompt.build(self.block_layout, docs, real, null)

    def plan(self, query: str, docs: Sequence[PreparedDocument]) -> list[Window]:
        """The windows :meth:`rank` scores ``docs`` (non-empty, prepared) in for ``query``: the fewest whose
        prompts fit ``max_tokens``, dealt round-robin (docs/long-lists.md). Every prompt is built and measured here,
        so none can exceed it (label lengths and merges included). With ``attention="block"`` the documents are dealt
        in the order of their text, not their input order, so windows, like scores, do not depend on it."""
        block = self.settings.attention == "block"
        docs = sorted(docs, key=lambda d: (d.scored_text, d.index)) if block else list(docs)
        query_tokens = self._count(query)
        label = len(self.block_layout.separator) if block else self._label_tokens(len(docs))
        sizes = [d.tokens + label for d in docs]
        budget = self.max_tokens - self._overhead - query_tokens
        while True:
            if max(sizes) > budget:
                raise ContextLengthError(
                    f"the query is {query_tokens} tokens: with the prompt ({self._overhead} tokens) and the longest "
                    f"document ({max(sizes)} tokens with its label) it exceeds max_tokens={self.max_tokens}; "
                    "shorten the query, lower max_doc_tokens or raise max_tokens"
                )
            windows = []
            for group in plan_windows(sizes, budget):
                placed = self.placed([docs[j] for j in group])
                texts = [d.scored_text for d in placed]
                prompt = self._block_prompt(query, texts, self.max_doc_tokens) if block else self.prompt(query, texts)
                windows.append(Window(placed, prompt))
            over = max(w.prompt.length for w in windows) - self.max_tokens
            if over <= 0:
                return windows
            budget -= over  # tokens merged differently in place than alone: re-plan with the measured excess

    def signals(self, prompts: Sequence[Prompt | BlockPrompt]) -> list[HeadSignals]:
        """Run prompts that hold the same documents and differ only in their query (one per query): the shared
        prefix and the N/A suffix run once, then each query's suffix. The selected heads' attention signals, one per
        prompt, in order. Block prompts run on the documents' keys and values (from the document KV cache where it
        holds them)."""
        null = prompts[0]
        if isinstance(null, BlockPrompt):
            return self._block_signals(prompts)
        if any(p.ids_null != null.ids_null for p in prompts[1:]):
            raise InvalidInputError("prompts run together must hold the same documents")
        args = (
            self.head_list.heads_by_layer,
            [PromptTokens(p.ids_query, p.query_rows) for p in prompts],
            PromptTokens(null.ids_null, null.null_rows),
            max((b for p in prompts for _, b in p.doc_spans), default=0),
        )
        with self._loaded.lock:
            if self._loaded.engine is not None:  # another engine runs the model (vLLM: from_vllm)
                return self._loaded.engine.head_signals(*args, model_name=self.model_id)
            return head_signals_many(self._loaded.model, *args, model_name=self.model_id)

    def _block_signals(self, prompts: Sequence[BlockPrompt]) -> list[HeadSignals]:
        null = prompts[0]
        if any(not isinstance(p, BlockPrompt) or p.blocks != null.blocks or p.starts != null.starts for p in prompts):
            raise InvalidInputError("prompts run together must hold the same documents")
        kv_cache = self._loaded.kv_cache if self.settings.kv_cache_mb else None
        with self._loaded.lock:
            context = block_context(self._loaded.model, null, kv_cache, self._loaded.weights_version())
            return head_signals_many(
                self._loaded.model,
                self.head_list.heads_by_layer,
                [PromptTokens(p.ids_query, p.query_rows) for p in prompts],
                PromptTokens(null.ids_null, null.null_rows),
                null.context_tokens,
                model_name=self.model_id,
                context=context,
            )

    @staticmethod
    def window_scores(signals: HeadSignals, prompt: Prompt, rows: Sequence[int] | None = None, contrast: bool = True):
        """The document scores of one prompt (placement order) from the signal rows ``rows`` (default: every head
        of the list) summed, by :func:`core_rerank.scoring.document_scores` (``contrast=False``:
        :func:`~core_rerank.scoring.document_masses`)."""
        q = signals.query if rows is None else signals.query[list(rows)]
        if not contrast:
            return scoring.document_masses(q.sum(0), prompt.doc_spans)
        n = signals.null if rows is None else signals.null[list(rows)]
        return scoring.document_scores(q.sum(0), n.sum(0), prompt.doc_spans)

    @staticmethod
    def head_scores(signals: HeadSignals, prompt: Prompt) -> torch.Tensor:
        """(|H|, documents) the document score of each head alone (placement order): the per-head material of
        studies and detection sweeps."""
        return torch.tensor(
            [
                scoring.document_scores(signals.query[i], signals.null[i], prompt.doc_spans)
                for i in range(len(signals.heads))
            ],
            dtype=torch.float64,
        )

    def generation_prompt_ids(
        self, documents: Sequence[Document], question: str, instruction: str = GENERATION_INSTRUCTION
    ) -> list[int]:
        """Token ids of a prompt that asks the model to answer ``question`` from ``documents``, starting with exactly
        the tokens every re-ranking prompt over ``documents`` starts with (chat template, the documents as the
        re-ranking placed them), then ``instruction``, the question and the assistant turn. Generating from it on
        the LLM of :meth:`from_vllm` right after ranking the same documents lets vLLM's prefix cache serve the
        documents' KV instead of recomputing it. Raises :class:`~core_rerank.InvalidInputError` when the documents
        take more than one window (no one prompt holds them all)."""
        question = check_query(question)
        docs = self.prepare(documents)
        if not docs:
            raise InvalidInputError("generation_prompt_ids needs at least one document")
        windows = self.plan(question, docs)
        if len(windows) > 1 or isinstance(windows[0].prompt, BlockPrompt):
            raise InvalidInputError(
                f"{len(docs)} documents take {len(windows)} windows of max_tokens={self.max_tokens} (or block "
                "attention): no one prompt holds them all; pass fewer documents or raise max_tokens"
            )
        prompt = windows[0].prompt
        head = list(prompt.ids_null[: prompt.doc_spans[-1][1]])
        with self._loaded.lock:
            tok = self._loaded.tokenizer
            text = plain_ids(tok, f"\n\n{instruction}{question}")
            end = tok(self._markers.suffix, add_special_tokens=False)["input_ids"]  # the turn's end: special tokens
        return head + text + list(end)

    def attention_signals(self, query: str, texts: Sequence[str]) -> WindowSignals:
        """Per-head attention signals of one prompt holding ``texts`` in the given order (no truncation, no
        windowing): the raw material of scoring and of head detection.

        Raises :class:`~core_rerank.ContextLengthError` when the prompt exceeds ``max_tokens``.
        """
        prompt = self.prompt(query, texts)
        if prompt.length > self.max_tokens:
            raise ContextLengthError(
                f"the prompt is {prompt.length} tokens, over max_tokens={self.max_tokens}: pass fewer or shorter "
                "texts, or raise max_tokens"
            )
        return WindowSignals(prompt, self.signals([prompt])[0])

    # ------------------------------------------------------------------ objects
    def __repr__(self) -> str:
        quant = self.quantization or str(self.dtype).replace("torch.", "")
        return (
            f"Reranker(model={self.model_id!r}, heads={self.head_list.method}:{len(self.head_list.heads)}, "
            f"layers={self._loaded.layers_loaded}/{self._loaded.shape.num_layers}, {quant}, {self.device}"
            f"{', attention=block' if self.settings.attention == 'block' else ''})"
        )

    # A reranker is a handle on a loaded model: a copy, deep or not (of a framework wrapper holding it, say),
    # shares the model, whose weights are never duplicated.
    def __copy__(self) -> Reranker:
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        return clone

    def __deepcopy__(self, memo: dict) -> Reranker:
        return self.__copy__()

    def __reduce__(self) -> Any:
        raise TypeError(
            "a Reranker holds a loaded model and cannot be pickled: pickle its settings (reranker.settings, an "
            "EngineSettings) instead and build a new one with Reranker.from_settings"
        )

    # ---------------------------------------------------------------- internals
    def _relevance(
        self, raw: Sequence[float], docs: Sequence[PreparedDocument], windows: Sequence[int]
    ) -> list[float | None]:
        """Calibrated relevance of each raw score: the mode's map at the document's length and its window's size."""
        fit = self.head_list.relevance_map_for(self.settings.attention)
        if fit is None:
            return [None] * len(raw)
        sizes = Counter(windows)
        return [scoring.relevance(s, *fit.terms(d.tokens, sizes[w])) for s, d, w in zip(raw, docs, windows)]

    @property
    def _add_special(self) -> bool:
        # A chat template writes its own BOS; a base model needs the tokenizer's.
        return not self._markers.from_template

    def _encode(self, prompt):
        with self._loaded.lock:  # fast tokenizers are not safe to share across threads
            return encode_prompt(self._loaded.tokenizer, prompt, self._add_special)

    def _count(self, text: str) -> int:
        with self._loaded.lock:
            return plain_token_count(self._loaded.tokenizer, text)

    def _label_tokens(self, position: int) -> int:
        """Tokens of the "[i] " label and the separator after a document, at the largest position."""
        return self._count(f"[{position}] ") + self._count("\n\n")

    def _results(
        self,
        query: str,
        docs: list[PreparedDocument],
        raw: list[float],
        windows: list[int],
        top_n: int | None,
        min_score: float | None,
        first_stage: list[float] | None = None,
        tokens: Mapping[int, tuple[list[float], list[tuple[int, int]]]] | None = None,
    ) -> RankedResults:
        """Ranked results of one query from its raw scores and windows (input order), fused with the first
        stage's scores when given: sorted best first, then ``min_score`` and ``top_n`` applied, in that order.
        ``tokens``: each scored document's token contributions and offsets (:meth:`_score`'s ``token_out``): the
        results carry highlights."""
        final = raw if first_stage is None else scoring.fuse(raw, first_stage, self.fusion_weight)
        normalized = scoring.softmax(final, self.temperature)
        relevance = self._relevance(raw, docs, windows)
        order = sorted(range(len(docs)), key=lambda i: (-final[i], i))
        results = [
            RankResult(
                index=i,
                score=final[i],
                normalized_score=normalized[i],
                rank=r + 1,
                text=docs[i].text,
                document=docs[i].original,
                truncated=docs[i].truncated,
                tokens=docs[i].tokens,
                window=windows[i],
                relevance=relevance[i],
                attention_score=raw[i],
                first_stage_score=None if first_stage is None else first_stage[i],
                highlights=None if tokens is None else self._highlights(docs[i], tokens.get(i)),
            )
            for r, i in enumerate(order)
        ]
        if min_score is not None:
            results = [r for r in results if r.score >= min_score]
        if top_n is not None:
            results = results[:top_n]
        return RankedResults(query, results, max(windows) + 1, self.head_list.describe())

    def _highlights(
        self, doc: PreparedDocument, tokens: tuple[list[float], list[tuple[int, int]]] | None
    ) -> tuple[sentences.Highlight, ...]:
        if tokens is None:  # an empty document: nothing was read
            return ()
        contributions, offsets = tokens
        language = self.settings.sentence_language
        return tuple(sentences.highlights(doc.text, len(doc.scored_text), contributions, offsets, language))

    def _token_offsets(self, prompt: Prompt | BlockPrompt, k: int, doc: PreparedDocument) -> list[tuple[int, int]]:
        """Character offsets, in ``doc``'s text, of the tokens of the ``k``-th document span of ``prompt``."""
        if isinstance(prompt, Prompt):
            return prompt.doc_offsets[k]
        a, b = prompt.doc_spans[k]
        with self._loaded.lock:  # the block's ids are plain_ids of the scored text, clipped to the span
            enc = self._loaded.tokenizer(
                doc.scored_text, add_special_tokens=False, split_special_tokens=True, return_offsets_mapping=True
            )
        return [tuple(o) for o in enc["offset_mapping"][: b - a]]

    def _head_rows(self, head_sets: Mapping[str, Sequence[tuple[int, int]]]) -> dict[str, list[int]]:
        """Rows of each head set in this reranker's signals (its head list's order)."""
        row_of = {h: i for i, h in enumerate(self.head_list.heads)}
        rows = {}
        for name, heads in head_sets.items():
            missing = [h for h in heads if tuple(h) not in row_of]
            if missing:
                raise InvalidInputError(
                    f"head set {name!r}: heads {missing[:5]} are not in this reranker's {self.head_list.describe()}"
                )
            if not heads:
                raise InvalidInputError(f"head set {name!r} is empty")
            rows[name] = [row_of[tuple(h)] for h in heads]
        return rows

    def _score(
        self,
        queries: Sequence[str],
        docs: list[PreparedDocument],
        show_progress_bar: bool | None,
        head_rows: Mapping[str, list[int]] | None = None,
        contrast: bool = True,
        progress_label: str = "scoring windows",
        token_out: list[dict] | None = None,
    ) -> list[tuple[Any, list[int]]]:
        """For each query, the raw scores and window number of every document, in input order: one list of
        scores, or with ``head_rows`` one list per head set. ``token_out`` (one dict per query) receives, per
        document index, its tokens' contributions to its score (rescaled as the score is) and their character
        offsets in its text: the material of highlights.

        Each query's windows are planned as for that query alone (the budget depends on its length), so every
        query gets exactly the scores it gets on its own. Queries whose plans put the same documents in the
        same windows (all of them, unless their lengths straddle a window boundary) are scored together, one
        window at a time: the window's document prefix and N/A suffix run once, each query's suffix once.
        """
        from tqdm.auto import tqdm

        sets = dict(head_rows) if head_rows is not None else {"": None}
        raw = [{name: [-math.inf] * len(docs) for name in sets} for _ in queries]
        window_of = [[0] * len(docs) for _ in queries]
        live = [d for d in docs if d.scored_text.strip()]
        plans = [self.plan(q, live) if live else [] for q in queries]
        together: dict[tuple[tuple[int, ...], ...], list[int]] = {}
        for qi, plan in enumerate(plans):
            together.setdefault(tuple(tuple(d.index for d in w.placed) for w in plan), []).append(qi)
        total = sum(len(plans[members[0]]) for members in together.values())
        show = total >= _PROGRESS_WINDOWS if show_progress_bar is None else show_progress_bar
        with tqdm(total=total, desc=progress_label, unit="window", disable=not show) as bar:
            for members in together.values():
                plan = plans[members[0]]
                window_tokens = [sum(d.tokens for d in w.placed) for w in plan]
                mean_tokens = sum(window_tokens) / max(len(plan), 1)
                for w, window in enumerate(plan):
                    prompts = [plans[qi][w].prompt for qi in members]
                    # Attention mass spreads over the window's tokens: rescale so windows of different
                    # length give comparable scores (identity with a single window).
                    scale = window_tokens[w] / mean_tokens if window_tokens[w] else 1.0
                    for qi, prompt, signals in zip(members, prompts, self.signals(prompts)):
                        for name, rows in sets.items():
                            for d, score in zip(window.placed, self.window_scores(signals, prompt, rows, contrast)):
                                raw[qi][name][d.index] = score * scale
                        for d in window.placed:
                            window_of[qi][d.index] = w
                        if token_out is not None:
                            parts = scoring.token_contributions(
                                signals.query.sum(0), signals.null.sum(0), prompt.doc_spans
                            )
                            for k, (d, part) in enumerate(zip(window.placed, parts)):
                                offsets = self._token_offsets(prompt, k, d)
                                token_out[qi][d.index] = ((part * scale).tolist(), offsets)
                    bar.update()
        return [(r if head_rows is not None else r[""], w) for r, w in zip(raw, window_of)]

    def _rank_shared(
        self,
        queries: Sequence[str],
        documents: Sequence[Document],
        top_n: int | None,
        min_score: float | None,
        show_progress_bar: bool,
        first_stage_scores: Sequence[Sequence[float] | None],
        highlights: bool = False,
    ) -> list[RankedResults]:
        """``rank_batch`` over one shared list: inputs checked once (all queries before any model work),
        documents cut once, every query scored in the same forward passes."""
        top_n = check_top_n(top_n)
        min_score = check_threshold("min_score", min_score)
        queries = [check_query(q) for q in queries]
        docs = self.prepare(documents)
        firsts = [check_first_stage_scores(f, len(docs)) for f in first_stage_scores]
        if not docs:
            return [RankedResults(q, [], 0, self.head_list.describe()) for q in queries]
        tokens = [{} for _ in queries] if highlights else None
        scored = self._score(queries, docs, show_progress_bar, progress_label="re-ranking", token_out=tokens)
        return [
            self._results(q, docs, raw, windows, top_n, min_score, first, tokens[qi] if tokens else None)
            for qi, (q, (raw, windows), first) in enumerate(zip(queries, scored, firsts))
        ]


def _find_head_list(
    settings: EngineSettings, source: Any, shape: Any, fingerprint: Any, caller: str
) -> tuple[HeadList, Any, str]:
    """The head list for a model the caller loaded (``from_model``, ``from_vllm``): the given one, else the bundled
    one found by the model's name, else by a fingerprint of its weights (``fingerprint()``, ``None`` when it has
    none); with the source renamed to the matched model and a phrase saying how it was found."""
    match = "given" if settings.heads is not None else f"its name {source.model_id!r}"
    try:
        head_list = resolve_head_list(
            settings.heads,
            source.model_id,
            shape.num_layers,
            shape.num_heads,
            shape.num_kv_heads,
            allow_other_model=settings.allow_other_model_heads,
        )
    except HeadListNotFoundError as exc:
        from .recognition import match_fingerprint

        given = fingerprint()
        found = given and match_fingerprint(given, shape.num_layers, shape.num_heads, shape.num_kv_heads)
        if found is None:
            raise HeadListNotFoundError(
                f"{exc}\n({caller} looked the model up by its config's name_or_path, {source.location!r}, and by "
                "a fingerprint of its weights: neither is a model with a bundled list)"
            ) from None
        head_list, r = found
        source = replace(source, model_id=head_list.model_id)
        match = f"a fingerprint of its weights (correlation {r:.4f} with {head_list.model_id})"
    return head_list, source, match


def _settings_of_loaded(heads: HeadSpec, options: Mapping[str, Any], uses: str, instead: str) -> EngineSettings:
    """The settings of a reranker on a model the caller loaded (``from_model``, ``from_vllm``): the options that
    choose how a model loads (``LOAD_SETTINGS``) are refused, saying what to do ``instead``."""
    fixed = sorted(set(options) & set(LOAD_SETTINGS))
    if fixed:
        raise InvalidInputError(f"{uses}: {', '.join(fixed)} cannot be set here ({instead})")
    return EngineSettings.from_options({"heads": heads, **options})
