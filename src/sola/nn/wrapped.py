"""What every module that wraps a model's linear layer shares: its sizes and the attributes code around it reads."""

from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D


class WrappedLinear(nn.Module):
    """Wraps `base_layer` (an `nn.Linear` or GPT-2 `Conv1D`, whose weight is stored transposed) and exposes
    `in_features`, `out_features`, `weight` and `bias` as the base layer has them (T5 checks `wo.weight.dtype`; PEFT's
    layers expose them too)."""

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        if isinstance(base_layer, nn.Linear):
            in_features, out_features = base_layer.in_features, base_layer.out_features
        elif isinstance(base_layer, Conv1D):
            in_features, out_features = base_layer.weight.shape
        else:
            raise TypeError(f"can only wrap nn.Linear or Conv1D, not {type(base_layer).__name__}")
        self.base_layer, self.in_features, self.out_features = base_layer, in_features, out_features

    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias
