"""What a caller may pass to ``rank`` / ``score``, checked before any model work.

Every check raises :class:`~core_rerank.errors.InvalidInputError` (or its ``TypeError`` twin) with the
position of the bad item, so a service can return it as a 4xx. Text is taken as it is, with one
documented repair: lone UTF-16 surrogates (which no tokenizer can encode, and which arrive from
badly decoded sources) are scored as U+FFFD; the result still carries the caller's original document.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import InvalidInputError, InvalidInputTypeError, TooManyDocumentsError

logger = logging.getLogger(__name__)

__all__ = [
    "check_documents",
    "check_query",
    "check_threshold",
    "check_top_n",
    "document_text",
    "plain_text",
]

_SURROGATE = re.compile("[\ud800-\udfff]")


def plain_text(text: str) -> str:
    """``text`` with lone surrogates replaced by U+FFFD (the only characters a tokenizer cannot encode)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        logger.warning("text holds lone surrogates (invalid Unicode): scored as U+FFFD")
        return _SURROGATE.sub("\ufffd", text)
    return text


def check_query(query: Any) -> str:
    """The query as scoring text; a non-string or blank query is an error."""
    if not isinstance(query, str):
        raise InvalidInputTypeError(f"query must be a string, got {type(query).__name__}")
    if not query.strip():
        raise InvalidInputError("query is empty; give a non-empty query")
    return plain_text(query)


def check_top_n(top_n: Any) -> int | None:
    """``None`` (keep all) or a positive integer: how many results to keep."""
    if top_n is not None and (not isinstance(top_n, int) or isinstance(top_n, bool) or top_n < 1):
        raise InvalidInputError(f"top_n must be a positive integer or None, got {top_n!r}")
    return top_n


def check_threshold(name: str, value: Any) -> float | None:
    """``None`` or a number that is not NaN (a NaN threshold would silently drop every result)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInputTypeError(f"{name} must be a number or None, got {type(value).__name__}")
    if math.isnan(value):
        raise InvalidInputError(f"{name} is NaN; give a number or None")
    return float(value)


def check_first_stage_scores(scores: Any, n: int) -> list[float] | None:
    """``None``, or one finite number per document: the first stage's own scores (higher = better)."""
    if scores is None:
        return None
    if isinstance(scores, (str, bytes, Mapping)) or not isinstance(scores, Sequence):
        raise InvalidInputTypeError(f"first_stage_scores must be a list of numbers, got {type(scores).__name__}")
    if len(scores) != n:
        raise InvalidInputError(f"first_stage_scores has {len(scores)} values for {n} documents: give one per document")
    out = []
    for i, v in enumerate(scores):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise InvalidInputTypeError(f"first_stage_scores[{i}] must be a number, got {type(v).__name__}")
        if not math.isfinite(v):
            raise InvalidInputError(f"first_stage_scores[{i}] is {v}: give finite numbers")
        out.append(float(v))
    return out


def check_documents(documents: Any, max_documents: int | None) -> Sequence[Any]:
    """A list (any non-string sequence) of at most ``max_documents`` documents."""
    if isinstance(documents, (str, bytes)) or not isinstance(documents, Sequence):
        raise InvalidInputTypeError(f"documents must be a list of strings or dicts, got {type(documents).__name__}")
    if max_documents is not None and len(documents) > max_documents:
        raise TooManyDocumentsError(
            f"{len(documents)} documents in one call; this reranker takes at most max_documents={max_documents}. "
            "Re-rank a first stage's top candidates (20-100 is typical), or raise max_documents "
            "(long lists are scored in several windows, each a forward pass)."
        )
    return documents


def document_text(i: int, doc: Any) -> str:
    """The text scored for document ``i``: a string as is, a mapping as ``title\\ntext`` (title optional)."""
    if isinstance(doc, str):
        return plain_text(doc)
    if isinstance(doc, Mapping):
        text = doc.get("text")
        if not isinstance(text, str):
            raise InvalidInputTypeError(
                f"document {i} is a mapping without a string 'text' (got {type(text).__name__})"
            )
        title = doc.get("title")
        if title is not None and not isinstance(title, str):
            raise InvalidInputTypeError(f"document {i} has a non-string 'title' ({type(title).__name__})")
        return plain_text(f"{title}\n{text}" if title and title.strip() else text)
    raise InvalidInputTypeError(
        f"document {i} is {type(doc).__name__}, not text: pass strings or dicts with 'text' (and optional 'title')"
    )
