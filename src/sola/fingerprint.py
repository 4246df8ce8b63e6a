"""Identify a base model precisely enough that a store made on one model is never applied to another."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch
from torch import nn

# Config entries that change with how a model was saved or loaded, not with what it computes.
_VOLATILE = {"_name_or_path", "transformers_version", "torch_dtype", "dtype", "quantization_config", "architectures",
             "_attn_implementation_autoset", "_commit_hash", "use_cache", "output_attentions",
             "output_hidden_states", "return_dict"}


def config_hash(config: Any) -> str:
    data = {k: v for k, v in config.to_dict().items() if k not in _VOLATILE}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def weights_hash(modules: list[nn.Module]) -> str:
    digest = hashlib.sha256()
    for module in modules:
        for name, tensor in sorted(module.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def describe_mismatch(stored: dict, actual: dict) -> str | None:
    """A sentence naming both models if they differ, else None."""
    for field in ("config_hash", "weights_hash"):
        if stored.get(field) != actual.get(field):
            return (
                f"this store was made on model {stored.get('name')!r} (config {stored.get('config_hash')}, edited "
                f"weights {stored.get('weights_hash')}) but the model given is {actual.get('name')!r} (config "
                f"{actual.get('config_hash')}, edited weights {actual.get('weights_hash')}); open it with the model "
                "it was made on, or start a new store"
            )
    return None
