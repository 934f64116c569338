"""Deprecated: use ``langchain_corerank.rerank``. (Importing this module imports the package, which warns.)"""

from langchain_corerank.rerank import CoReRerank

__all__ = ["CoReRerank"]
