"""Head-list format, bundled lists, and the errors for lists that are missing, corrupt or do not fit."""

from __future__ import annotations

import json

import pytest

from core_rerank import HeadList, bundled_head_lists, load_head_list
from core_rerank.errors import HeadListError, HeadListMismatchError, HeadListNotFoundError
from core_rerank.heads import find_bundled_head_list, resolve_head_list

REFERENCE = {  # the CoRe and QRHead authors' published lists
    ("meta-llama/Llama-3.1-8B-Instruct", "core"): "13-18, 13-1, 14-13, 13-21, 14-31, 13-13, 8-11, 14-20",
    ("mistralai/Mistral-7B-Instruct-v0.2", "core"): "15-21, 15-1, 16-12, 15-7, 9-26, 12-11, 12-7, 18-0",
    ("ibm-granite/granite-3.2-8b-instruct", "core"): "19-1, 17-20, 19-19, 34-28, 17-25, 17-7, 19-4, 19-31",
    ("microsoft/phi-4", "core"): "17-1, 23-1, 19-5, 19-29, 19-34, 19-0, 18-6, 19-7",
    (
        "meta-llama/Llama-3.2-1B-Instruct",
        "qr",
    ): "8-21,8-14,7-22,6-31,8-28,10-26,10-0,5-5,8-3,6-30,8-0,7-26,7-25,7-23,11-4,8-20",
}


def test_bundled_reference_lists_are_labelled_and_exact():
    for (model_id, method), heads in REFERENCE.items():
        hl = find_bundled_head_list(model_id, method)
        assert hl is not None, model_id
        assert [f"{a}-{b}" for a, b in hl.heads] == [h.strip() for h in heads.split(",")]
        assert hl.method == method and hl.k == len(hl.heads) and hl.source
        assert ("QRHead" in hl.source) == (method == "qr")
    taus = {h.model_id: h.tau for h in bundled_head_lists() if h.method == "core"}
    assert taus["mistralai/Mistral-7B-Instruct-v0.2"] == 0.001 and taus["microsoft/phi-4"] == 0.1
    # CoRe is preferred when a model has both lists.
    assert find_bundled_head_list("meta-llama/Llama-3.1-8B-Instruct").method == "core"
    # A local directory named like the model finds its list too.
    assert find_bundled_head_list("/models/llama-3.1-8b-instruct/").model_id == "meta-llama/Llama-3.1-8B-Instruct"


def test_round_trip_and_max_layer(tmp_path):
    hl = find_bundled_head_list("ibm-granite/granite-3.2-8b-instruct")
    assert hl.max_layer == 34
    path = hl.save(tmp_path / "g.json")
    again = load_head_list(path)
    assert again.heads == hl.heads and again.to_dict() == hl.to_dict()


def _write(tmp_path, data) -> str:
    p = tmp_path / "heads.json"
    p.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(p)


FIT = {"max_doc_tokens": 200, "order": "reverse"}


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("heads"), "missing field"),
        (lambda d: d.update(format_version=99), "format_version 99"),
        (lambda d: d.update(heads=[[40, 0]]), "outside a model"),
        (lambda d: d.update(heads=[[1, 2], [1, 2]]), "listed twice"),
        (lambda d: d.update(heads=[[1, "x"]]), "is not a head"),
        (lambda d: d.update(heads=[]), "selects no heads"),
        (lambda d: d.update(method="magic"), "method must be"),
        (lambda d: d.update(scores=[1.0]), "scores for"),
        (lambda d: d.update(num_heads=0), "positive integer"),
        (lambda d: d.update(relevance_map=[1, 2]), "'relevance_map' must be an object"),
        (lambda d: d.update(relevance_map={"a": -1.0, "b": 0.0, "settings": FIT}), "must increase"),
        (lambda d: d.update(relevance_map={"a": 1.0, "b": float("nan"), "settings": FIT}), "finite numbers"),
        (lambda d: d.update(relevance_map={"a": 1.0, "settings": FIT}), "finite numbers"),
        (lambda d: d.update(relevance_map={"a": 1.0, "b": 0.0}), "settings"),  # fit settings are recorded
        (lambda d: d.update(relevance_map={"a": 1.0, "b": 0.0, "settings": {"max_doc_tokens": 200}}), "order"),
        (lambda d: d.update(relevance_map={"a": 1.0, "b": 0.0, "length": "x", "settings": FIT}), "finite numbers"),
        (lambda d: d.update(relevance_map={"a": 1.0, "b": 0.0, "n_range": [5, 2], "settings": FIT}), "n_range"),
        (  # a slope that turns negative inside the fitted list sizes would reverse the score's meaning there
            lambda d: d.update(
                relevance_map={"a": 1.0, "b": 0.0, "score_list_size": -1.0, "n_range": [2, 20], "settings": FIT}
            ),
            "slope",
        ),
        (lambda d: d.update(block_relevance_map={"a": -1.0, "b": 0.0, "settings": FIT}), "block"),
        (lambda d: d.update(fusion={"weight": -1, "settings": FIT}), "'fusion' must be"),
        (lambda d: d.update(fusion={"weight": 1.0}), "settings"),
        (lambda d: d.update(fingerprint={"shape": [3], "sample": [1.0]}), "'fingerprint' must be"),
    ],
)
def test_corrupt_lists_raise_head_list_error(tmp_path, mutate, message):
    data = find_bundled_head_list("microsoft/phi-4").to_dict()
    mutate(data)
    with pytest.raises(HeadListError, match=message):
        load_head_list(_write(tmp_path, data))


