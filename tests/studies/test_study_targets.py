"""The issue-10 target verdicts of studies.order_report: met, not met, and "too few to tell" from measured rows."""

from __future__ import annotations

import copy

import pytest


@pytest.fixture(scope="module")
def study():
    from studies import order_report

    return order_report


def _row(ndcg: float, diff: float = 0.0, se: float = 0.0, sets: dict | None = None, vs_heads: dict | None = None):
    row = {"ndcg": ndcg, "vs_first_stage": diff, "se": se, "by_dataset_vs_first_stage": sets or {}}
    if vs_heads:
        row["vs_heads"] = vs_heads
    return row


def _verdict(cell: str) -> str:
    return cell.rsplit(": ", 1)[1]


@pytest.fixture
def rows():
    """Test rows of a model that meets every target (five queries on each of two sets)."""
    sets = {"a": [0.02, 0.01, 5], "b": [-0.005, 0.01, 5]}
    return {
        "bm25": {
            "first_stage": _row(0.50),
            "core": _row(0.53, 0.03, 0.01, copy.deepcopy(sets), vs_heads={"icr": [0.02, 0.01], "qr": [0.01, 0.01]}),
            "core + first-stage scores": _row(0.54, 0.04, 0.01, sets),
            "core@shuffled": _row(0.51, 0.01, 0.02, vs_heads={"icr": [0.05, 0.01], "qr": [0.03, 0.01]}),
            "icr": _row(0.51),
            "qr": _row(0.52),
            "icr@shuffled": _row(0.46),
            "qr@shuffled": _row(0.48),
        },
        "dense": {
            "first_stage": _row(0.60),
            "core": _row(0.63, 0.03, 0.01, vs_heads={"icr": [0.004, 0.005], "qr": [0.01, 0.01]}),
            "core + first-stage scores": _row(0.63, 0.03, 0.01),
            "icr": _row(0.606),
            "qr": _row(0.60),
        },
    }


def test_every_target_met(study, rows):
    cells = study.target_cells(rows)
    assert [c.endswith("**met**") for _, c in cells] == [True] * 4
    assert study.targets_met(rows) == "alone 4 of 4; fused 4 of 4"
    assert study._core_vs(rows) == "yes"


def test_each_configuration_is_judged_on_its_own(study, rows):
    bad = copy.deepcopy(rows)
    fused_bm25, fused_dense = bad["bm25"]["core + first-stage scores"], bad["dense"]["core + first-stage scores"]
    fused_dense.update(vs_first_stage=0.015, se=0.01)  # under two standard errors
    fused_bm25["vs_first_stage"] = 0.029
    fused_bm25["by_dataset_vs_first_stage"]["b"] = [-0.03, 0.01, 5]
    cells = study.target_cells(bad)
    for _, cell in cells[:3]:
        alone, fused = cell.split("; ")
        assert alone.endswith("**met**") and fused.endswith("not met")
    assert "(b, lowest b -0.030" in cells[2][1]
    assert study.targets_met(bad) == "alone 4 of 4; fused 1 of 4"
    bad["bm25"]["core@shuffled"]["ndcg"] = 0.49
    assert study.target_cells(bad)[3][1].endswith("not met")
    assert study.targets_met(bad) == "alone 3 of 4; fused 0 of 4"


def test_a_set_is_judged_only_with_enough_queries(study, rows):
    few = copy.deepcopy(rows)
    few["bm25"]["core + first-stage scores"]["by_dataset_vs_first_stage"]["a"][2] = study.MIN_PER_SET - 1
    fewest = study.MIN_PER_SET - 1
    alone, fused = study.target_cells(few)[2][1].split("; ")
    assert alone.endswith("**met**")
    assert _verdict(fused) == f"too few queries per set to tell (fewest {fewest})"
    assert study.targets_met(few) == "alone 4 of 4; fused 3 of 4"


def test_core_behind_other_heads_reports_the_paired_gap(study, rows):
    tie = copy.deepcopy(rows)
    tie["dense"]["icr"]["ndcg"] = 0.631  # ahead by 0.001 on the means
    tie["dense"]["core"]["vs_heads"]["icr"] = [-0.001, 0.006]
    assert study._core_vs(tie) == "no: icr ahead behind dense by 0.001 (paired s.e. 0.006: within it)"
    clear = copy.deepcopy(rows)
    clear["bm25"]["qr@shuffled"]["ndcg"] = 0.56
    clear["bm25"]["core@shuffled"]["vs_heads"]["qr"] = [-0.05, 0.01]
    assert study._core_vs(clear) == "no: qr ahead on shuffled input by 0.050 (paired s.e. 0.010)"
