"""The dequantized-model cache survives faults: a process killed while writing, a truncated or damaged file, a
cache directory that cannot be written. The checks themselves run on small files in the default suite; the same
faults on the default model's real copy (each a dequantization of tens of seconds on two cores) are marked slow.
Each uses a cache directory of its own (CORE_RERANK_CACHE) and a model depth no other test loads, so what it loads
is read from that directory, not from the process's model cache."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import SANITY_DOCS

from core_rerank import ModelCacheError, Reranker
from core_rerank.sources import cache_problem, dense_directory, resolve_source

QUERY = "which fruit is high in potassium?"


@pytest.fixture(scope="module")
def good_copy(tmp_path_factory) -> Path:
    """One complete dequantized copy of the default model, built once (the other tests copy it)."""
    root = tmp_path_factory.mktemp("cache")
    old = os.environ["CORE_RERANK_CACHE"]
    os.environ["CORE_RERANK_CACHE"] = str(root)
    try:
        target = Path(dense_directory(resolve_source("default")))
    finally:
        os.environ["CORE_RERANK_CACHE"] = old
    assert cache_problem(target) is None
    return target


@pytest.fixture
def cache(tmp_path, monkeypatch, good_copy) -> Path:
    """A cache directory of this test's own holding a copy of the good one; returns the copy's directory."""
    root = tmp_path / "cache"
    monkeypatch.setenv("CORE_RERANK_CACHE", str(root))
    target = root / "gguf" / good_copy.name
    shutil.copytree(good_copy, target)
    return target


def _reranker(layer: int) -> Reranker:
    from core_rerank import clear_cache

    clear_cache()
    return Reranker(heads=[(layer, 0), (layer, 4)], dtype="float32")


# ---------------------------------------------------------------- the checks, on small files
def _small_copy(target: Path) -> Path:
    """A complete copy as _dequantize writes one: a small safetensors file, a config, and the completion record."""
    import torch
    from safetensors.torch import save_file

    from core_rerank import sources

    target.mkdir(parents=True)
    save_file({"a": torch.arange(100, dtype=torch.float32), "b": torch.ones(3, 4)}, str(target / "model.safetensors"))
    (target / "config.json").write_text("{}")
    sizes = {p.name: p.stat().st_size for p in target.iterdir()}
    (target / sources._RECORD).write_text(json.dumps({"files": sizes}))
    return target


def test_the_checks_find_every_kind_of_damage(tmp_path):
    good = _small_copy(tmp_path / "good")
    assert cache_problem(good) is None and cache_problem(tmp_path / "none") == "missing"
    cut = _small_copy(tmp_path / "cut")
    with open(cut / "model.safetensors", "r+b") as fh:
        fh.truncate(200)
    assert "corrupt (model.safetensors is 200 bytes" in cache_problem(cut)
    header = _small_copy(tmp_path / "header")
    with open(header / "model.safetensors", "r+b") as fh:
        fh.seek(10)
        fh.write(b"\x00\x01")
    assert "damaged header" in cache_problem(header)
    unrecorded = _small_copy(tmp_path / "unrecorded")
    (unrecorded / "core-rerank-complete.json").unlink()
    assert "incomplete" in cache_problem(unrecorded)
    missing = _small_copy(tmp_path / "missing")
    (missing / "config.json").unlink()
    assert "config.json is missing" in cache_problem(missing)


def test_a_damaged_copy_is_rebuilt_with_a_warning(tmp_path, monkeypatch, caplog):
    from core_rerank import sources

    monkeypatch.setenv("CORE_RERANK_CACHE", str(tmp_path / "cache"))
    built = []

    def fake_dequantize(gguf_file, target):
        built.append(target)
        _small_copy(target)

    monkeypatch.setattr(sources, "_dequantize", fake_dequantize)
    source = resolve_source("default")
    target = Path(dense_directory(source))
    assert built == [target] and dense_directory(source) == str(target) and len(built) == 1  # reused when whole
    with open(target / "model.safetensors", "r+b") as fh:
        fh.truncate(50)
    with caplog.at_level(logging.WARNING, logger="core_rerank.sources"):
        assert dense_directory(source) == str(target)
    assert len(built) == 2 and "is corrupt" in caplog.text and "rebuilding it" in caplog.text
    assert cache_problem(target) is None


# ---------------------------------------------------------------- the same faults on the real default model


@pytest.mark.slow
def test_a_truncated_file_is_found_rebuilt_and_said(cache, caplog):
    want = _reranker(1).score(QUERY, SANITY_DOCS)
    weights = cache / "model.safetensors"
    with open(weights, "r+b") as fh:
        fh.truncate(weights.stat().st_size // 3)  # what a full disk or a copy cut short leaves
    assert "corrupt" in cache_problem(cache)
    with caplog.at_level(logging.WARNING, logger="core_rerank.sources"):
        got = _reranker(1).score(QUERY, SANITY_DOCS)
    assert "is corrupt" in caplog.text and "rebuilding it" in caplog.text
    assert got == pytest.approx(want, abs=1e-6)
    assert cache_problem(cache) is None


@pytest.mark.slow
def test_a_damaged_header_is_found_and_rebuilt(cache, caplog):
    with open(cache / "model.safetensors", "r+b") as fh:
        fh.seek(12)
        fh.write(b"\x00garbage\x00")  # same size, header no longer JSON
    assert "damaged header" in cache_problem(cache)
    with caplog.at_level(logging.WARNING, logger="core_rerank.sources"):
        got = _reranker(2).score(QUERY, SANITY_DOCS)
    assert "damaged header" in caplog.text
    assert got == pytest.approx(_reranker(2).score(QUERY, SANITY_DOCS), abs=1e-6)  # from the rebuilt copy


@pytest.mark.slow
def test_a_copy_without_its_completion_record_is_not_trusted(cache, caplog):
    (cache / "core-rerank-complete.json").unlink()
    with caplog.at_level(logging.WARNING, logger="core_rerank.sources"):
        dense_directory(resolve_source("default"))
    assert "incomplete" in caplog.text and cache_problem(cache) is None


_WRITER = """
import os, sys
os.environ["CORE_RERANK_CACHE"] = sys.argv[1]
from core_rerank.sources import dense_directory, resolve_source
dense_directory(resolve_source("default"))
"""


@pytest.mark.slow
def test_a_process_killed_while_writing_leaves_no_half_copy(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(root)], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300  # bounds a hang, never a speed check
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            partial = list((root / "gguf").glob(".tmp-*/model.safetensors")) if (root / "gguf").is_dir() else []
            if partial and partial[0].stat().st_size > 0:
                break  # it is writing the weights now
            time.sleep(0.02)
        assert proc.poll() is None, "the writer finished before it could be killed"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(60)
    copies = [p for p in (root / "gguf").iterdir() if not p.name.startswith(".tmp-")]
    assert copies == []  # only a temporary directory is left: no reader can ever see a half copy
    monkeypatch.setenv("CORE_RERANK_CACHE", str(root))
    target = Path(dense_directory(resolve_source("default")))  # the next load builds a complete one
    assert cache_problem(target) is None


@pytest.mark.slow
def test_an_unwritable_cache_scores_from_memory_with_a_warning(tmp_path, monkeypatch, caplog, good_copy):
    want = _reranker(3).score(QUERY, SANITY_DOCS)  # from the test session's own cache
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("CORE_RERANK_CACHE", str(blocker / "cache"))  # cannot be created, even by root
    with caplog.at_level(logging.WARNING, logger="core_rerank.sources"):
        got = _reranker(3).score(QUERY, SANITY_DOCS)
    assert "cannot write the dequantized copy" in caplog.text and str(blocker) in caplog.text
    assert "CORE_RERANK_CACHE" in caplog.text and "in memory" in caplog.text
    assert got == pytest.approx(want, abs=1e-5)  # the same weights, read from the GGUF file in memory


def test_a_full_cache_is_an_error_naming_the_directory(tmp_path, monkeypatch):
    from core_rerank import sources

    monkeypatch.setenv("CORE_RERANK_CACHE", str(tmp_path / "cache"))

    def disk_full(gguf_file, target):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(sources, "_dequantize", disk_full)
    with pytest.raises(ModelCacheError, match=r"(?s)No space left.*CORE_RERANK_CACHE") as err:
        dense_directory(resolve_source("default"))
    assert str(tmp_path / "cache") in str(err.value) and isinstance(err.value, OSError)
    assert sources.weights(resolve_source("default")).gguf_file is not None  # the loader falls back to memory


def test_a_split_packaged_model_that_cannot_be_assembled_says_where(tmp_path):
    from core_rerank.packaged import PackagedModel

    site = tmp_path / "site"
    for i in range(2):
        (site / f"crr_cache_part{i}" / "data").mkdir(parents=True)
        (site / f"crr_cache_part{i}" / "__init__.py").write_text("")
        (site / f"crr_cache_part{i}" / "data" / "part.bin").write_bytes(b"x")
    sys.path.insert(0, str(site))
    try:
        model = PackagedModel(
            "fake", "org/fake", "pip install fake", tuple((f"crr_cache_part{i}", "data/part.bin") for i in range(2))
        )
        blocker = tmp_path / "a-file"
        blocker.write_text("")
        with pytest.raises(ModelCacheError, match="cannot assemble the packaged model fake"):
            model.locate(blocker / "cache")
    finally:
        sys.path.remove(str(site))


def test_stale_temporary_directories_are_removed(tmp_path):
    from core_rerank.sources import _STALE_TMP_SECONDS, _remove_stale_temporaries

    old, fresh = tmp_path / ".tmp-old", tmp_path / ".tmp-new"
    old.mkdir()
    fresh.mkdir()
    past = time.time() - _STALE_TMP_SECONDS - 60
    os.utime(old, (past, past))
    _remove_stale_temporaries(tmp_path)
    assert not old.exists() and fresh.exists()  # one still being written by another process is left alone
