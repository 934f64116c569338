"""``EngineSettings``: one definition and one validation of every engine option, reaching every place that builds a
reranker (the Reranker, the registry, both wrappers, batch, the server and every CLI command). No model loads here."""

from __future__ import annotations

import dataclasses
import pathlib

import pytest
from typer.testing import CliRunner

from core_rerank import EngineSettings, HeadListError, InvalidInputError, InvalidInputTypeError
from core_rerank.settings import _CHECKS, LOAD_SETTINGS, option_names

runner = CliRunner(env={"COLUMNS": "300"})


def test_every_option_has_one_check_help_and_cli_text():
    assert set(_CHECKS) == set(option_names())
    for f in dataclasses.fields(EngineSettings):
        assert f.metadata["help"] and f.metadata["cli"], f.name
    assert set(LOAD_SETTINGS) < set(option_names())


def test_values_are_normalized_and_hashable():
    import torch

    s = EngineSettings(
        model=pathlib.Path("default"), heads=[[17, 4], "18-6"], dtype=torch.bfloat16, device=torch.device("cpu")
    )
    assert (s.model, s.heads, s.dtype, s.device) == ("default", ((17, 4), (18, 6)), "bfloat16", "cpu")
    assert EngineSettings(heads="17-4, 18-6").heads == ((17, 4), (18, 6))  # the command line's spelling
    assert EngineSettings(heads="ALL").heads == "all" and EngineSettings(dtype="bf16").dtype == "bfloat16"
    assert EngineSettings(quantization="none").quantization is None
    assert hash(s) == hash(EngineSettings(heads=((17, 4), (18, 6)), dtype="bfloat16", device="cpu"))
    assert s.replace(max_doc_tokens=64).max_doc_tokens == 64 and s.max_doc_tokens == 200
    assert EngineSettings().changed() == {} and s.replace(order="given").changed()["order"] == "given"


@pytest.mark.parametrize(
    ("options", "kind", "message"),
    [
        ({"max_doc_tokens": 0}, InvalidInputError, "max_doc_tokens must be a positive integer"),
        ({"max_doc_tokens": True}, InvalidInputError, "max_doc_tokens"),
        ({"max_tokens": -1}, InvalidInputError, "max_tokens"),
        ({"max_documents": 2.5}, InvalidInputError, "max_documents"),
        ({"fusion_weight": float("nan")}, InvalidInputError, "fusion_weight"),
        ({"fusion_weight": -1}, InvalidInputError, "fusion_weight"),
        ({"temperature": 0}, InvalidInputError, "temperature"),
        ({"temperature": "hot"}, InvalidInputTypeError, "temperature"),
        ({"order": "random"}, InvalidInputError, "order"),
        ({"dtype": "int8"}, InvalidInputError, "dtype"),
        ({"dtype": 3}, InvalidInputTypeError, "dtype"),
        ({"quantization": "3bit"}, InvalidInputError, "quantization"),
        ({"heads": 3.5}, InvalidInputTypeError, "heads must be"),
        ({"heads": []}, InvalidInputError, "empty list"),
        ({"heads": [(1, "x")]}, HeadListError, "is not a head"),
        ({"model": ""}, InvalidInputTypeError, "model"),
        ({"device": 0}, InvalidInputTypeError, "device"),
        ({"local_files_only": "yes"}, InvalidInputTypeError, "local_files_only"),
        ({"allow_other_model_heads": None}, InvalidInputTypeError, "allow_other_model_heads"),
    ],
)
def test_bad_values_are_refused_with_their_name(options, kind, message):
    with pytest.raises(kind, match=message):
        EngineSettings(**options)


def test_unknown_options_are_named_with_the_known_ones():
    with pytest.raises(InvalidInputTypeError, match=r"'max_doc_token'.*max_doc_tokens"):
        EngineSettings.from_options({"max_doc_token": 64})


def test_the_reranker_refuses_an_unknown_option_before_loading():
    from core_rerank import Reranker

    with pytest.raises(InvalidInputTypeError, match="unknown engine option"):
        Reranker(max_doc_token=64)
    with pytest.raises(InvalidInputTypeError, match="EngineSettings"):
        Reranker.from_settings({"model": "default"})


def test_every_place_that_builds_a_reranker_takes_every_option():
    from langchain_corerank import CoReRerank as LangChain
    from llama_index.postprocessor.core_rerank import CoReRerank as LlamaIndex

    from core_rerank.batch import BatchSettings
    from core_rerank.server import ServerSettings

    names = set(option_names())
    for wrapper in (LangChain, LlamaIndex):
        assert names <= set(wrapper.model_fields), wrapper
        for f in dataclasses.fields(EngineSettings):  # one default, one description: the settings' own
            assert wrapper.model_fields[f.name].default == f.default
            assert wrapper.model_fields[f.name].description == f.metadata["help"]
        w = wrapper(max_doc_tokens=64, heads=[(1, 0)], order="given")
        assert w.engine_settings == EngineSettings(max_doc_tokens=64, heads=((1, 0),), order="given")
        with pytest.raises(ValueError, match="order must be"):  # the settings' own check, as a ValidationError
            wrapper(order="sideways")
    assert BatchSettings().engine == EngineSettings() == ServerSettings().engine


@pytest.mark.parametrize("command", ["rank", "serve", "batch", "calibrate", "detect-heads", "evaluate"])
def test_every_command_has_the_engine_options(command):
    from core_rerank.cli import app

    out = runner.invoke(app, [command, "--help"])
    assert out.exit_code == 0, out.output
    # detect-heads and evaluate capture every head: detect-heads has no --heads, evaluate's own --heads names the
    # NAME=PATH lists it compares.
    for name in option_names():
        flag = "--" + name.replace("_", "-")
        assert (flag in out.output) != (command == "detect-heads" and name == "heads"), (command, flag)


def test_a_bad_option_on_the_command_line_is_one_error_line():
    from core_rerank.cli import app

    out = runner.invoke(app, ["rank", "-q", "x", "-d", "README.md", "--order", "sideways"])
    assert out.exit_code == 2 and out.output.startswith("error: order must be 'reverse' or 'given'")
