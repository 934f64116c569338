"""The relevance-map fit recovers known coefficients (synthetic labels drawn from a known logistic model)."""

from __future__ import annotations

import math
import random

import pytest

from core_rerank.research.calibration import LabelledScores, fit_relevance_map, map_relevance, reliability
from core_rerank.scoring import relevance

FIT = {"max_doc_tokens": 200, "order": "reverse"}


def _draw(n: int, seed: int = 0) -> LabelledScores:
    rng = random.Random(seed)
    out = LabelledScores([], [], [], [], [])
    for i in range(n):
        tokens, size = rng.choice([10, 30, 100, 200]), rng.choice([5, 10, 20])
        score = rng.gauss(0.5, 0.4)
        t = (3.0 + 0.5 * math.log(size)) * score - 0.6 * math.log(tokens) + 0.4 * math.log(size) - 0.5
        out.scores.append(score)
        out.tokens.append(tokens)
        out.sizes.append(size)
        out.labels.append(1 if rng.random() < 1 / (1 + math.exp(-t)) else 0)
        out.queries.append(f"q{i // 10}")
    return out


def test_the_context_form_recovers_the_coefficients_that_drew_the_labels():
    fit = fit_relevance_map(_draw(20000), FIT, "synthetic", "context", l2=0.0)
    # 20000 draws: each coefficient's standard error is ~0.05-0.1; 0.35 is over 3 of them.
    assert fit.a == pytest.approx(3.0, abs=0.35)
    assert fit.score_list_size == pytest.approx(0.5, abs=0.35)
    assert fit.length == pytest.approx(-0.6, abs=0.15)
    assert fit.list_size == pytest.approx(0.4, abs=0.35)
    assert (fit.tokens_range, fit.n_range) == ((10, 200), (5, 20))


def test_a_map_that_ignores_length_is_miscalibrated_per_length_where_the_context_map_is_not():
    train, test = _draw(20000, 1), _draw(8000, 2)
    for form, worst in (("score", None), ("context", 0.04)):
        fit = fit_relevance_map(train, FIT, "synthetic", form)
        p = map_relevance(fit, test)
        eces = []
        for tokens in (10, 200):
            keep = [t == tokens for t in test.tokens]
            eces.append(reliability([x for x, k in zip(p, keep) if k], test.subset(keep).labels).ece)
        if worst is None:
            assert max(eces) > 0.05  # the score alone cannot tell a short document's score from a long one's
        else:
            assert max(eces) < worst
    assert relevance(1.0, *fit.terms(10, 5)) > relevance(1.0, *fit.terms(200, 5))


def test_data_with_one_label_cannot_be_fitted():
    data = _draw(50)
    data = data.subset([y == 0 for y in data.labels])
    with pytest.raises(ValueError, match="both relevant and non-relevant"):
        fit_relevance_map(data, FIT, "synthetic", "length")
