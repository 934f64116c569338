"""Head lists: which attention heads score documents, in a versioned JSON format.

One JSON file per (model, selection method) is bundled in ``core_rerank/head_lists``. A list
records the model it was selected on (id and layer/head/kv-head counts, validated against the
loaded model), the heads as ``[layer, head]`` pairs (0-indexed, query-head index), their
selection scores, the method (``core`` | ``qr`` | ``all``), tau, k, the detection data and
the source, so that a list can always be traced back to how it was made.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Union

from .errors import HeadListError, HeadListMismatchError, HeadListNotFoundError, InvalidInputTypeError

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "FusionWeight",
    "HeadList",
    "HeadSpec",
    "RelevanceMap",
    "bundled_head_lists",
    "find_bundled_head_list",
    "load_head_list",
    "parse_head",
    "resolve_head_list",
]

FORMAT = "core-rerank.heads"
FORMAT_VERSION = 2
METHODS = ("core", "qr", "all", "custom")
# Preference when a model has several bundled lists.
_METHOD_PREFERENCE = {"core": 0, "qr": 1, "custom": 2, "all": 3}

Method = Literal["core", "qr", "all", "custom"]
HeadSpec = Union[None, str, os.PathLike, "HeadList", Sequence[Any]]
"""What ``Reranker(heads=...)`` accepts: None (the bundled list of the model), ``"all"``
(every head, i.e. ICR), a path to a head-list JSON, a :class:`HeadList`, or pairs
``[(layer, head), ...]`` / strings ``["13-18", ...]``."""


FIT_SETTINGS = ("max_doc_tokens", "order")
"""The engine settings a relevance map or fusion weight depends on, recorded with it as ``settings``: a map fitted
on 200-token documents says nothing of 400-token ones. The shipped defaults must equal what every bundled list
recorded (tested)."""


def _fit_settings(data: Mapping[str, Any], where: str) -> dict[str, Any]:
    settings = data.get("settings")
    if not isinstance(settings, Mapping) or sorted(settings) != sorted(FIT_SETTINGS):
        raise HeadListError(
            f"{where}: 'settings' must record the engine settings it was fitted with: {', '.join(FIT_SETTINGS)}"
        )
    return dict(settings)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class RelevanceMap:
    """A raw score as a calibrated probability of relevance, fitted on labelled training data with the engine
    ``settings`` it records (``FIT_SETTINGS``)::

        relevance = sigmoid(slope * score + offset)          (core_rerank.scoring.relevance)
        slope     = a + score_list_size * log(n)
        offset    = b + length * log(tokens) + list_size * log(n)

    where ``tokens`` is the document's token count after the cut and ``n`` the number of documents its score shared
    the query's attention with (its window's), each clamped to the range the fit saw (``tokens_range``,
    ``n_range``). The attention mass a document can draw shrinks with its length and with the list's, so the same
    raw score means more on a one-line answer among 5 than on a 200-token passage among 20; a map without those
    terms (all 0, as older lists) reads the raw score alone. ``slope > 0`` over the whole ``n_range``: for one
    document length and list, relevance increases with the score. ``fitted_on`` says on what; ``info`` keeps the
    fit's other records (document counts, calibration error, the command that made it)."""

    a: float
    b: float
    settings: Mapping[str, Any]
    fitted_on: str = ""
    info: Mapping[str, Any] = field(default_factory=dict)
    length: float = 0.0
    list_size: float = 0.0
    score_list_size: float = 0.0
    tokens_range: tuple[int, int] = (1, 100_000)
    n_range: tuple[int, int] = (1, 100_000)

    def terms(self, tokens: int, n: int) -> tuple[float, float]:
        """``(slope, offset)`` of a document of ``tokens`` tokens in a list (window) of ``n`` documents."""
        t = min(max(tokens, self.tokens_range[0]), self.tokens_range[1])
        log_n = math.log(min(max(n, self.n_range[0]), self.n_range[1]))
        slope = self.a + self.score_list_size * log_n
        return slope, self.b + self.length * math.log(max(t, 1)) + self.list_size * log_n

    @property
    def uses_context(self) -> bool:
        """Whether the map reads the document's length or the list's size besides the score."""
        return bool(self.length or self.list_size or self.score_list_size)

    @classmethod
    def from_dict(cls, data: Any, where: str) -> RelevanceMap | None:
        if data is None:
            return None
        if not isinstance(data, Mapping):
            raise HeadListError(f"{where}: 'relevance_map' must be an object with 'a', 'b' and 'settings'")
        a, b = data.get("a"), data.get("b")
        extra = {k: data.get(k, 0.0) for k in _CONTEXT_TERMS}
        if not (_number(a) and _number(b)) or not a > 0 or not all(_number(v) for v in extra.values()):
            raise HeadListError(
                f"{where}: 'relevance_map' needs finite numbers 'a' > 0 and 'b' (and {', '.join(_CONTEXT_TERMS)} "
                f"when given; got a={a!r}, b={b!r}): relevance = 1 / (1 + exp(-(a * score + b))) must increase "
                "with the score"
            )
        ranges = {}
        for name in ("tokens_range", "n_range"):
            value = data.get(name, (1, 100_000))
            if not (isinstance(value, (list, tuple)) and len(value) == 2 and all(_number(v) for v in value)) or not (
                1 <= value[0] <= value[1]
            ):
                raise HeadListError(f"{where}: 'relevance_map' {name!r} must be [low, high] with 1 <= low <= high")
            ranges[name] = (int(value[0]), int(value[1]))
        for n in ranges["n_range"]:
            if not float(a) + float(extra["score_list_size"]) * math.log(n) > 0:
                raise HeadListError(
                    f"{where}: 'relevance_map' slope a + score_list_size * log(n) must be > 0 for n in "
                    f"{list(ranges['n_range'])}: relevance must increase with the score"
                )
        skip = {"a", "b", "settings", "fitted_on", *_CONTEXT_TERMS, "tokens_range", "n_range"}
        info = {k: v for k, v in data.items() if k not in skip}
        return cls(
            float(a),
            float(b),
            _fit_settings(data, f"{where}: 'relevance_map'"),
            str(data.get("fitted_on", "")),
            info,
            **{k: float(v) for k, v in extra.items()},
            **ranges,
        )

    def to_dict(self) -> dict[str, Any]:
        context = (
            {
                **{k: getattr(self, k) for k in _CONTEXT_TERMS},
                "tokens_range": list(self.tokens_range),
                "n_range": list(self.n_range),
            }
            if self.uses_context
            else {}
        )
        return {
            "a": self.a,
            "b": self.b,
            **context,
            "settings": dict(self.settings),
            "fitted_on": self.fitted_on,
            **self.info,
        }


