"""Sentence highlights and context pruning from the scores' own token contributions.

The engine scores a document by summing, over its tokens, how much the selected heads' query tokens attend to each
token beyond what the content-free N/A query does, with the 2-sigma mask (:func:`core_rerank.scoring.
token_contributions`). The same sum over one sentence's tokens is the sentence's score: no second pass, and a
document's sentence scores add up to its score. Scores of one call share one scale (the window rescaling included),
so sentences of different documents compare.

Sentences come from `sentencex <https://pypi.org/project/sentencex/>`_ (Wikimedia's rule-based segmenter: offline,
no data download, ~300 languages), then a title or heading line and a list item end a sentence too. Where it finds
no boundary in a long stretch (code, tables, lists without punctuation), the stretch is split at line breaks, then
at spaces, so no "sentence" runs past ``MAX_SENTENCE_CHARS``. A token belongs to the sentence holding its last
character.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "MAX_SENTENCE_CHARS",
    "RANK_BY",
    "SCOPES",
    "Budget",
    "Compression",
    "Highlight",
    "check_budget",
    "compress",
    "highlights",
    "prune",
    "select",
    "sentence_spans",
    "token_budget",
    "within",
]

MAX_SENTENCE_CHARS = 600
"""A "sentence" longer than this (no boundary the segmenter knows) is split at line breaks, then spaces."""


@dataclass(frozen=True)
class Highlight:
    """One sentence of a result's scored text: ``text == result.text[start:end]`` (surrounding whitespace left
    out), ``score`` the sum of its tokens' contributions to the document's score (same units as
    ``RankResult.attention_score``; comparable across all sentences of a call), ``tokens`` how many of the
    document's scored tokens it holds, ``truncated`` when ``max_doc_tokens`` cut it (only its first part was
    read)."""

    start: int
    end: int
    text: str
    score: float
    tokens: int
    truncated: bool = False

    def to_dict(self) -> dict:
        return {
            "start": self.start,
            "end": self.end,
            "text": self.text,
            "score": self.score,
            "tokens": self.tokens,
            "truncated": self.truncated,
        }


@dataclass(frozen=True)
class Compression:
    """What a pruned document keeps: ``text``, its kept sentences in their original order, joined by ``marker``
    where sentences were dropped between or around them; ``kept`` the indices of the kept sentences in
    ``RankResult.highlights``; ``kept_tokens`` of the ``tokens`` in the document (its whole text, the part
    beyond ``max_doc_tokens`` included: that part is never kept), and ``ratio`` their quotient."""

    text: str
    kept: tuple[int, ...]
    kept_tokens: int
    tokens: int

    @property
    def ratio(self) -> float:
        return self.kept_tokens / self.tokens if self.tokens else 0.0

    def to_dict(self) -> dict:
        return {"text": self.text, "kept": list(self.kept), "kept_tokens": self.kept_tokens, "ratio": self.ratio}


def _segments(text: str, language: str) -> list[tuple[int, int]]:
    """(start, end) character spans of the segmenter's sentences, covering ``text``; [] when it cannot split."""
    try:
        import sentencex

        found = sentencex.get_sentence_boundaries(language, text)
    except Exception:  # a segmenter failure falls back to the rule below
        return []
    spans = [(int(b["start_index"]), int(b["end_index"])) for b in found]
    ok = all(0 <= a < b <= len(text) for a, b in spans) and all(
        spans[i][1] <= spans[i + 1][0] for i in range(len(spans) - 1)
    )
    return spans if ok else []


_BREAK = re.compile(r"\n+|(?<=[.!?])\s+")


def _split_long(text: str, a: int, b: int) -> list[tuple[int, int]]:
    """``text[a:b]`` in pieces of at most MAX_SENTENCE_CHARS: at line breaks first, then at spaces."""
    if b - a <= MAX_SENTENCE_CHARS:
        return [(a, b)]
    pieces, at = [], a
    for m in re.finditer(r"\n+", text[a:b]):
        if m.end() + a < b:
            pieces.append((at, a + m.end()))
            at = a + m.end()
    pieces.append((at, b))
    out = []
    for x, y in pieces:
        while y - x > MAX_SENTENCE_CHARS:
            cut = text.rfind(" ", x + 1, x + MAX_SENTENCE_CHARS)
            cut = cut + 1 if cut > x else x + MAX_SENTENCE_CHARS
            out.append((x, cut))
            x = cut
        out.append((x, y))
    return out


_HEADING_CHARS = 60
_BULLET = re.compile(r"\s*([-*\u2022]|\d+[.)])\s")


