"""The routed LoRA layer: a frozen base module plus one LoRA per edit, selected per batch row."""

from __future__ import annotations

import math

import torch
from torch import nn

from .decision import Decision
from .wrapped import WrappedLinear


class RoutedLoraLayer(WrappedLinear):
    """Wraps `base_layer` (an `nn.Linear` or GPT-2 `Conv1D`) and adds the LoRA of the slot each row is routed to.

    LoRA factors of all edits live in two stacked buffers indexed by slot: `lora_A` (S, r, in) and `lora_B`
    (S, out, r). They are buffers, not parameters: a stored edit is frozen forever. The edit being trained lives in
    `train_A`/`train_B` (K, r, in)/(K, out, r) until `trained_factors` reads it out to be stored.

    Rows whose slot is -1 get `base_layer(x)` untouched (the same tensor values bit for bit), because the LoRA output
    is added with `index_add` to the routed rows only.
    """

    def __init__(self, base_layer: nn.Module, rank: int, scaling: float, decision: Decision) -> None:
        super().__init__(base_layer)
        in_features, out_features = self.in_features, self.out_features
        self.rank, self.scaling = rank, scaling
        self.decision = decision
        weight = base_layer.weight  # the factors sit on its device, in float32 whatever the model's dtype (a
        # bfloat16 model's LoRA delta is computed in float32 and added in bfloat16)
        self.register_buffer("lora_A", weight.new_zeros(0, rank, in_features, dtype=torch.float32), persistent=False)
        self.register_buffer("lora_B", weight.new_zeros(0, out_features, rank, dtype=torch.float32), persistent=False)
        self.train_A: nn.Parameter | None = None
        self.train_B: nn.Parameter | None = None
        # The precision edits' factors are kept in (None: the slots' own). Trained factors are rounded to it in the
        # forward pass (straight-through), so what training checks is what is stored.
        self.kept_dtype: torch.dtype | None = None

    # -- slots -------------------------------------------------------------------------------------------------------
    @property
    def capacity(self) -> int:
        return self.lora_A.shape[0]

    def grow(self, capacity: int) -> None:
        extra = capacity - self.capacity
        if extra > 0:
            self.lora_A = torch.cat([self.lora_A, self.lora_A.new_zeros(extra, *self.lora_A.shape[1:])])
            self.lora_B = torch.cat([self.lora_B, self.lora_B.new_zeros(extra, *self.lora_B.shape[1:])])

    def write_slot(self, slot: int, A: torch.Tensor, B: torch.Tensor) -> None:
        self.lora_A[slot] = A.to(self.lora_A)
        self.lora_B[slot] = B.to(self.lora_B)

    def clear_slot(self, slot: int) -> None:
        self.lora_A[slot].zero_()
        self.lora_B[slot].zero_()

    def read_slot(self, slot: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.lora_A[slot].clone(), self.lora_B[slot].clone()

    # -- training ----------------------------------------------------------------------------------------------------
    def begin_training(self, generators: list[torch.Generator],
                       resume: list[int | None] | None = None) -> list[nn.Parameter]:
        """Trainable factors for one edit per generator: fresh, A ~ Kaiming-uniform (as PEFT) drawn from that edit's
        generator and B = 0, so training starts at the base model's output; or, where `resume[k]` names a slot, a
        copy of that slot's factors (methods that keep training a shared LoRA: LoRA-FT, MELO)."""
        bound = 1.0 / math.sqrt(self.in_features)
        resume = resume or [None] * len(generators)
        A = torch.stack([(torch.rand(self.rank, self.in_features, generator=g) * 2 - 1) * bound if slot is None
                         else self.lora_A[slot].float() for g, slot in zip(generators, resume)])
        B = torch.stack([self.lora_B.new_zeros(self.out_features, self.rank) if slot is None else self.lora_B[slot]
                         for slot in resume])
        self.train_A = nn.Parameter(A.to(self.lora_A))
        self.train_B = nn.Parameter(B.clone())
        return [self.train_A, self.train_B]

    def try_factors(self, A: torch.Tensor, B: torch.Tensor) -> None:
        """Apply given factors (r, in), (out, r) as the one edit being trained, without gradients (an imported
        adapter is measured this way); `end_training` drops them."""
        self.train_A = nn.Parameter(A.unsqueeze(0).to(self.lora_A), requires_grad=False)
        self.train_B = nn.Parameter(B.unsqueeze(0).to(self.lora_B), requires_grad=False)

    def trained_factors(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Edit k's factors as they are kept (rounded to `kept_dtype`), detached copies."""
        assert self.train_A is not None and self.train_B is not None
        return self._kept(self.train_A[k]).detach().clone(), self._kept(self.train_B[k]).detach().clone()

    def end_training(self) -> None:
        """Drop the trainable factors (`trained_factors` copies out what is kept)."""
        self.train_A = self.train_B = None

    def _kept(self, t: torch.Tensor) -> torch.Tensor:
        """`t` rounded to the kept precision in the forward pass; the gradient passes through unchanged."""
        if self.kept_dtype is None or self.kept_dtype == t.dtype:
            return t
        return t + (t.detach().to(self.kept_dtype).to(t.dtype) - t.detach())

    # -- forward -----------------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        slots = self.decision.slots
        if slots is None:
            return out
        rows = (slots >= 0).nonzero().squeeze(1)
        if rows.numel() == 0:
            return out
        index = slots[rows].to(x.device)
        rows = rows.to(x.device)
        if self.decision.training:
            A, B = self._kept(self.train_A[index]), self._kept(self.train_B[index])
        else:
            A, B = self.lora_A[index], self.lora_B[index]
        x_rows = x[rows]  # (n, T, in)
        delta = (x_rows.to(A.dtype) @ A.transpose(1, 2)) @ B.transpose(1, 2)  # (n, T, r) -> (n, T, out)
        return out.index_add(0, rows, (delta * self.scaling).to(out.dtype))

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}, slots={self.capacity}"
