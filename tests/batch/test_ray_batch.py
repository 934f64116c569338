"""``core-rerank batch --ray --actors 2``: Ray Data ``map_batches`` over two actors on a real local Ray instance gives
the embedded run's rows, in the same order."""

from __future__ import annotations

import pytest
from batch_rows import assert_same_rows, make_rows, read_jsonl, write_jsonl
from ray_local import needs_ray, start, stop
from typer.testing import CliRunner

from core_rerank.batch import BatchSettings, read_lines, run_embedded
from core_rerank.cli import app
from core_rerank.settings import EngineSettings

pytestmark = [needs_ray, pytest.mark.ray]  # a local Ray instance: deselected by default, run by .ci/run
runner = CliRunner(env={"COLUMNS": "300"})


@pytest.fixture(scope="module")
def local_ray():
    start()
    yield
    stop()


def test_40_rows_on_2_actors_equal_the_embedded_run(tmp_path, local_ray):
    # 40 rows in batches of 5: 8 batches over 2 actors, enough to scramble the order (the 200 rows this once ran
    # took 8 minutes on 2 cores and timed out under load, for nothing more to check).
    rows = make_rows(40, seed=11)
    rows[17] = {"id": "bad", "query": "q", "documents": []}  # an error row travels through Ray unchanged
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    embedded = tmp_path / "embedded.jsonl"
    on_ray = tmp_path / "ray.jsonl"
    assert run_embedded(BatchSettings(EngineSettings(max_doc_tokens=64)), read_lines(src), embedded) == 1
    args = ["batch", str(src), "-o", str(on_ray), "--ray", "--actors", "2", "--max-doc-tokens", "64"]
    result = runner.invoke(app, [*args, "--batch-size", "5"])
    assert result.exit_code == 0, result.output
    assert "40 rows, 1 with an error" in result.output
    got, want = read_jsonl(on_ray), read_jsonl(embedded)
    assert [g["id"] for g in got] == [r["id"] for r in rows]
    assert got[17]["error_type"] == "InvalidRow"
    assert_same_rows(got, want)
