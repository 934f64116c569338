"""What the framework wrappers share: their engine fields, generated from :class:`~core_rerank.EngineSettings`.

``engine_fields(pydantic)`` builds, once per pydantic flavour (LangChain uses pydantic, LlamaIndex its bridge of
it), a pydantic model whose fields are exactly the engine's settings (same names, defaults and descriptions) plus
``reranker`` (a ready :class:`~core_rerank.Reranker`, not serialized) and the options of what a wrapper returns
besides the order (``highlights``, and pruning: ``keep``, ``prune_scope``, ``min_sentence_score``). A wrapper
inherits from it beside its framework's base class, so an engine option added to ``EngineSettings`` appears in
every wrapper, and is validated by ``EngineSettings`` alone; ``ranked_selection`` is the one way both wrappers
rank, select and prune.

Kept light (no torch, no transformers), so importing a wrapper stays cheap.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from functools import cache
from types import ModuleType
from typing import TYPE_CHECKING, Any

from .settings import EngineSettings, option_names

if TYPE_CHECKING:
    from .reranker import Reranker
    from .results import RankResult

__all__ = ["engine_fields", "finite_scores", "result_metadata"]


@cache
def engine_fields(pydantic: ModuleType) -> type:
    """The engine-fields base model for a pydantic module (``pydantic`` or ``llama_index.core.bridge.pydantic``)."""

    class EngineFields(pydantic.BaseModel):
        """Engine settings as pydantic fields (one per :class:`~core_rerank.EngineSettings` field) and an optional
        ready ``reranker``; ``engine_settings`` is them as one frozen object."""

        model_config = pydantic.ConfigDict(protected_namespaces=(), arbitrary_types_allowed=True)

        @pydantic.model_validator(mode="before")
        @classmethod
        def _settings_from_reranker(cls, data: Any) -> Any:
            return _with_reranker_settings(data)

        @pydantic.model_validator(mode="after")
        def _normalized(self) -> Any:
            # EngineSettings checks every engine field (InvalidInputError is a ValueError: pydantic reports it as a
            # ValidationError) and normalizes it (paths and dtypes as strings), so model_dump() round-trips.
            settings = self.engine_settings
            for name in option_names():
                value = getattr(settings, name)
                object.__setattr__(self, name, list(value) if isinstance(value, tuple) else value)
            return self

        highlights: bool = pydantic.Field(
            default=False,
            description="Add each returned document's sentences with their scores (start, end, text, score, tokens, "
            "truncated) to its metadata under 'highlights', from the ranking's own forward pass.",
        )
        keep: float | int | None = pydantic.Field(
            default=None,
            description="Prune each returned document to its best sentences: a fraction in (0, 1] (float) or a "
            "number of tokens (int) to keep; None (default) returns whole documents. Copies get the kept text, "
            "metadata 'highlights' and 'kept_ratio' (kept tokens over the document's).",
        )
        prune_scope: str = pydantic.Field(
            default="list",
            description="'list' (default): one keep budget over all the returned documents, their sentences "
            "competing; 'document': every returned document gets the keep budget.",
        )
        prune_rank_by: str = pydantic.Field(
            default="density",
            description="Which sentences pruning keeps first: 'density' (default: score per token) or 'score'.",
        )
        min_sentence_score: float | None = pydantic.Field(
            default=None,
            description="Prune sentences scoring below this (the sentence's share of the raw attention score); "
            "alone (keep=None) or with keep.",
        )

        @pydantic.model_validator(mode="after")
        def _pruning_checked(self) -> Any:
            if self.pruning:
                from .highlights import check_budget

                check_budget(self.keep, self.prune_scope, self.min_sentence_score, " [...] ", self.prune_rank_by)
            return self

        @property
        def pruning(self) -> bool:
            """Whether returned documents are pruned to their best sentences."""
            return self.keep is not None or self.min_sentence_score is not None

        def ranked_selection(
            self,
            query: str,
            texts: Sequence[str],
            first_stage_scores: Sequence[float] | None,
            top_n: int | None,
            min_relevance_score: float | None,
            parts: Sequence[tuple[int, int]] | None = None,
        ) -> list[RankResult]:
            """Rank ``texts``, keep the best ``top_n`` whose relevance reaches ``min_relevance_score``, and (with
            ``keep`` / ``min_sentence_score``) prune them; with ``highlights`` or pruning, results carry their
            sentences. ``parts``: per text, the (start, end) span that is the document's own text (a framework
            that scores its metadata with the text prunes only the text): the results' highlights and compression
            then refer to that part."""
            engine = self.engine
            wanted = self.highlights or self.pruning
            ranked = engine.rank(query, texts, first_stage_scores=first_stage_scores, highlights=wanted)
            chosen = ranked.select(top_n, min_relevance_score)
            if parts is not None and wanted:
                from .highlights import within

                chosen = [within(r, *parts[r.index]) for r in chosen]
            if not self.pruning:
                return chosen
            return engine.prune(
                chosen,
                keep=self.keep,
                scope=self.prune_scope,
                min_sentence_score=self.min_sentence_score,
                rank_by=self.prune_rank_by,
            )

        @pydantic.field_validator("reranker", check_fields=False)
        @classmethod
        def _reranker(cls, value: Any) -> Any:
            return _check_reranker(value)

        @property
        def engine_settings(self) -> EngineSettings:
            """The engine fields as one :class:`~core_rerank.EngineSettings` (checked)."""
            return EngineSettings.from_options({name: getattr(self, name) for name in option_names()})

        @property
        def engine(self) -> Reranker:
            """The ``core_rerank.Reranker`` it scores with: ``reranker`` when given, else the one for these settings
            (built on first use, shared process-wide)."""
            from .registry import reranker_for

            return reranker_for(self.engine_settings, self.reranker, type(self).__name__)

    # Typed Any: EngineSettings is the one check of every value (pydantic would check them again, in its own words,
    # and refuse a path or a torch.dtype that the settings take).
    fields: dict[str, Any] = {
        f.name: (Any, pydantic.Field(default=f.default, description=f.metadata["help"]))
        for f in dataclasses.fields(EngineSettings)
    }
    fields["reranker"] = (
        Any,
        pydantic.Field(
            default=None,
            exclude=True,
            description="A ready core_rerank.Reranker to score with, e.g. Reranker.from_model(model, tokenizer) on "
            "the model your application already holds (no second copy is loaded). The engine settings then come "
            "from it (give them to the Reranker); it is not serialized: a dump records those settings, so a rebuilt "
            "wrapper loads the same model by name.",
        ),
    )
    return pydantic.create_model("EngineFields", __base__=EngineFields, **fields)


def _check_reranker(value: Any) -> Any:
    """``None`` or a :class:`core_rerank.Reranker`."""
    if value is None:
        return None
    from .reranker import Reranker  # a Reranker exists, so torch is loaded already: no cost to the light import

    if not isinstance(value, Reranker):
        raise ValueError(
            f"reranker must be a core_rerank.Reranker (e.g. Reranker.from_model(model, tokenizer)), "
            f"got {type(value).__name__}"
        )
    return value


def _with_reranker_settings(data: Any) -> Any:
    """With ``reranker=`` given, the engine settings are the reranker's. One given as well must agree with it: it
    cannot be honoured."""
    if not isinstance(data, Mapping) or data.get("reranker") is None:
        return data
    held = _check_reranker(data["reranker"]).settings
    given = {name: data[name] for name in option_names() if name in data}
    differ = [n for n, v in given.items() if EngineSettings.from_options({n: v}).to_dict()[n] != getattr(held, n)]
    if differ:
        raise ValueError(
            f"give {', '.join(differ)} to the Reranker, not with reranker=...: a ready reranker's settings are "
            f"its own (it has {', '.join(f'{n}={getattr(held, n)!r}' for n in differ)})"
        )
    return {**data, **held.to_dict()}


def result_metadata(result: RankResult) -> dict[str, Any]:
    """What a wrapper adds to a returned document's metadata besides its scores: ``highlights`` when the result
    has them, ``kept_ratio`` and ``kept_tokens`` when it was pruned. JSON as it is."""
    out: dict[str, Any] = {}
    if result.highlights is not None:
        out["highlights"] = [h.to_dict() for h in result.highlights]
    if result.compression is not None:
        out["kept_ratio"] = result.compression.ratio
        out["kept_tokens"] = result.compression.kept_tokens
    return out


def finite_scores(values: Sequence[Any]) -> list[float] | None:
    """The retriever's scores a wrapper fuses: every value a finite number, else ``None`` (fusion off for
    that call: one missing score must not fail the pipeline)."""
    ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)
    return [float(v) for v in values] if ok else None
