"""ELDER's mixture: a frozen module plus N LoRAs, mixed per input by the allocation all mixture layers share."""

from __future__ import annotations

import math

import torch
from torch import nn

from ...nn.wrapped import WrappedLinear


class MixtureLoraLayer(WrappedLinear):
    """A frozen base module plus N LoRAs mixed per row by `weights[:, index]` (B, N) of the shared routing state."""

    def __init__(self, base_layer: nn.Module, index: int, loras: int, rank: int, scale: float, state: RoutingState,
                 generator: torch.Generator) -> None:
        super().__init__(base_layer)
        in_features, out_features = self.in_features, self.out_features
        self.index, self.state, self.scale = index, state, scale
        bound = 1.0 / math.sqrt(rank)  # kaiming_uniform(a=sqrt(5)) of the authors' (in, r) matrix: fan-in r
        self.lora_A = nn.Parameter((torch.rand(loras, rank, in_features, generator=generator) * 2 - 1) * bound,
                                   requires_grad=False)
        self.lora_B = nn.Parameter(torch.zeros(loras, out_features, rank), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        weights = self.state.weights
        if weights is None:
            return out
        rows = weights[:, self.index].abs().sum(1).nonzero().squeeze(1)  # rows with a mixture
        if rows.numel() == 0:
            return out
        w = weights[rows, self.index].to(x.dtype) * self.scale  # (n, N)
        hidden = torch.einsum("btd,nrd->btnr", x[rows], self.lora_A)  # (n, T, N, r)
        hidden = hidden * w[:, None, :, None]
        delta = torch.einsum("btnr,nor->bto", hidden, self.lora_B)
        return out.index_add(0, rows, delta.to(out.dtype))


class RoutingState:
    """The allocation of the current input, shared by every mixture layer: weights (B, L, N), zero off the top-k and
    for deferred rows; None: the base model for everyone. `pending` routes at the first mixture layer's input."""

    def __init__(self) -> None:
        self.weights: torch.Tensor | None = None
        self.pending = None
        self.gate: torch.Tensor | None = None  # (B,) whether each input may use the mixture, if decided from text
