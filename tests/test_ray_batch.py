"""``core-rerank batch --ray --actors 2``: Ray Data ``map_batches`` over two actors on a real local Ray instance gives
the embedded run's rows, in the same order."""

from __future__ import annotations

import pytest
from batch_rows import assert_same_rows, make_rows, read_jsonl, write_jsonl
from ray_local import needs_ray, start, stop
from typer.testing import CliRunner

from core_rerank.batch import BatchSettings, read_lines, run_embedded
from core_rerank.cli import app

pytestmark = needs_ray
runner = CliRunner(env={"COLUMNS": "300"})


@pytest.fixture(scope="module")
def local_ray():
    start()
    yield
    stop()


@pytest.mark.slow  # 200 rows twice: minutes on two CPU cores
def test_200_rows_on_2_actors_equal_the_embedded_run(tmp_path, local_ray):
    rows = make_rows(200, seed=11)
    rows[17] = {"id": "bad", "query": "q", "documents": []}  # an error row travels through Ray unchanged
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    embedded = tmp_path / "embedded.jsonl"
    on_ray = tmp_path / "ray.jsonl"
    assert run_embedded(BatchSettings(max_doc_tokens=64), read_lines(src), embedded) == 1
    args = ["batch", str(src), "-o", str(on_ray), "--ray", "--actors", "2", "--max-doc-tokens", "64"]
    result = runner.invoke(app, [*args, "--batch-size", "10"])
    assert result.exit_code == 0, result.output
    assert "200 rows, 1 with an error" in result.output
    got, want = read_jsonl(on_ray), read_jsonl(embedded)
    assert [g["id"] for g in got] == [r["id"] for r in rows]
    assert got[17]["error_type"] == "InvalidRow"
    assert_same_rows(got, want)
