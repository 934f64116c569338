"""Packaged split models: assembled once into one cache file per model, re-used across reinstalls."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
from pathlib import Path

import pytest

from core_rerank.packaged import PackagedModel


@pytest.fixture()
def fake_parts(tmp_path, monkeypatch):
    """Two importable packages, each holding one part of a split file (as the pandas-sns parts do)."""
    site = tmp_path / "site"
    paths = []
    for i, payload in enumerate((b"GGUF-first-half|", b"second-half")):
        pkg = site / f"crr_fake_part{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        (pkg / "data" / "part.bin").write_bytes(payload)
        paths.append(pkg / "data" / "part.bin")
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    model = PackagedModel(
        "fake-model", "org/fake", "pip install fake", tuple((f"crr_fake_part{i}", "data/part.bin") for i in range(2))
    )
    return model, paths, tmp_path / "cache"


def test_assembles_one_file_and_reuses_it_after_a_reinstall(fake_parts):
    model, paths, cache = fake_parts
    other = cache / "packaged" / "fake-model-it.gguf"  # another packaged model whose name extends ours
    other.parent.mkdir(parents=True)
    other.write_bytes(b"other")
    first = model.gguf_file(cache)
    assert first == cache / "packaged" / "fake-model.gguf"
    assert first.read_bytes() == b"GGUF-first-half|second-half"
    assert other.exists()
    inode = first.stat().st_ino
    for p in paths:  # a reinstall: same bytes, new modification times
        os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 10**9))
    again, digest = model.locate(cache)
    assert again == first and again.stat().st_ino == inode  # not re-written
    assert digest == hashlib.sha256(b"GGUF-first-half|second-half").hexdigest()  # from the stamp, not re-hashed
    assert sorted(f.name for f in (cache / "packaged").iterdir()) == [
        "fake-model-it.gguf",
        "fake-model.gguf",
        "fake-model.parts.json",
    ]


def test_changed_parts_replace_the_assembled_file(fake_parts):
    model, paths, cache = fake_parts
    model.gguf_file(cache)
    paths[1].write_bytes(b"SECOND-HALF")  # same size, new bytes
    assert model.gguf_file(cache).read_bytes() == b"GGUF-first-half|SECOND-HALF"
    (cache / "packaged" / "fake-model.parts.json").write_text("{not json")  # a corrupt stamp: rebuilt, no crash
    assert model.gguf_file(cache).read_bytes() == b"GGUF-first-half|SECOND-HALF"
    assert len(list((cache / "packaged").glob("*.gguf"))) == 1


def test_missing_part_means_not_installed(fake_parts):
    model, paths, cache = fake_parts
    paths[0].unlink()
    assert not model.installed()
    assert model.gguf_file(cache) is None


@pytest.mark.parametrize("packaged", [True, False])
def test_dequantized_cache_keeps_one_entry_per_packaged_model(fake_parts, monkeypatch, packaged):
    from core_rerank import sources

    model, _, cache = fake_parts
    monkeypatch.setenv("CORE_RERANK_CACHE", str(cache))
    gguf = model.gguf_file(cache)
    stale = cache / "gguf" / "fake-model-fedcba9876543210fedc-v1"  # the same model's copy in an older format
    stale.mkdir(parents=True)
    sibling = cache / "gguf" / "fake-model-it-0123456789abcdef0123-v1"  # another model whose name extends ours
    sibling.mkdir()

    def fake_dequantize(gguf_file, target):
        target.mkdir(parents=True)
        (target / "config.json").write_text("{}")
        (target / sources._RECORD).write_text(json.dumps({"files": {"config.json": 2}}))

    monkeypatch.setattr(sources, "_dequantize", fake_dequantize)
    source = sources.ModelSource("gguf", "org/fake", str(gguf.parent), gguf, packaged=packaged)
    target = sources.dense_directory(source)
    assert os.path.basename(target).startswith("fake-model-")
    assert stale.exists() is not packaged  # a user's own GGUF files never prune each other
    assert sibling.exists()
    assert sources.dense_directory(source) == target


def test_a_packaged_model_that_is_not_installed_says_how_to_install_it(monkeypatch):
    from core_rerank import packaged, sources
    from core_rerank.errors import ModelNotFoundError

    missing = PackagedModel("not-here-1b", "org/not-here", "pip install not-here-part1", (("crr_not_here", "x.bin"),))
    monkeypatch.setitem(packaged.PACKAGED_MODELS, missing.name, missing)
    with pytest.raises(ModelNotFoundError, match="pip install not-here-part1"):
        sources.resolve_source("Not-Here-1B")


def test_packaged_models_have_distinct_parts_and_install_commands():
    from core_rerank.packaged import PACKAGED_MODELS

    seen: set[str] = set()
    for model in PACKAGED_MODELS.values():
        modules = [m for m, _ in model.parts]
        assert len(set(modules)) == len(modules) and not seen & set(modules), model.name
        seen |= set(modules)
        assert model.install.startswith("pip install "), model.name


def test_tests_keep_out_of_the_users_cache(default_rr):
    from conftest import TEST_CACHE

    from core_rerank.sources import cache_dir, dense_directory

    assert cache_dir() == TEST_CACHE / "core-rerank"
    assert TEST_CACHE in Path(dense_directory(default_rr.source)).parents


def test_weights_with_another_digest_are_refused(fake_parts):
    import dataclasses

    from core_rerank.errors import PackagedModelIntegrityError

    model, paths, cache = fake_parts
    good = hashlib.sha256(b"GGUF-first-half|second-half").hexdigest()
    pinned = dataclasses.replace(model, sha256=good)
    assert pinned.locate(cache) == (cache / "packaged" / "fake-model.gguf", good)
    paths[1].write_bytes(b"SECOND-HALF")  # a package of the same name with other bytes
    with pytest.raises(PackagedModelIntegrityError, match=r"pins.*pip install fake --force-reinstall"):
        pinned.locate(cache)
    single = dataclasses.replace(pinned, parts=pinned.parts[:1])  # a model shipped as one file, used in place
    with pytest.raises(PackagedModelIntegrityError, match="SHA-256"):
        single.locate(cache)


@pytest.mark.models  # hashes every installed packaged model (GBs with the extra ones)
def test_every_packaged_model_pins_its_digest_and_the_installed_ones_match():
    from core_rerank.packaged import PACKAGED_MODELS

    for model in PACKAGED_MODELS.values():
        assert model.sha256 and len(model.sha256) == 64, model.name
        if model.installed():
            from core_rerank.sources import cache_dir

            assert model.locate(cache_dir())[1] == model.sha256, model.name


@pytest.mark.parametrize(
    ("preset", "name"),
    [
        ("default", "smollm2-135m-instruct"),
        ("Fast", "smollm2-135m-instruct"),
        (" QUALITY ", "qwen2.5-coder-1.5b-instruct"),
    ],
)
def test_presets_name_packaged_models(preset, name):
    from core_rerank.packaged import find_packaged

    assert find_packaged(preset).name == name


def test_the_quality_preset_when_not_installed_says_how_to_install_it(monkeypatch):
    from core_rerank import sources
    from core_rerank.errors import ModelNotFoundError
    from core_rerank.packaged import PACKAGED_MODELS

    monkeypatch.setattr(PackagedModel, "locate", lambda self, cache_root: None)
    install = PACKAGED_MODELS["qwen2.5-coder-1.5b-instruct"].install
    with pytest.raises(ModelNotFoundError, match="'quality' preset") as err:
        sources.resolve_source("quality")
    assert install in str(err.value) and "--no-deps matters" in str(err.value)