def _split_lines(text: str, a: int, b: int) -> list[tuple[int, int]]:
    """``text[a:b]`` split after a line that is a heading or a list item's end: a single line break the segmenter
    reads through (a title line, "Title\nText" as the engine joins a document's title and text) ends a sentence
    when the line before it is short (at most 60 characters) and ends without ``.!?:;,``, or when the next line
    starts a list item. Long hard-wrapped lines of prose stay one sentence."""
    out, at = [], a
    for m in re.finditer(r"\n", text[a:b]):
        cut = a + m.end()
        line = text[at : a + m.start()].strip()
        following = text[cut:b]
        heading = 0 < len(line) <= _HEADING_CHARS and line[-1] not in ".!?:;,"
        if cut < b and following.strip() and (heading or _BULLET.match(following)):
            out.append((at, cut))
            at = cut
    out.append((at, b))
    return out


def sentence_spans(text: str, language: str = "en") -> list[tuple[int, int]]:
    """The sentences of ``text`` as (start, end) character spans in order, whitespace-only parts left out and each
    sentence's surrounding whitespace trimmed. The segmenter's split, or where it has none a split at line breaks
    and after ``.!?``; no span longer than :data:`MAX_SENTENCE_CHARS`."""
    spans = _segments(text, language)
    if not spans:
        starts = [0, *(m.end() for m in _BREAK.finditer(text))]
        spans = list(zip(starts, [*starts[1:], len(text)]))
    out = []
    for a, b in (piece for span in spans for piece in _split_lines(text, *span)):
        for x, y in _split_long(text, a, b):
            piece = text[x:y]
            lead = len(piece) - len(piece.lstrip())
            trail = len(piece.rstrip())
            if trail > lead:
                out.append((x + lead, x + trail))
    return out


def highlights(
    text: str,
    scored_chars: int,
    contributions: Sequence[float],
    offsets: Sequence[tuple[int, int]],
    language: str = "en",
) -> list[Highlight]:
    """The sentences of ``text`` read by the scorer (those starting before ``scored_chars``, the length of the
    scored text) with their scores: each token's contribution (``contributions[i]`` for the token at character
    ``offsets[i]`` of ``text``) goes to the sentence holding the token's last character (a token in whitespace
    between sentences, to the sentence before it)."""
    spans = [(a, b) for a, b in sentence_spans(text, language) if a < scored_chars]
    if not spans:
        return []
    starts = [a for a, _ in spans]
    score = [0.0] * len(spans)
    count = [0] * len(spans)
    for c, (x, y) in zip(contributions, offsets):
        if y <= x:
            continue
        k = max(bisect.bisect_right(starts, y - 1) - 1, 0)
        score[k] += float(c)
        count[k] += 1
    return [
        Highlight(a, b, text[a:b], score[k], count[k], truncated=b > scored_chars) for k, (a, b) in enumerate(spans)
    ]


def compress(
    text: str,
    sentences: Sequence[Highlight],
    keep: Sequence[bool],
    total_tokens: int,
    marker: str,
) -> Compression:
    """The :class:`Compression` of ``text`` keeping the ``sentences`` flagged in ``keep``: kept sentences in their
    order, neighbours joined by the text between them in ``text``, ``marker`` wherever one or more sentences (or
    the unscored tail) were dropped (stripped at the ends of the result)."""
    out = ""
    prev: int | None = None
    for k, s in enumerate(sentences):
        if not keep[k]:
            continue
        if prev is None:
            out = marker.lstrip() if text[: s.start].strip() else ""
        elif k == prev + 1:
            out += text[sentences[prev].end : s.start]
        else:
            out += marker
        out += text[s.start : s.end]
        prev = k
    if prev is not None and text[sentences[prev].end :].strip():
        out += marker.rstrip()
    kept = tuple(i for i, k in enumerate(keep) if k)
    return Compression(out, kept, sum(sentences[i].tokens for i in kept), total_tokens)


def select(
    docs: Sequence[Sequence[Highlight]],
    budgets: Sequence[int] | int | None,
    min_score: float | None,
    rank_by: str = "score",
) -> list[list[bool]]:
    """Which sentences to keep: the best first while they fit the token budget (one per document, or one ``int`` for
    all the documents together; None: no budget), skipping a sentence that does not fit for a shorter one that does;
    sentences scoring below ``min_score`` never. Each document keeps at least its best sentence. ``rank_by``: what
    "best" is, the sentence's ``score`` or its ``density`` (score per token: what a token of budget buys)."""
    value = (lambda h: h.score / max(h.tokens, 1)) if rank_by == "density" else (lambda h: h.score)
    keep = [[False] * len(d) for d in docs]
    ok = [[min_score is None or s.score >= min_score for s in d] for d in docs]
    for i, d in enumerate(docs):
        if d:
            best = max(range(len(d)), key=lambda k: (value(d[k]), -k))
            keep[i][best] = True
    if budgets is None:
        for i, d in enumerate(docs):
            for k in range(len(d)):
                keep[i][k] = keep[i][k] or ok[i][k]
        return keep
    shared = isinstance(budgets, int)
    left = [budgets] if shared else list(budgets)
    for i, d in enumerate(docs):
        for k in range(len(d)):
            if keep[i][k]:
                left[0 if shared else i] -= d[k].tokens
    order = sorted(
        ((i, k) for i, d in enumerate(docs) for k in range(len(d)) if ok[i][k] and not keep[i][k]),
        key=lambda ik: (-value(docs[ik[0]][ik[1]]), ik),
    )
    for i, k in order:
        slot = 0 if shared else i
        if docs[i][k].tokens <= left[slot]:
            keep[i][k] = True
            left[slot] -= docs[i][k].tokens
    return keep


