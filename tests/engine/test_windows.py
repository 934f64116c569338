from __future__ import annotations

import pytest

from core_rerank.windows import plan_windows


def test_one_window_when_it_fits():
    assert plan_windows([10, 20, 30], 100) == [[0, 1, 2]]
    assert plan_windows([], 100) == []


def test_round_robin_windows_each_fit_and_cover_everything():
    sizes = [90, 10, 80, 20, 70, 30, 60, 40, 50, 50]
    windows = plan_windows(sizes, 200)
    assert sorted(i for w in windows for i in w) == list(range(len(sizes)))
    assert all(sum(sizes[i] for i in w) <= 200 for w in windows)
    assert 3 <= len(windows) <= 5  # at least 500 / 200; round-robin dealing may need a few more
    # Dealt by input rank: the top candidates land in different windows.
    assert [w[0] for w in windows] == list(range(len(windows)))


def test_uniform_sizes_take_the_fewest_windows():
    windows = plan_windows([100] * 10, 400)
    assert len(windows) == 3 and sorted(map(len, windows)) == [3, 3, 4]


def test_item_larger_than_budget_is_an_error():
    with pytest.raises(ValueError, match="exceeds"):
        plan_windows([10, 500], 100)
