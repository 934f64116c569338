"""The list-wise prompt (docs/method.md, section 1) and the token spans of its parts.

All candidate documents and the query go into one prompt, documents first, query last, inside the
model's chat turn. Spans are character ranges recorded while the prompt is built (so two identical
documents get two spans) and mapped to token indices with the tokenizer's offset mapping.

User text is tokenized as plain text: a document or query that contains ``<|im_end|>``, ``<eos>`` or any
other special token's spelling gets ordinary tokens for it, never the special token itself, so it cannot
close the chat turn or end the prompt. Only the chat markers around the body are parsed for special tokens.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Sequence
from dataclasses import dataclass

logger = logging.getLogger(__name__)

__all__ = [
    "BlockParts",
    "ChatMarkers",
    "EncodedPrompt",
    "Prompt",
    "TokenSpans",
    "block_parts",
    "build_prompt",
    "chat_markers",
    "cut_to_tokens",
    "encode_prompt",
    "plain_ids",
    "plain_token_count",
    "query_suffix",
]

INTRO = "Here are some paragraphs:\n\n"
INSTRUCTION = "Please find information that are relevant to the following query in the paragraphs above.\n\n"
QUERY_LABEL = "Query: "
NULL_QUERY = "N/A"
GENERATION_INSTRUCTION = "Answer the question from the paragraphs above.\n\nQuestion: "
"""What ``Reranker.generation_prompt_ids`` puts between the documents and the question."""
_SENTINEL = "\x1fCORE_RERANK_CONTENT\x1f"


@dataclass(frozen=True)
class ChatMarkers:
    """Text before and after the user message in the model's chat format."""

    prefix: str = ""
    suffix: str = ""
    from_template: bool = False


def chat_markers(tokenizer) -> ChatMarkers:
    """Derive user-turn markers from the tokenizer's chat template; none for base models."""
    if not getattr(tokenizer, "chat_template", None):
        return ChatMarkers()
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": _SENTINEL}],
            tokenize=False,
            add_generation_prompt=True,
            date_string="26 Jul 2024",  # templates that print today's date stay reproducible
        )
    except Exception as exc:  # a template that rejects a lone user turn: score without markers
        logger.warning("chat template of %s failed (%s); using no chat markers", type(tokenizer).__name__, exc)
        return ChatMarkers()
    if not isinstance(text, str) or text.count(_SENTINEL) != 1:
        logger.warning("chat template did not echo the user message once; using no chat markers")
        return ChatMarkers()
    prefix, suffix = text.split(_SENTINEL)
    return ChatMarkers(prefix, suffix, from_template=True)


@dataclass(frozen=True)
class Prompt:
    """One built prompt: its text and the character spans of its parts."""

    text: str
    doc_spans: tuple[tuple[int, int], ...]  # per placed document, its own text (no "[i] " marker)
    query_span: tuple[int, int]  # instruction + "Query: " + query (CoRe's Q)
    body: tuple[int, int]  # everything between the chat markers: the only part holding user text


def build_prompt(markers: ChatMarkers, documents: Sequence[str], query: str) -> Prompt:
    """Lay out ``documents`` (already in placement order) and ``query`` as one list-wise prompt."""
    parts = [markers.prefix, INTRO]
    pos = len(markers.prefix) + len(INTRO)
    spans = []
    for i, doc in enumerate(documents, start=1):
        label = f"[{i}] "
        parts.append(label)
        pos += len(label)
        spans.append((pos, pos + len(doc)))
        parts.append(doc)
        parts.append("\n\n")
        pos += len(doc) + 2
    q_start = pos
    parts += [INSTRUCTION, QUERY_LABEL, query]
    q_end = pos + len(INSTRUCTION) + len(QUERY_LABEL) + len(query)
    parts.append(markers.suffix)
    return Prompt("".join(parts), tuple(spans), (q_start, q_end), (len(markers.prefix), q_end))


@dataclass(frozen=True)
class EncodedPrompt:
    """Token ids of a prompt and the character offsets of each token in ``Prompt.text``."""

    ids: list[int]
    offsets: list[tuple[int, int]]


def encode_prompt(tokenizer, prompt: Prompt, add_special_tokens: bool) -> EncodedPrompt:
    """Tokenize ``prompt``: chat markers with special-token parsing, the body as plain text.

    ``add_special_tokens`` adds the tokenizer's own BOS/EOS (base models without a chat template) around
    the whole prompt. The pieces meet at chat-marker boundaries, where no merge can cross.
    """
    a, b = prompt.body
    pieces = [(0, a, False), (a, b, True), (b, len(prompt.text), False)]
    pieces = [p for p in pieces if p[1] > p[0]]
    ids: list[int] = []
    offsets: list[tuple[int, int]] = []
    for start, end, plain in pieces:
        enc = tokenizer(
            prompt.text[start:end],
            add_special_tokens=False,
            split_special_tokens=plain,
            return_offsets_mapping=True,
        )
        ids += enc["input_ids"]
        offsets += [(x + start, y + start) for x, y in enc["offset_mapping"]]
    if add_special_tokens:
        head, tail = _special_wrapping(tokenizer)
        ids = head + ids + tail
        offsets = [(0, 0)] * len(head) + offsets + [(len(prompt.text), len(prompt.text))] * len(tail)
    return EncodedPrompt(ids, offsets)


