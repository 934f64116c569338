"""LangChain integration of core-rerank: ``CoReRerank``, a document compressor (re-ranker).

>>> from langchain_corerank import CoReRerank
"""

from langchain_corerank.rerank import CoReRerank

__all__ = ["CoReRerank"]
