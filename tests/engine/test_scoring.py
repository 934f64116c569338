"""The N/A contrast + 2-sigma mask formula against hand-computed values; the z-scores fusion uses."""

from __future__ import annotations

import math

import pytest
import torch

from core_rerank.scoring import document_scores, fuse, relevance, softmax, standardized


def test_contrast_and_mask_hand_computed():
    # Document A: c = [0.1] * 9 + [-5.0]. mean = -0.41, sample std = sqrt(23.409 / 9) = 1.61276,
    # threshold = -0.41 - 2 * 1.61276 = -3.6355: the -5.0 token is masked out, score = 9 * 0.1 = 0.9.
    # Document B: c = [0.5, 0.1, -2.0, 0.3]: threshold = -0.275 - 2 * 1.16154 = -2.598, nothing
    # masked, score = -1.1. Document C: one token, kept: 0.25. Document D: empty span: -inf.
    c = [0.1] * 9 + [-5.0] + [7.0, 7.0] + [0.5, 0.1, -2.0, 0.3] + [0.25]
    null = torch.linspace(0.0, 0.3, len(c))  # the contrast subtracts the N/A signal token by token
    query = torch.tensor(c, dtype=torch.float64) + null
    spans = [(0, 10), (12, 16), (16, 17), (5, 5)]
    scores = document_scores(query, null, spans)
    assert scores[0] == pytest.approx(0.9, abs=1e-6)
    assert scores[1] == pytest.approx(-1.1, abs=1e-6)
    assert scores[2] == pytest.approx(0.25, abs=1e-6)
    assert scores[3] == -math.inf
    # Tokens outside every span (the 7.0s) never count.
    assert sum(s for s in scores if math.isfinite(s)) == pytest.approx(0.05, abs=1e-6)


def test_without_the_contrast_the_ranking_differs():
    # The query signal alone favours document A; after subtracting what the content-free query
    # already puts there, B is the relevant one.
    query = torch.tensor([0.50, 0.52, 0.30, 0.31])
    null = torch.tensor([0.45, 0.46, 0.10, 0.12])
    a, b = document_scores(query, null, [(0, 2), (2, 4)])
    assert b > a
    a_raw, b_raw = document_scores(query, torch.zeros(4), [(0, 2), (2, 4)])
    assert a_raw > b_raw


def test_document_without_spread_keeps_all_tokens():
    assert document_scores(torch.tensor([0.2, 0.2, 0.2]), torch.zeros(3), [(0, 3)]) == [pytest.approx(0.6)]


def test_softmax_is_scale_free_by_default_and_handles_inf():
    scores = [2.0, 1.0, -math.inf, 0.0]
    p = softmax(scores)
    assert sum(p) == pytest.approx(1.0)
    assert p[2] == 0.0 and p[0] > p[1] > p[3]
    assert softmax([s * 100 for s in scores]) == pytest.approx(p)  # same ranking spread, same probabilities
    fixed = softmax([2.0, 1.0], temperature=1.0)
    assert fixed[0] == pytest.approx(math.e / (math.e + 1))
    assert softmax([3.0]) == [1.0]
    assert softmax([]) == []
    assert softmax([1.0, 1.0]) == pytest.approx([0.5, 0.5])


def test_relevance_is_a_monotone_probability_of_the_score_alone():
    a, b = 3.0, -2.0
    xs = [-1e6, -5.0, -0.5, 0.0, 0.3, 2.0, 1e6]
    ps = [relevance(x, a, b) for x in xs]
    assert all(0.0 <= p <= 1.0 for p in ps) and ps == sorted(ps)
    assert relevance(0.0, a, b) == pytest.approx(1 / (1 + math.exp(2.0)))
    assert relevance(-math.inf, a, b) == 0.0  # an empty document
    assert relevance(1e6, a, b) == 1.0 and relevance(-1e6, a, b) == 0.0  # no overflow either way


def test_standardized_and_fuse_hand_computed():
    # mean 2, population std sqrt(2/3): z = (x - 2) / 0.8165
    z = standardized([1.0, 2.0, 3.0])
    assert z == pytest.approx([-1.224745, 0.0, 1.224745], abs=1e-6)
    assert standardized([5.0, 5.0]) == [0.0, 0.0]  # no spread: every z is 0
    # An empty document (-inf attention) stays last and does not move the others' statistics.
    fused = fuse([1.0, 2.0, 3.0, -math.inf], [3.0, 2.0, 1.0, 100.0], weight=0.5)
    assert fused[:3] == pytest.approx([-1.224745 + 0.5 * 1.224745, 0.0, 1.224745 - 0.5 * 1.224745], abs=1e-6)
    assert fused[3] == -math.inf
    assert fuse([1.0, 2.0], [9.0, 1.0], weight=0.0) == pytest.approx(standardized([1.0, 2.0]))