def test_relevance_map_and_fusion_weight_round_trip(tmp_path):
    data = find_bundled_head_list("microsoft/phi-4").to_dict()
    assert "relevance_map" not in data and "fusion" not in data  # a list without a fitted map writes none
    data["relevance_map"] = {"a": 2.5, "b": -1.0, "settings": FIT, "fitted_on": "train", "documents": 10}
    data["fusion"] = {"weight": 0.5, "settings": FIT, "chosen_on": "dev"}
    again = load_head_list(_write(tmp_path, data))
    assert (again.relevance_map.a, again.relevance_map.info["documents"]) == (2.5, 10)
    assert (again.fusion.weight, again.fusion.chosen_on) == (0.5, "dev")
    assert load_head_list(again.save(tmp_path / "again.json")).to_dict() == again.to_dict()


def test_unreadable_and_missing_files(tmp_path):
    with pytest.raises(HeadListError, match="not valid JSON"):
        load_head_list(_write(tmp_path, "{not json"))
    with pytest.raises(HeadListNotFoundError, match="does not exist"):
        load_head_list(tmp_path / "nope.json")


def test_resolve_forms_and_errors():
    shape = (30, 9, 3)
    assert len(resolve_head_list("all", "some/model", *shape).heads) == 270
    pairs = resolve_head_list([(3, 1), "5-2"], "some/model", *shape)
    assert pairs.heads == ((3, 1), (5, 2)) and pairs.method == "custom"
    with pytest.raises(HeadListMismatchError, match="some/model"):
        resolve_head_list([(31, 0)], "some/model", *shape)
    with pytest.raises(HeadListNotFoundError) as err:
        resolve_head_list(None, "unknown/model", *shape)
    text = str(err.value)
    assert "meta-llama/Llama-3.1-8B-Instruct" in text and "heads='all'" in text and "detect-heads" in text
    phi = find_bundled_head_list("microsoft/phi-4")
    with pytest.raises(HeadListMismatchError) as err:
        resolve_head_list(phi, "my/model", *shape)
    assert "my/model" in str(err.value) and "phi-4" in str(err.value) and "40 layers" in str(err.value)
    with pytest.raises(TypeError):
        resolve_head_list(3.5, "some/model", *shape)


def test_all_heads_list():
    hl = HeadList.all_heads("m", 2, 4, 2)
    assert hl.heads == ((0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1), (1, 2), (1, 3)) and hl.method == "all"
    assert hl.heads_by_layer == {0: [0, 1, 2, 3], 1: [0, 1, 2, 3]}


def test_a_list_for_another_model_of_the_same_shape_is_refused():
    llama = find_bundled_head_list("meta-llama/Llama-3.1-8B-Instruct")
    mistral_shape = ("mistralai/Mistral-7B-Instruct-v0.2", 32, 32, 8)
    assert (llama.num_layers, llama.num_heads, llama.num_kv_heads) == mistral_shape[1:]  # same shape
    with pytest.raises(HeadListMismatchError, match=r"Llama-3\.1-8B-Instruct.*not 'mistralai/Mistral-7B"):
        resolve_head_list(llama, *mistral_shape)
    with pytest.warns(UserWarning, match="another model"):
        used = resolve_head_list(llama, *mistral_shape, allow_other_model=True)
    assert used is llama
    # The same list for its own model, named by hub id, local directory or GGUF file name: accepted.
    for name in ("meta-llama/Llama-3.1-8B-Instruct", "/models/Llama-3.1-8B-Instruct/", "Llama-3.1-8B-Instruct.Q4_K_M"):
        assert resolve_head_list(llama, name, 32, 32, 8) is llama