_CONTEXT_TERMS = ("length", "list_size", "score_list_size")


@dataclass(frozen=True)
class FusionWeight:
    """The weight ``w`` of the first stage's z-scored scores in ``z(attention) + w * z(first stage)``, chosen on
    dev data for a head list with the engine ``settings`` it records; ``chosen_on`` says on what."""

    weight: float
    settings: Mapping[str, Any]
    chosen_on: str = ""

    @classmethod
    def from_dict(cls, data: Any, where: str) -> FusionWeight | None:
        if data is None:
            return None
        if not isinstance(data, Mapping) or not _number(data.get("weight")) or data["weight"] < 0:
            raise HeadListError(f"{where}: 'fusion' must be an object with a finite 'weight' >= 0 and 'settings'")
        return cls(float(data["weight"]), _fit_settings(data, f"{where}: 'fusion'"), str(data.get("chosen_on", "")))

    def to_dict(self) -> dict[str, Any]:
        return {"weight": self.weight, "settings": dict(self.settings), "chosen_on": self.chosen_on}


@dataclass(frozen=True)
class HeadList:
    """A set of attention heads selected for one model, with its provenance."""

    model_id: str
    num_layers: int
    num_heads: int
    num_kv_heads: int
    heads: tuple[tuple[int, int], ...]
    method: Method = "custom"
    scores: tuple[float, ...] | None = None
    tau: float | None = None
    k: int | None = None
    detection: Mapping[str, Any] = field(default_factory=dict, hash=False)  # provenance: not part of the identity
    source: str = ""
    score_matrix: tuple[tuple[float, ...], ...] | None = None
    origin: str = "<in memory>"
    relevance_map: RelevanceMap | None = field(default=None, hash=False)
    """The fitted map from a raw score to a calibrated probability of relevance in ``attention="full"``; ``None``
    when none was fitted."""
    block_relevance_map: RelevanceMap | None = field(default=None, hash=False)
    """The same for ``attention="block"`` (documents encoded apart draw attention differently); ``None`` when none
    was fitted for that mode."""
    fusion: FusionWeight | None = field(default=None, hash=False)
    """The weight of the first stage's scores chosen on dev data for these heads; ``None`` when none was chosen."""
    fingerprint: Mapping[str, Any] | None = field(default=None, hash=False, compare=False)
    """The model's weights in brief (:mod:`core_rerank.recognition`): how ``Reranker.from_model`` recognises the
    model however it was loaded; ``None`` for lists of models whose weights were not at hand."""

    def __post_init__(self) -> None:
        where = f"head list {self.origin}"
        for name in ("num_layers", "num_heads", "num_kv_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise HeadListError(f"{where}: '{name}' must be a positive integer, got {value!r}")
        if self.num_heads % self.num_kv_heads:
            raise HeadListError(
                f"{where}: num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}"
            )
        if self.method not in METHODS:
            raise HeadListError(f"{where}: method must be one of {METHODS}, got {self.method!r}")
        if not self.heads:
            raise HeadListError(f"{where}: the list selects no heads")
        if len(set(self.heads)) != len(self.heads):
            raise HeadListError(f"{where}: a head is listed twice")
        for layer, head in self.heads:
            if not (0 <= layer < self.num_layers and 0 <= head < self.num_heads):
                raise HeadListError(
                    f"{where}: head {layer}-{head} is outside a model of {self.num_layers} layers x "
                    f"{self.num_heads} heads"
                )
        if self.scores is not None and len(self.scores) != len(self.heads):
            raise HeadListError(f"{where}: {len(self.scores)} scores for {len(self.heads)} heads")

    # ----------------------------------------------------------------- views
    @property
    def max_layer(self) -> int:
        """The deepest layer holding a selected head: the model is truncated after it."""
        return max(layer for layer, _ in self.heads)

    @property
    def heads_by_layer(self) -> dict[int, list[int]]:
        """Selected query-head indices grouped by layer, in list order."""
        out: dict[int, list[int]] = {}
        for layer, head in self.heads:
            out.setdefault(layer, []).append(head)
        return out

    @property
    def detected_attention(self) -> str | None:
        """The ``attention`` mode the heads were detected in (``detection["attention"]``; lists detected before
        block attention existed were detected in ``"full"``), None for a list without detection details."""
        if not self.detection:
            return None
        return str(self.detection.get("attention", "full"))

    def relevance_map_for(self, attention: str) -> RelevanceMap | None:
        """The relevance map fitted for the ``attention`` mode (``"full"`` or ``"block"``), None when none was."""
        return self.block_relevance_map if attention == "block" else self.relevance_map

    def describe(self) -> str:
        """One line for logs and errors: model, method, size, where it came from."""
        return f"{self.method} heads of {self.model_id} ({len(self.heads)} heads, from {self.origin})"

    # ------------------------------------------------------------ constructors
    @classmethod
    def all_heads(cls, model_id: str, num_layers: int, num_heads: int, num_kv_heads: int) -> HeadList:
        """Every head of every layer: the ICR baseline."""
        heads = tuple((layer, head) for layer in range(num_layers) for head in range(num_heads))
        return cls(
            model_id=model_id,
            num_layers=num_layers,
            num_heads=num_heads,
            num_kv_heads=num_kv_heads,
            heads=heads,
            method="all",
            source="all heads of all layers (ICR, arXiv 2410.02642)",
            origin="all heads",
        )

    @classmethod
    def from_pairs(
        cls, pairs: Iterable[Any], model_id: str, num_layers: int, num_heads: int, num_kv_heads: int
    ) -> HeadList:
        """A user list of ``(layer, head)`` pairs or ``"layer-head"`` strings for a given model."""
        return cls(
            model_id=model_id,
            num_layers=num_layers,
            num_heads=num_heads,
            num_kv_heads=num_kv_heads,
            heads=tuple(parse_head(p, "user head list") for p in pairs),
            method="custom",
            source="given by the caller",
            origin="user pairs",
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], origin: str = "<dict>") -> HeadList:
        """Parse and validate the JSON form; any defect raises :class:`HeadListError`."""
        if not isinstance(data, Mapping):
            raise HeadListError(f"head list {origin}: expected a JSON object, got {type(data).__name__}")
        if data.get("format") != FORMAT:
            raise HeadListError(f"head list {origin}: 'format' must be {FORMAT!r}, got {data.get('format')!r}")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise HeadListError(
                f"head list {origin}: format_version {version!r} is not supported (this core-rerank reads "
                f"version {FORMAT_VERSION}: make the list again with `core-rerank detect-heads` / `calibrate`)"
            )
        missing = [
            k for k in ("model_id", "num_layers", "num_heads", "num_kv_heads", "heads", "method") if k not in data
        ]
        if missing:
            raise HeadListError(f"head list {origin}: missing field(s) {', '.join(missing)}")
        if not isinstance(data["heads"], list):
            raise HeadListError(f"head list {origin}: 'heads' must be a list of [layer, head] pairs")
        scores = data.get("scores")
        matrix = data.get("score_matrix")
        try:
            return cls(
                model_id=str(data["model_id"]),
                num_layers=data["num_layers"],
                num_heads=data["num_heads"],
                num_kv_heads=data["num_kv_heads"],
                heads=tuple(parse_head(p, f"head list {origin}") for p in data["heads"]),
                method=data["method"],
                scores=None if scores is None else tuple(float(s) for s in scores),
                tau=None if data.get("tau") is None else float(data["tau"]),
                k=data.get("k"),
                detection=dict(data.get("detection") or {}),
                source=str(data.get("source", "")),
                score_matrix=None if matrix is None else tuple(tuple(float(v) for v in row) for row in matrix),
                origin=origin,
                relevance_map=RelevanceMap.from_dict(data.get("relevance_map"), f"head list {origin}"),
                block_relevance_map=RelevanceMap.from_dict(
                    data.get("block_relevance_map"), f"head list {origin}: block"
                ),
                fusion=FusionWeight.from_dict(data.get("fusion"), f"head list {origin}"),
                fingerprint=_fingerprint(data.get("fingerprint"), f"head list {origin}"),
            )
        except (TypeError, ValueError) as exc:
            if isinstance(exc, HeadListError):
                raise
            raise HeadListError(f"head list {origin}: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (inverse of :meth:`from_dict`)."""
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model_id": self.model_id,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "num_kv_heads": self.num_kv_heads,
            "method": self.method,
            "tau": self.tau,
            "k": self.k,
            "heads": [list(p) for p in self.heads],
            "scores": None if self.scores is None else list(self.scores),
            "detection": dict(self.detection),
            "source": self.source,
            "score_matrix": None if self.score_matrix is None else [list(r) for r in self.score_matrix],
            **({"relevance_map": self.relevance_map.to_dict()} if self.relevance_map else {}),
            **({"block_relevance_map": self.block_relevance_map.to_dict()} if self.block_relevance_map else {}),
            **({"fusion": self.fusion.to_dict()} if self.fusion else {}),
            **({"fingerprint": dict(self.fingerprint)} if self.fingerprint else {}),
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the JSON form to ``path``."""
        out = Path(path)
        text = json.dumps(self.to_dict(), indent=1)
        # Keep each [layer, head] pair (and each score-matrix row) on one line.
        text = re.sub(r"\[\s*([-+\d.eE,\s]+?)\s*\]", _one_line, text)
        out.write_text(text + "\n", encoding="utf-8")
        return out

    # -------------------------------------------------------------- checking
    def check_fits(self, model_id: str, num_layers: int, num_heads: int, num_kv_heads: int) -> None:
        """Raise :class:`HeadListMismatchError` unless the list was made for a model of this shape."""
        got = (num_layers, num_heads, num_kv_heads)
        want = (self.num_layers, self.num_heads, self.num_kv_heads)
        if got != want:
            raise HeadListMismatchError(
                f"the {self.describe()} does not fit model {model_id!r}: the list is for "
                f"{want[0]} layers x {want[1]} heads / {want[2]} kv heads, the model has "
                f"{got[0]} layers x {got[1]} heads / {got[2]} kv heads. Use a head list made for this model, "
                "heads='all', or detect one with `core-rerank detect-heads`."
            )


def _fingerprint(data: Any, where: str) -> dict[str, Any] | None:
    if data is None:
        return None
    ok = (
        isinstance(data, Mapping)
        and isinstance(data.get("shape"), list)
        and len(data["shape"]) == 2
        and isinstance(data.get("sample"), list)
        and all(_number(v) for v in data["sample"])
    )
    if not ok:
        raise HeadListError(f"{where}: 'fingerprint' must be an object with a 'shape' [rows, columns] and a 'sample'")
    return {"shape": [int(v) for v in data["shape"]], "sample": [float(v) for v in data["sample"]]}


def _one_line(match: re.Match[str]) -> str:
    return "[" + ", ".join(x.strip() for x in match.group(1).split(",")) + "]"


def parse_head(item: Any, where: str) -> tuple[int, int]:
    """A head given as ``(layer, head)`` / ``[layer, head]`` or ``"layer-head"``; anything else is a
    :class:`HeadListError` naming ``where``."""
    if isinstance(item, str):
        parts = item.replace(":", "-").split("-")
        if len(parts) == 2 and all(p.strip().isdigit() for p in parts):
            return int(parts[0]), int(parts[1])
    elif (
        isinstance(item, Sequence)
        and len(item) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in item)
    ):
        return int(item[0]), int(item[1])
    raise HeadListError(f"{where}: {item!r} is not a head; use [layer, head] or 'layer-head'")


def load_head_list(path: str | os.PathLike) -> HeadList:
    """Read a head-list JSON file; a missing or corrupt file raises :class:`HeadListError`."""
    p = Path(path)
    if not p.is_file():
        raise HeadListNotFoundError(f"head list file {str(p)!r} does not exist")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HeadListError(f"head list {p}: not valid JSON ({exc})") from exc
    return HeadList.from_dict(data, origin=str(p))


@lru_cache(maxsize=1)
def bundled_head_lists() -> tuple[HeadList, ...]:
    """All head lists shipped with the package."""
    root = resources.files("core_rerank") / "head_lists"
    lists = []
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".json"):
            data = json.loads(entry.read_text(encoding="utf-8"))
            lists.append(HeadList.from_dict(data, origin=f"bundled:{entry.name}"))
    return tuple(lists)


# A GGUF file's stem carries its quantization: "SmolLM2-135M-Instruct.Q4_1", "gemma-3-270m-q4_k_m".
_QUANT_TAG = re.compile(r"[.-](?:i?q\d\w*|f16|f32|bf16)$", re.IGNORECASE)
# core-rerank's dequantized copy of a GGUF file is a directory "<stem>-<sha256[:20]>-v<n>" (sources.py): a model
# loaded from it (``from_pretrained(dir)``, then ``Reranker.from_model``) is named by that directory.
_CACHE_SUFFIX = re.compile(r"-[0-9a-f]{20}-v\d+$")


def _model_name(model_id: str) -> str:
    name = model_id.strip().rstrip("/").rsplit("/", 1)[-1].lower()
    return _QUANT_TAG.sub("", _CACHE_SUFFIX.sub("", name))


def same_model(given: str, listed: str) -> bool:
    """Whether ``given`` (a hub id, a directory or a GGUF file's name) names the model ``listed``: the
    full id, or its last part (a local copy keeps the repository's name), quantization tag and core-rerank's
    dequantization-cache suffix aside."""
    return given.strip().rstrip("/").lower() == listed.lower() or _model_name(given) == _model_name(listed)


def find_bundled_head_list(model_id: str, method: str | None = None) -> HeadList | None:
    """The bundled list for ``model_id`` (matched on the full id or its last path part).

    With several methods bundled for one model, CoRe is preferred over QR heads, QR over all heads.
    """
    found = [h for h in bundled_head_lists() if same_model(model_id, h.model_id)]
    if method is not None:
        found = [h for h in found if h.method == method]
    return min(found, key=lambda h: _METHOD_PREFERENCE[h.method]) if found else None


def _bundled_listing() -> str:
    return "\n".join(f"  - {h.model_id} [{h.method}, {len(h.heads)} heads]" for h in bundled_head_lists())


def resolve_head_list(
    spec: HeadSpec,
    model_id: str,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    allow_other_model: bool = False,
) -> HeadList:
    """Turn what a user passed as ``heads=`` into a validated list that fits the model.

    A list made for another model is refused even when the shapes match (heads are model-specific:
    Llama-3.1-8B's list means nothing for Mistral-7B), unless ``allow_other_model``, which warns.
    """
    if isinstance(spec, HeadList):
        heads = spec
    elif spec is None:
        found = find_bundled_head_list(model_id)
        if found is None:
            raise HeadListNotFoundError(
                f"no head list is bundled for model {model_id!r}. Bundled lists:\n{_bundled_listing()}\n"
                "Pass heads='all' to score with every head (ICR), heads=[(layer, head), ...] or a head-list "
                "JSON path, or make a list for this model with `core-rerank detect-heads --model ...`."
            )
        heads = found
    elif isinstance(spec, str) and spec.strip().lower() == "all":
        return HeadList.all_heads(model_id, num_layers, num_heads, num_kv_heads)
    elif isinstance(spec, (str, os.PathLike)):
        heads = load_head_list(spec)
    elif isinstance(spec, Sequence):
        return _checked_pairs(spec, model_id, num_layers, num_heads, num_kv_heads)
    else:
        raise InvalidInputTypeError(
            f"heads must be None, 'all', a path, a HeadList or a list of (layer, head) pairs, got {type(spec).__name__}"
        )
    heads.check_fits(model_id, num_layers, num_heads, num_kv_heads)
    if not same_model(model_id, heads.model_id):
        if not allow_other_model:
            raise HeadListMismatchError(
                f"the {heads.describe()} was made for {heads.model_id!r}, not {model_id!r}: attention heads are "
                "model-specific, so another model's list (even of the same shape) would score with arbitrary heads. "
                "Detect a list for this model with `core-rerank detect-heads`, use heads='all', or pass "
                "allow_other_model_heads=True if this model is that one under another name (a fine-tune, a local copy)."
            )
        warnings.warn(
            f"using the {heads.describe()} for model {model_id!r} (allow_other_model_heads=True): heads found on "
            "another model may not be this model's retrieval heads",
            UserWarning,
            stacklevel=3,
        )
    return heads


def _checked_pairs(pairs: Sequence[Any], model_id: str, num_layers: int, num_heads: int, num_kv_heads: int) -> HeadList:
    try:
        return HeadList.from_pairs(pairs, model_id, num_layers, num_heads, num_kv_heads)
    except HeadListError as exc:
        raise HeadListMismatchError(
            f"the user head list does not fit model {model_id!r} ({num_layers} layers x {num_heads} heads): {exc}"
        ) from exc
