"""Name the real cause of a failed model load: missing model, no network, gated repository, bad
quantization, unsupported model, or a dependency; never one catch-all "not found".

transformers wraps the Hugging Face Hub's errors in ``OSError``; the original exception stays in the
chain (``__cause__`` / ``__context__``), so the cause is read from the exception types, not from text.
"""

from __future__ import annotations

import os

from .errors import (
    CoreRerankError,
    DependencyMissingError,
    ModelAccessError,
    ModelDownloadError,
    ModelLoadError,
    ModelNotFoundError,
    QuantizationError,
    UnsupportedModelError,
)

__all__ = ["caused_by", "explain_load_failure", "offline"]

_LOCAL_HINT = (
    "Pass 'default' (the embedded SmolLM2-135M-Instruct), another packaged model, a local model directory, "
    "a .gguf file, or a Hugging Face id."
)


def offline(local_files_only: bool | None) -> bool:
    """Whether downloads are off for this load (``local_files_only`` or ``HF_HUB_OFFLINE``)."""
    if local_files_only:
        return True
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def _raised_in(chain: list[BaseException], *parts: str) -> bool:
    """Whether an exception of the chain was raised from a source file whose path holds one of ``parts``."""
    for e in chain:
        tb = e.__traceback__
        while tb is not None:
            filename = tb.tb_frame.f_code.co_filename
            if any(p in filename for p in parts):
                return True
            tb = tb.tb_next
    return False


def _is(chain: list[BaseException], *names: str) -> bool:
    """Whether an exception of one of the classes ``names`` (or a subclass) is in the chain."""
    return any(cls.__name__ in names for e in chain for cls in type(e).__mro__)


def caused_by(exc: BaseException, *names: str) -> bool:
    """Whether ``exc`` or an exception in its chain is of a class named in ``names`` (or a subclass)."""
    return _is(_chain(exc), *names)


def explain_load_failure(
    exc: BaseException, model_id: str, location: str, local_files_only: bool | None, quantization: str | None = None
) -> CoreRerankError:
    """The typed error for ``exc``, raised while loading ``model_id`` (config, tokenizer or weights)."""
    if isinstance(exc, CoreRerankError):
        return exc
    chain = _chain(exc)
    what = f"model {model_id!r}" + (f" (from {location})" if location != model_id else "")
    if _is(chain, "GatedRepoError"):
        return ModelAccessError(
            f"{what} is gated on the Hugging Face Hub: accept its terms on its model page, then log in "
            "(`hf auth login` or HF_TOKEN) on this machine."
        )
    if _is(chain, "RevisionNotFoundError"):
        return ModelNotFoundError(f"{what}: the requested revision does not exist on the Hugging Face Hub.")
    if _is(chain, "RepositoryNotFoundError"):
        return ModelNotFoundError(
            f"{what} does not exist on the Hugging Face Hub (or it is private: log in with `hf auth login`). "
            + _LOCAL_HINT
        )
    network_down = _is(chain, "ConnectError", "ConnectionError", "ConnectTimeout", "Timeout", "TimeoutException")
    if _is(chain, "LocalEntryNotFoundError", "OfflineModeIsEnabled") or network_down:
        if offline(local_files_only) and not network_down:
            return ModelNotFoundError(
                f"{what} is not in the local Hugging Face cache and downloads are off (HF_HUB_OFFLINE=1 or "
                "local_files_only=True). Download it once where the network is reachable, or "
                + _LOCAL_HINT[0].lower()
                + _LOCAL_HINT[1:]
            )
        return ModelDownloadError(
            f"{what} is not in the local Hugging Face cache and the Hugging Face Hub could not be reached "
            f"({chain[-1].__class__.__name__}: {chain[-1]}). Connect to the network (or set HF_ENDPOINT to a "
            "mirror), or use a local copy. " + _LOCAL_HINT
        )
    if _is(chain, "EntryNotFoundError"):
        return UnsupportedModelError(f"{what} lacks a file transformers needs ({exc}).")
    if isinstance(exc, ImportError):
        return DependencyMissingError(f"loading {what} needs a package that is not installed: {exc}")
    text = str(exc)
    if _raised_in(chain, "quantizers", "quantization_config", "bitsandbytes") or "quantiz" in text.lower():
        if quantization is None:
            return QuantizationError(f"{what} cannot load with the quantization_config in its config.json: {text}")
        return QuantizationError(
            f"{what} cannot load with quantization={quantization!r}: {text}. Use quantization=None (dense) or "
            "another quantization."
        )
    if isinstance(exc, (KeyError, ValueError)) and ("model type" in text or "Unrecognized" in text):
        return UnsupportedModelError(
            f"{what} is not a model this transformers can load as a decoder: {text}. core-rerank needs a "
            "decoder (causal) language model."
        )
    if isinstance(exc, OSError) and not _is(chain, "HfHubHTTPError"):
        return ModelNotFoundError(f"cannot load {what}: {text}\n" + _LOCAL_HINT)
    return ModelLoadError(f"cannot load {what}: {type(exc).__name__}: {text}")
