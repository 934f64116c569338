"""Every failure is a typed CoreRerankError that names its real cause; input errors stay ValueError/TypeError."""

from __future__ import annotations

import pytest
from conftest import SANITY_DOCS

from core_rerank import Reranker
from core_rerank.errors import (
    CoreRerankError,
    DependencyMissingError,
    InvalidInputError,
    InvalidInputTypeError,
    ModelAccessError,
    ModelDownloadError,
    ModelNotFoundError,
    QuantizationError,
    TooManyDocumentsError,
)

Q = "which fruit is high in potassium?"


@pytest.mark.parametrize(
    ("call", "kind", "builtin", "message"),
    [
        (lambda rr: rr.rank("", SANITY_DOCS), InvalidInputError, ValueError, "query is empty"),
        (lambda rr: rr.rank(None, SANITY_DOCS), InvalidInputTypeError, TypeError, "query must be a string"),
        (lambda rr: rr.rank(b"bytes", SANITY_DOCS), InvalidInputTypeError, TypeError, "query must be a string"),
        (lambda rr: rr.rank(Q, "one string"), InvalidInputTypeError, TypeError, "documents must be a list"),
        (lambda rr: rr.rank(Q, ["ok", 3]), InvalidInputTypeError, TypeError, "document 1 is int"),
        (lambda rr: rr.rank(Q, [{"body": "x"}]), InvalidInputTypeError, TypeError, "document 0 .*'text'"),
        (lambda rr: rr.rank(Q, [{"text": "x", "title": 5}]), InvalidInputTypeError, TypeError, "'title'"),
        (lambda rr: rr.rank(Q, SANITY_DOCS, top_n=0), InvalidInputError, ValueError, "top_n"),
        (lambda rr: rr.rank(Q, SANITY_DOCS, min_score=float("nan")), InvalidInputError, ValueError, "NaN"),
        (lambda rr: rr.rank(Q, SANITY_DOCS, min_score="high"), InvalidInputTypeError, TypeError, "min_score"),
        (lambda rr: rr.rank_batch(Q, SANITY_DOCS), InvalidInputTypeError, TypeError, "queries must be a list"),
        (lambda rr: rr.rank_batch([Q], [SANITY_DOCS] * 2), InvalidInputError, ValueError, "document lists"),
        (lambda rr: rr.score(Q, SANITY_DOCS * 200), TooManyDocumentsError, ValueError, "max_documents=1000"),
        (lambda rr: Reranker(order="random"), InvalidInputError, ValueError, "order"),
        (lambda rr: Reranker(max_doc_tokens=0), InvalidInputError, ValueError, "max_doc_tokens"),
        (lambda rr: Reranker(max_documents=-1), InvalidInputError, ValueError, "max_documents"),
        (lambda rr: Reranker(temperature=0), InvalidInputError, ValueError, "temperature"),
        (lambda rr: Reranker(dtype="int8"), InvalidInputError, ValueError, "dtype"),
        (lambda rr: Reranker(quantization="3bit"), InvalidInputError, ValueError, "quantization"),
        (lambda rr: Reranker(heads=3.5), InvalidInputTypeError, TypeError, "heads must be"),
    ],
)
def test_input_errors_are_typed(default_rr, call, kind, builtin, message):
    with pytest.raises(kind, match=message) as err:
        call(default_rr)
    assert isinstance(err.value, CoreRerankError) and isinstance(err.value, builtin)


def test_the_document_limit_is_configurable(fp32_shallow):
    from core_rerank.settings import DEFAULT_MAX_DOCUMENTS

    assert fp32_shallow.max_documents == DEFAULT_MAX_DOCUMENTS == 1000
    few = Reranker(heads=fp32_shallow.head_list.heads, dtype="float32", max_documents=3)
    assert len(few.rank(Q, SANITY_DOCS[:3])) == 3
    with pytest.raises(TooManyDocumentsError, match="max_documents=3"):
        few.rank(Q, SANITY_DOCS[:4])
    unlimited = Reranker(heads=fp32_shallow.head_list.heads, dtype="float32", max_documents=None)
    assert unlimited.max_documents is None


def _hub_error(cls_name: str, status: int):
    import httpx2
    from huggingface_hub import errors

    response = httpx2.Response(status, request=httpx2.Request("GET", "https://huggingface.co/org/model"))
    return getattr(errors, cls_name)(f"{cls_name} for org/model", response=response)


def _failing_config(monkeypatch, cause: BaseException):
    """AutoConfig.from_pretrained fails as transformers does: an OSError raised from the hub's error."""
    import transformers

    def fail(*args, **kwargs):
        try:
            raise cause
        except BaseException as exc:
            raise OSError("We couldn't load the files for org/model") from exc

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", fail)


def test_a_gated_repository_says_log_in(monkeypatch):
    _failing_config(monkeypatch, _hub_error("GatedRepoError", 401))
    with pytest.raises(ModelAccessError, match=r"gated.*log in") as err:
        Reranker("org/model", heads="all")
    assert isinstance(err.value, PermissionError)


def test_a_missing_repository_is_not_found(monkeypatch):
    _failing_config(monkeypatch, _hub_error("RepositoryNotFoundError", 404))
    with pytest.raises(ModelNotFoundError, match="does not exist on the Hugging Face Hub"):
        Reranker("org/model", heads="all")


def test_no_network_is_a_download_error_not_a_missing_model(monkeypatch):
    import httpx2
    from huggingface_hub.errors import LocalEntryNotFoundError

    monkeypatch.delenv("HF_HUB_OFFLINE")
    try:
        raise httpx2.ConnectError("[Errno -2] Name or service not known")
    except httpx2.ConnectError as exc:
        try:
            raise LocalEntryNotFoundError("An error happened while trying to locate the file on the Hub") from exc
        except LocalEntryNotFoundError as hub_exc:
            cause = hub_exc
    _failing_config(monkeypatch, cause)
    with pytest.raises(ModelDownloadError, match="could not be reached") as err:
        Reranker("org/model", heads="all")
    assert isinstance(err.value, ConnectionError)


def test_offline_and_not_cached_is_not_found():
    # Real transformers, real hub client: HF_HUB_OFFLINE=1 in the tests.
    with pytest.raises(ModelNotFoundError, match="downloads are off"):
        Reranker("no-such-org/no-such-model-xyz")


def test_a_quantization_config_that_cannot_load_says_so(tmp_path):
    import json

    from conftest import save_tiny_model

    path = save_tiny_model(tmp_path / "tiny")
    config = json.loads((path / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True, "load_in_8bit": True}
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(QuantizationError, match=r"quantization_config.*only one"):
        Reranker(str(path), heads="all")
    config["quantization_config"] = {"quant_method": "gptq", "bits": 4, "group_size": 128}
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(DependencyMissingError, match="optimum"):
        Reranker(str(path), heads="all")