def _special_wrapping(tokenizer) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a text when asked to add special tokens (BOS, EOS)."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for head in range(len(full) - len(plain) + 1):
        if full[head : head + len(plain)] == plain:
            return full[:head], full[head + len(plain) :]
    return [], []


@dataclass(frozen=True)
class BlockParts:
    """The query-independent token pieces of a block-attention prompt (:mod:`core_rerank.block`): the ``prefix``
    (BOS where the tokenizer adds one, the chat turn's start, the intro), the ``separator`` after each document,
    and the ``tail`` after the query (the chat turn's end, EOS where the tokenizer adds one)."""

    prefix: tuple[int, ...]
    separator: tuple[int, ...]
    tail: tuple[int, ...]


def _ids(tokenizer, text: str, plain: bool) -> list[int]:
    return tokenizer(text, add_special_tokens=False, split_special_tokens=plain)["input_ids"] if text else []


def block_parts(tokenizer, markers: ChatMarkers, add_special_tokens: bool) -> BlockParts:
    """The pieces of the block prompt around documents and query, tokenized as :func:`encode_prompt` tokenizes
    the full prompt's: chat markers with special-token parsing, text as plain text."""
    head, tail = _special_wrapping(tokenizer) if add_special_tokens else ([], [])
    prefix = head + _ids(tokenizer, markers.prefix, False) + _ids(tokenizer, INTRO, True)
    return BlockParts(
        tuple(prefix), tuple(_ids(tokenizer, "\n\n", True)), tuple(_ids(tokenizer, markers.suffix, False) + tail)
    )


def query_suffix(tokenizer, parts: BlockParts, query: str) -> tuple[list[int], tuple[int, int]]:
    """The block prompt's suffix for ``query`` (instruction, "Query: ", the query, then ``parts.tail``) and its
    query-span rows (the instruction to the query's end, as the full prompt's span), as suffix token indices."""
    span = _ids(tokenizer, INSTRUCTION + QUERY_LABEL + query, True)
    return span + list(parts.tail), (0, len(span))


def plain_ids(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` as user text (special-token spellings split), without BOS/EOS."""
    return _ids(tokenizer, text, True)


def plain_token_count(tokenizer, text: str) -> int:
    """Tokens of ``text`` as user text (special-token spellings split), without BOS/EOS."""
    return len(plain_ids(tokenizer, text))


class TokenSpans:
    """Maps character spans of a prompt to token index ranges via the tokenizer's offset mapping."""

    def __init__(self, offsets: Sequence[tuple[int, int]]):
        # Zero-width tokens (BOS and other specials) never belong to a span.
        kept = [(i, a, b) for i, (a, b) in enumerate(offsets) if b > a]
        self._index = [i for i, _, _ in kept]
        self._starts = [a for _, a, _ in kept]
        self._ends = [b for _, _, b in kept]

    def __call__(self, span: tuple[int, int]) -> tuple[int, int]:
        """Token range [first, last + 1) of the tokens overlapping ``span``; (0, 0) when none do."""
        start, end = span
        lo = bisect.bisect_right(self._ends, start)  # first token ending after the span starts
        hi = bisect.bisect_left(self._starts, end)  # tokens from here on start at or after its end
        if start >= end or lo >= hi:
            return (0, 0)
        return (self._index[lo], self._index[hi - 1] + 1)


def cut_to_tokens(tokenizer, texts: Sequence[str], max_tokens: int) -> list[tuple[str, int, bool]]:
    """Each text cut to its first ``max_tokens`` tokens: ``(kept text, tokens kept, truncated)``.

    The cut falls at a token boundary of the text tokenized on its own, as plain text (special-token
    spellings are ordinary characters, as in the prompt). A cheap character pre-cut
    (32 characters per token) keeps a huge text from ever reaching the tokenizer whole.
    """
    if not texts:
        return []
    heads = [t[: max_tokens * 32] for t in texts]
    enc = tokenizer(heads, add_special_tokens=False, split_special_tokens=True, return_offsets_mapping=True)
    out = []
    for text, head, ids, offs in zip(texts, heads, enc["input_ids"], enc["offset_mapping"]):
        cut = len(ids) > max_tokens
        kept = head[: offs[max_tokens - 1][1]] if cut else head
        out.append((kept, min(len(ids), max_tokens), cut or len(head) < len(text)))
    return out
