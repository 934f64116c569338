"""LlamaIndex integration of core-rerank: ``CoReRerank``, a node postprocessor (re-ranker).

>>> from llama_index.postprocessor.core_rerank import CoReRerank
"""

from llama_index.postprocessor.core_rerank.base import CoReRerank

__all__ = ["CoReRerank"]