def test_a_file_list_is_matched_by_model_identity(tmp_path):
    path = find_bundled_head_list("microsoft/phi-4").save(tmp_path / "phi.json")
    with pytest.raises(HeadListMismatchError, match="phi-4"):
        resolve_head_list(str(path), "someone/phi-4-lookalike", 40, 40, 10)


def test_same_model_names():
    from core_rerank.heads import same_model

    assert same_model("HuggingFaceTB/SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct")
    assert same_model("SmolLM2-135M-Instruct.Q4_1", "HuggingFaceTB/SmolLM2-135M-Instruct")
    assert same_model("gemma-3-270m-q4_k_m", "google/gemma-3-270m")
    assert not same_model("Qwen/Qwen2.5-0.5B-Instruct", "Qwen/Qwen2.5-Coder-0.5B-Instruct")
    assert not same_model("SmolLM2-360M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct")
    # core-rerank's dequantized copy of a GGUF file ("<stem>-<sha256[:20]>-v1"), as a model loaded from it is named
    cached = "/cache/core-rerank/gguf/SmolLM2-135M-Instruct.Q4_1-b179c9523d0e6a0f98a3-v1"
    assert same_model(cached, "HuggingFaceTB/SmolLM2-135M-Instruct")
    assert same_model("gemma-3-270m-q4_k_m-0123456789abcdef0123-v2/", "google/gemma-3-270m")
    assert not same_model("SmolLM2-135M-Instruct-final-v1", "HuggingFaceTB/SmolLM2-135M-Instruct")


def test_head_lists_are_hashable_values():
    a = find_bundled_head_list("microsoft/phi-4")
    b = HeadList.from_dict(a.to_dict(), origin=a.origin)
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1


def test_every_bundled_fit_was_made_with_the_shipped_defaults():
    """A relevance map or fusion weight fitted at other settings than ``Reranker()`` uses would describe another
    score: every bundled one records its settings, and they are the shipped defaults."""
    from core_rerank.heads import FIT_SETTINGS, bundled_head_lists
    from core_rerank.settings import EngineSettings

    shipped = {name: getattr(EngineSettings(), name) for name in FIT_SETTINGS}
    fits = [
        (hl.origin, fit)
        for hl in bundled_head_lists()
        for fit in (hl.relevance_map, hl.block_relevance_map, hl.fusion)
        if fit
    ]
    assert len(fits) >= 8  # the four packaged models' CoRe lists each have both
    for origin, fit in fits:
        assert dict(fit.settings) == shipped, origin


def test_a_context_relevance_map_round_trips_and_clamps_to_what_it_was_fitted_on(tmp_path):
    import math

    data = find_bundled_head_list("microsoft/phi-4").to_dict()
    data["block_relevance_map"] = {
        "a": 2.0,
        "b": -1.0,
        "length": -0.5,
        "list_size": 0.25,
        "score_list_size": 0.5,
        "tokens_range": [10, 200],
        "n_range": [5, 20],
        "settings": FIT,
    }
    again = load_head_list(_write(tmp_path, data))
    assert again.relevance_map is None and again.relevance_map_for("full") is None
    fit = again.relevance_map_for("block")
    assert fit.uses_context
    slope, offset = fit.terms(100, 10)
    assert slope == pytest.approx(2.0 + 0.5 * math.log(10))
    assert offset == pytest.approx(-1.0 - 0.5 * math.log(100) + 0.25 * math.log(10))
    assert fit.terms(1, 2) == fit.terms(10, 5)  # below the fitted ranges: their low ends
    assert fit.terms(5000, 100) == fit.terms(200, 20)  # above: their high ends
    assert load_head_list(again.save(tmp_path / "again.json")).to_dict() == again.to_dict()


def test_a_score_only_map_writes_no_context_terms():
    from core_rerank.heads import RelevanceMap

    fit = RelevanceMap(2.0, -1.0, FIT)
    assert not fit.uses_context and fit.terms(3, 50) == (2.0, -1.0)
    assert "length" not in fit.to_dict()
