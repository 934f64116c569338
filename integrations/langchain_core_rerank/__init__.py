"""Deprecated import name of the LangChain integration: use ``from langchain_corerank import CoReRerank``.

``langchain_core_rerank`` read as part of ``langchain_core``; it stays importable for one release, as an
alias: ``langchain_core_rerank.CoReRerank is langchain_corerank.CoReRerank``.
"""

import warnings

from langchain_corerank import CoReRerank

warnings.warn(
    "langchain_core_rerank is deprecated and will be removed in a future release: "
    "use `from langchain_corerank import CoReRerank`",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = ["CoReRerank"]
