"""LangChain integration of core-rerank: ``CoReRerank``, a document compressor (re-ranker).

>>> from langchain_core_rerank import CoReRerank
"""

from langchain_core_rerank.rerank import CoReRerank

__all__ = ["CoReRerank"]
