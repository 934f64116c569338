"""``Reranker``: the one public entry point of the engine."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from . import scoring
from .head_signal import HeadSignals, head_signals
from .heads import HeadList, HeadSpec, resolve_head_list
from .loading import LoadedModel, load_model, read_shape, resolve_device, resolve_dtype, resolve_quantization
from .prompt import NULL_QUERY, TokenSpans, build_prompt, chat_markers, cut_to_tokens
from .results import RankedResults, RankResult
from .sources import resolve_source
from .windows import plan_windows

logger = logging.getLogger(__name__)

__all__ = ["Reranker"]

Document = str | Mapping[str, Any]
_PROMPT_SLACK = 16  # tokens of margin for merges at part boundaries when planning windows


@dataclass
class _Doc:
    index: int
    original: Any
    text: str  # full text as given (title\ntext for dicts)
    scored_text: str  # text after the per-document token budget
    tokens: int
    truncated: bool


class Reranker:
    """Re-rank documents for a query with the attention of a few selected heads of a decoder LLM.

    Args:
        model: ``"default"`` (the embedded SmolLM2-135M-Instruct), a Hugging Face id or local
            directory, or a ``.gguf`` file. Nothing is downloaded: a hub id must already be in the
            local Hugging Face cache.
        heads: ``None`` for the list bundled for the model, ``"all"`` for every head (ICR), a
            head-list JSON path, a :class:`~core_rerank.HeadList`, or ``[(layer, head), ...]``.
            The model is loaded only up to the deepest selected layer.
        quantization: ``"auto"`` (4-bit on CUDA for models of 1B+ parameters after truncation,
            dense elsewhere), ``None`` (dense), ``"4bit"`` (bitsandbytes NF4) or ``"8bit"``.
        dtype: compute dtype; ``None`` means bfloat16.
        device: ``None`` picks CUDA when available, else CPU.
        max_doc_tokens: per-document token budget; longer documents are cut and flagged ``truncated``.
        max_tokens: prompt budget per forward pass (default and cap: the model's context length).
            Longer candidate lists are scored in several windows (see README, "Long lists").
        order: ``"reverse"`` places the first input document last, nearest the query (the
            references' placement); ``"given"`` keeps the input order.
        temperature: softmax temperature of ``normalized_score``; ``None`` uses the spread (std) of
            the list's raw scores, a fixed value makes normalized scores comparable across lists.
        local_files_only: passed to ``from_pretrained``; ``None`` honours ``HF_HUB_OFFLINE``.
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
        order: Literal["reverse", "given"] = "reverse",
        temperature: float | None = None,
        local_files_only: bool | None = None,
        revision: str | None = None,
    ) -> None:
        if order not in ("reverse", "given"):
            raise ValueError(f"order must be 'reverse' or 'given', got {order!r}")
        if not isinstance(max_doc_tokens, int) or max_doc_tokens < 1:
            raise ValueError(f"max_doc_tokens must be a positive integer, got {max_doc_tokens!r}")
        if temperature is not None and not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        self.source = resolve_source(model, revision)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        shape, _ = read_shape(self.source, local_files_only)
        self.head_list: HeadList = resolve_head_list(
            heads, self.source.model_id, shape.num_layers, shape.num_heads, shape.num_kv_heads
        )
        self.quantization = resolve_quantization(quantization, self.device, shape, self.head_list.max_layer + 1)
        self._loaded: LoadedModel = load_model(
            self.source,
            self.head_list.max_layer + 1,
            dtype=self.dtype,
            quantization=self.quantization,
            device=self.device,
            local_files_only=local_files_only,
        )
        self._markers = chat_markers(self._loaded.tokenizer)
        self.max_doc_tokens = max_doc_tokens
        self.max_tokens = min(max_tokens or shape.context_length, shape.context_length)
        self.order = order
        self.temperature = temperature
        self._overhead = self._count(build_prompt(self._markers, [], NULL_QUERY).text)
        if self._overhead + max_doc_tokens + _PROMPT_SLACK + 64 > self.max_tokens:
            raise ValueError(
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
        score_threshold: float | None = None,
    ) -> RankedResults:
        """Documents ordered by relevance to ``query``, best first.

        ``top_n`` keeps the best n; ``score_threshold`` drops results whose raw ``score`` is below it.
        An empty ``documents`` list gives empty results.
        """
        if top_n is not None and (not isinstance(top_n, int) or isinstance(top_n, bool) or top_n < 1):
            raise ValueError(f"top_n must be a positive integer or None, got {top_n!r}")
        query = _check_query(query)
        docs = self._prepare(documents)
        if not docs:
            return RankedResults(query, [], 0, self.head_list.describe())
        raw, windows = self._score(query, docs)
        normalized = scoring.softmax(raw, self.temperature)
        order = sorted(range(len(docs)), key=lambda i: (-raw[i], i))
        results = [
            RankResult(
                index=i,
                score=raw[i],
                normalized_score=normalized[i],
                rank=r + 1,
                text=docs[i].text,
                document=docs[i].original,
                truncated=docs[i].truncated,
                tokens=docs[i].tokens,
                window=windows[i],
            )
            for r, i in enumerate(order)
        ]
        if score_threshold is not None:
            results = [r for r in results if r.score >= score_threshold]
        if top_n is not None:
            results = results[:top_n]
        return RankedResults(query, results, max(windows) + 1, self.head_list.describe())

    def score(self, query: str, documents: Sequence[Document]) -> list[float]:
        """Raw relevance scores in input order."""
        query = _check_query(query)
        docs = self._prepare(documents)
        return self._score(query, docs)[0] if docs else []

    def rank_batch(
        self,
        queries: Sequence[str],
        documents: Sequence[Sequence[Document]] | Sequence[Document],
        top_n: int | None = None,
        score_threshold: float | None = None,
        show_progress_bar: bool | None = None,
    ) -> list[RankedResults]:
        """Rank for many queries: ``documents`` is one list per query, or one list shared by all."""
        if isinstance(queries, str):
            raise TypeError("queries must be a list of strings; use rank() for one query")
        shared = not documents or not all(isinstance(d, Sequence) and not isinstance(d, str) for d in documents)
        if not shared and len(documents) != len(queries):
            raise ValueError(f"{len(queries)} queries but {len(documents)} document lists")
        from tqdm.auto import tqdm

        show = len(queries) > 1 if show_progress_bar is None else show_progress_bar
        out = []
        for qi, query in enumerate(tqdm(queries, desc="re-ranking", unit="query", disable=not show)):
            out.append(self.rank(query, documents if shared else documents[qi], top_n, score_threshold))
        return out

    def __repr__(self) -> str:
        quant = self.quantization or str(self.dtype).replace("torch.", "")
        return (
            f"Reranker(model={self.model_id!r}, heads={self.head_list.method}:{len(self.head_list.heads)}, "
            f"layers={self._loaded.layers_loaded}/{self._loaded.shape.num_layers}, {quant}, {self.device})"
        )

    # ---------------------------------------------------------------- internals
    def _count(self, text: str) -> int:
        with self._loaded.lock:  # fast tokenizers are not safe to share across threads
            return len(self._loaded.tokenizer(text, add_special_tokens=self._add_special)["input_ids"])

    @property
    def _add_special(self) -> bool:
        # A chat template writes its own BOS; a base model needs the tokenizer's.
        return not self._markers.from_template

    def _prepare(self, documents: Sequence[Document]) -> list[_Doc]:
        if isinstance(documents, (str, bytes)) or not isinstance(documents, Sequence):
            raise TypeError(f"documents must be a list of strings or dicts, got {type(documents).__name__}")
        texts = [_document_text(i, d) for i, d in enumerate(documents)]
        with self._loaded.lock:  # fast tokenizers are not safe to share across threads
            cut = cut_to_tokens(self._loaded.tokenizer, texts, self.max_doc_tokens)
        docs = []
        for i, (text, (kept, tokens, truncated)) in enumerate(zip(texts, cut)):
            if truncated:
                logger.info("document %d truncated to %d tokens", i, self.max_doc_tokens)
            docs.append(_Doc(i, documents[i], text, kept, tokens, truncated))
        return docs

    def _score(self, query: str, docs: list[_Doc]) -> tuple[list[float], list[int]]:
        """Raw scores and window number of every document, in input order."""
        raw = [-math.inf] * len(docs)
        window_of = [0] * len(docs)
        live = [d for d in docs if d.scored_text.strip()]
        if not live:
            return raw, window_of
        query_tokens = self._count(query)
        budget = self.max_tokens - self._overhead - query_tokens - _PROMPT_SLACK
        if budget < self.max_doc_tokens:
            raise ValueError(
                f"the query is {query_tokens} tokens: too long to leave room for one document within "
                f"max_tokens={self.max_tokens}; shorten the query or raise max_tokens"
            )
        windows = plan_windows([d.tokens + 4 for d in live], budget)  # +4: "[i] " label and separator
        window_tokens = [sum(live[j].tokens for j in w) for w in windows]
        mean_tokens = sum(window_tokens) / len(windows)
        for w, members in enumerate(windows):
            placed = [live[j] for j in members]
            if self.order == "reverse":
                placed = placed[::-1]
            scores = self._score_window(query, [d.scored_text for d in placed])
            # Attention mass spreads over the window's tokens: rescale so windows of different
            # length give comparable scores (identity with a single window).
            scale = window_tokens[w] / mean_tokens if window_tokens[w] else 1.0
            for d, s in zip(placed, scores):
                raw[d.index] = s * scale
                window_of[d.index] = w
        return raw, window_of

    def _score_window(self, query: str, texts: list[str]) -> list[float]:
        window = self.attention_signals(query, texts)
        return scoring.document_scores(window.signals.query.sum(0), window.signals.null.sum(0), window.doc_spans)

    def attention_signals(self, query: str, texts: Sequence[str]) -> WindowSignals:
        """Per-head attention signals of one prompt holding ``texts`` in the given order (no
        truncation, no windowing): the raw material of scoring and of head detection."""
        loaded = self._loaded
        with loaded.lock:
            real = build_prompt(self._markers, texts, query)
            null = build_prompt(self._markers, texts, NULL_QUERY)
            enc_r = loaded.tokenizer(real.text, add_special_tokens=self._add_special, return_offsets_mapping=True)
            enc_n = loaded.tokenizer(null.text, add_special_tokens=self._add_special, return_offsets_mapping=True)
            spans_r, spans_n = TokenSpans(enc_r["offset_mapping"]), TokenSpans(enc_n["offset_mapping"])
            doc_spans = [spans_r(s) for s in real.doc_spans]
            rows_r, rows_n = spans_r(real.query_span), spans_n(null.query_span)
            signals = head_signals(
                loaded.model,
                self.head_list.heads_by_layer,
                enc_r["input_ids"],
                rows_r,
                enc_n["input_ids"],
                rows_n,
                max(b for _, b in doc_spans),
            )
        return WindowSignals(signals, doc_spans, enc_r["input_ids"], rows_r, enc_n["input_ids"], rows_n)


@dataclass(frozen=True)
class WindowSignals:
    """Attention signals of one prompt and where its parts sit, in token indices."""

    signals: HeadSignals
    doc_spans: list[tuple[int, int]]
    ids_query: list[int]
    query_rows: tuple[int, int]
    ids_null: list[int]
    null_rows: tuple[int, int]


def _check_query(query: Any) -> str:
    if not isinstance(query, str):
        raise TypeError(f"query must be a string, got {type(query).__name__}")
    if not query.strip():
        raise ValueError("query is empty; give a non-empty query")
    return query


def _document_text(i: int, doc: Any) -> str:
    if isinstance(doc, str):
        return doc
    if isinstance(doc, Mapping):
        text = doc.get("text")
        if not isinstance(text, str):
            raise TypeError(f"document {i} is a mapping without a string 'text' (got {type(text).__name__})")
        title = doc.get("title")
        if title is not None and not isinstance(title, str):
            raise TypeError(f"document {i} has a non-string 'title' ({type(title).__name__})")
        return f"{title}\n{text}" if title and title.strip() else text
    raise TypeError(
        f"document {i} is {type(doc).__name__}, not text: pass strings or dicts with 'text' (and optional 'title')"
    )