def token_budget(keep: float | int, tokens: int) -> int:
    """A budget of ``keep`` (a fraction in (0, 1] of ``tokens``, or a number of tokens >= 1) in tokens."""
    if isinstance(keep, float) and keep <= 1.0:
        return math.floor(keep * tokens + 1e-9)
    return int(keep)


SCOPES = ("document", "list")
RANK_BY = ("density", "score")


@dataclass(frozen=True)
class Budget:
    """A pruning request, checked (:func:`check_budget`)."""

    keep: float | int | None
    scope: str
    min_score: float | None
    marker: str
    rank_by: str = "density"


def check_budget(keep: object, scope: object, min_score: object, marker: object, rank_by: object = "density") -> Budget:
    """The :class:`Budget` of ``Reranker.compress``'s options, or an :class:`~core_rerank.InvalidInputError` saying
    what is wrong."""
    from .errors import InvalidInputError, InvalidInputTypeError

    if keep is not None:
        if isinstance(keep, bool) or not isinstance(keep, (int, float)):
            raise InvalidInputTypeError(
                f"keep must be a fraction (float), a number of tokens (int) or None, got {keep!r}"
            )
        if isinstance(keep, float) and not (0.0 < keep <= 1.0):
            raise InvalidInputError(
                f"keep as a fraction must be in (0, 1], got {keep!r} (an int is a number of tokens)"
            )
        if isinstance(keep, int) and keep < 1:
            raise InvalidInputError(f"keep as a number of tokens must be >= 1, got {keep!r}")
    if scope not in SCOPES:
        raise InvalidInputError(f"scope must be one of {SCOPES}, got {scope!r}")
    if rank_by not in RANK_BY:
        raise InvalidInputError(f"rank_by must be one of {RANK_BY}, got {rank_by!r}")
    if min_score is not None and (
        isinstance(min_score, bool) or not isinstance(min_score, (int, float)) or not math.isfinite(min_score)
    ):
        raise InvalidInputError(f"min_sentence_score must be a finite number or None, got {min_score!r}")
    if keep is None and min_score is None:
        raise InvalidInputError(
            "compress needs a budget: keep (a fraction or a number of tokens), min_sentence_score, or both"
        )
    if not isinstance(marker, str):
        raise InvalidInputTypeError(f"marker must be a string, got {type(marker).__name__}")
    return Budget(keep, str(scope), None if min_score is None else float(min_score), marker, str(rank_by))


def prune(
    docs: Sequence[Sequence[Highlight]], texts: Sequence[str], totals: Sequence[int], budget: Budget
) -> list[Compression]:
    """The :class:`Compression` of each document (``docs``: its highlights, ``texts``: its text, ``totals``: its
    whole text's token count) under ``budget``."""
    if budget.keep is None:
        budgets = None
    elif budget.scope == "list":
        budgets = token_budget(budget.keep, sum(totals))
    else:
        budgets = [token_budget(budget.keep, t) for t in totals]
    keep = select(docs, budgets, budget.min_score, budget.rank_by)
    return [compress(t, d, k, total, budget.marker) for t, d, k, total in zip(texts, docs, keep, totals)]


def within(result, start: int, end: int):
    """A copy of ``result`` (a ``RankResult`` with highlights) restricted to ``result.text[start:end]``: its text
    that part, its highlights the sentences inside it (offsets relative to ``start``; one crossing a boundary is
    cut to it), ``tokens`` theirs, ``truncated`` when the cut of ``max_doc_tokens`` may lie inside the part (past
    the start of the last sentence read)."""
    from dataclasses import replace

    text = result.text[start:end]
    inside = []
    for h in result.highlights or ():
        a, b = max(h.start, start), min(h.end, end)
        if a < b and text[a - start : b - start].strip():
            piece = result.text[a:b]
            lead = len(piece) - len(piece.lstrip())
            a2, b2 = a + lead, a + len(piece.rstrip())
            inside.append(replace(h, start=a2 - start, end=b2 - start, text=result.text[a2:b2]))
    hl = result.highlights or ()
    truncated = result.truncated and (not hl or end > hl[-1].start)  # the cut lies at or after the last start
    return replace(
        result,
        text=text,
        highlights=tuple(inside),
        tokens=sum(h.tokens for h in inside),
        truncated=truncated,
    )
