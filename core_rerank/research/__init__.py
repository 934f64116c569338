"""Research tools around the engine: head detection, quality evaluation, labelled data sets, plots.

    core_rerank.research.detection   find CoRe / QR heads of a model from labelled data (``core-rerank detect-heads``)
    core_rerank.research.evaluation  nDCG@10 / MRR@10 / recall of head lists and baselines (``core-rerank evaluate``)
    core_rerank.research.datasets    BEIR-layout data sets and their first-stage candidates
    core_rerank.research.plots       head maps (layer x head heat maps of detection scores)
    core_rerank.research.report      docs/quality.md rendered from the quality JSON results (pure)

Nothing here is needed to re-rank: ``import core_rerank`` and ``Reranker.rank`` never import this package.
Its optional dependencies (pytrec_eval, bm25s, matplotlib, sentence-transformers) are the ``eval`` extra:
``pip install 'core-rerank[eval]'``; each is imported only by the function that needs it.
"""
