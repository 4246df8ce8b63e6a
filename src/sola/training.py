"""Training one edit's LoRA with everything else frozen."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from .nn import Decision, RoutedLoraLayer
from .tasks import Batch, Task


@dataclass
class TrainResult:
    steps: int  # optimiser steps taken
    loss: float  # mean cross-entropy of the target at the end
    converged: bool  # target reproduced exactly under teacher forcing and loss under the bound
    factors: list[tuple[torch.Tensor, torch.Tensor]]  # (A, B) per edited layer, in layer order


def make_optimizer(params: list[torch.Tensor], config):
    """The optimiser every method's training uses, and its schedule (None: constant): `config.optimizer` "adam", or
    "sgd", the SoLA paper's SGD with cosine decay over `max_steps` (one meaning for every method)."""
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.learning_rate), None
    optimizer = torch.optim.SGD(params, lr=config.learning_rate)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / config.max_steps)))


def minimise(objective: Callable[[], tuple[torch.Tensor, bool]], params: list[torch.Tensor],
             config) -> tuple[int, bool]:
    """Step `params` on `objective()` -> (loss, converged) until it converges or `config.max_steps` steps were taken
    (the single-objective loop of the baselines; SoLA's batch of independent edits is `train_edits`). The caller holds
    `torch.enable_grad()`; -> (steps, converged at the last evaluation)."""
    optimizer, schedule = make_optimizer(params, config)
    steps = 0
    while True:
        loss, converged = objective()
        if converged or steps >= config.max_steps:
            return steps, converged
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if schedule is not None:
            schedule.step()
        steps += 1


def train_fixed(objective: Callable[[], torch.Tensor], params: list[torch.Tensor], schedule) -> None:
    """Exactly `schedule.fixed_steps` Adam steps on `objective()` (what it reads during the last call is the last
    iteration's, before its step), from a fresh Adam at `schedule.fixed_learning_rate` multiplied by `fixed_lr_gamma`
    every `fixed_lr_step` steps (see `sola.methods.snapshot.FixedSchedule`). The caller holds `torch.enable_grad()`."""
    optimizer = torch.optim.Adam(params, lr=schedule.fixed_learning_rate)
    decay = torch.optim.lr_scheduler.StepLR(optimizer, step_size=schedule.fixed_lr_step, gamma=schedule.fixed_lr_gamma)
    for _ in range(schedule.fixed_steps):
        loss = objective()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        decay.step()


@contextmanager
def trainable(params: list[torch.Tensor]) -> Iterator[None]:
    """`params` take gradients inside; afterwards they are frozen again with no gradient kept, and if the block
    raised, they hold the values they had before it."""
    saved = [p.detach().clone() for p in params]
    try:
        for p in params:
            p.requires_grad_(True)
        yield
    except BaseException:
        with torch.no_grad():
            for p, old in zip(params, saved):
                p.copy_(old)
        raise
    finally:
        for p in params:
            p.requires_grad_(False)
            p.grad = None


def train_edits(task: Task, decision: Decision, layers: list[RoutedLoraLayer], batch: Batch, edit_of_row: torch.Tensor,
                config, generators: list[torch.Generator], progress=None,
                resume: list[int | None] | None = None) -> list[TrainResult]:
    """Train K independent edits in one batch: row i belongs to edit `edit_of_row[i]`, whose own factors it uses.

    The objective is the sum of the edits' mean row losses, so each edit's factors get exactly the gradient they would
    get alone, and Adam (elementwise) takes the same steps; an edit is frozen (its factors copied out) at the step it
    converges. With K = 1 this is one edit trained alone. Results equal one-by-one training up to the rounding of
    batched, padded matrix products. `resume[k]` starts edit k from a stored slot's factors instead of fresh ones.

    `config` needs `layers`, `optimizer`, `learning_rate`, `max_steps` and `loss_bound` (an `EditConfig` or a
    baseline's config)."""
    count = len(generators)
    params = [p for layer in layers for p in layer.begin_training(generators, resume)]
    optimizer, schedule = make_optimizer(params, config)
    decision.fix(edit_of_row, training=True)
    members = [(edit_of_row == k).nonzero().squeeze(1) for k in range(count)]
    results: list[TrainResult | None] = [None] * count
    steps = 0
    try:
        with torch.enable_grad(), frozen_prefix(task.model, config.layers or []):
            while True:
                logits = task.target_forward(batch)
                row_loss, exact = task.score(batch, logits)
                losses = torch.stack([row_loss[rows].mean() for rows in members])
                for k, rows in enumerate(members):
                    if results[k] is not None:
                        continue
                    loss = float(losses[k].detach())
                    converged = bool(exact[rows].all()) and loss < config.loss_bound
                    if converged or steps >= config.max_steps:
                        results[k] = TrainResult(steps, loss, converged, [layer.trained_factors(k) for layer in layers])
                active = [k for k in range(count) if results[k] is None]
                if not active:
                    break
                optimizer.zero_grad(set_to_none=True)
                losses[active].sum().backward()
                optimizer.step()
                if schedule is not None:
                    schedule.step()
                steps += 1
                if progress is not None:
                    progress(steps, float(losses[active].mean().detach()))
    finally:
        decision.clear()
        for layer in layers:
            layer.end_training()
    return results


class _Replay(nn.Module):
    """Stands in for a frozen block below every edited layer while one batch trains: the first call computes the
    block's output, every later call returns that same output. Those blocks see the same input at every step and hold
    nothing trainable, so this changes no number, it only skips their work."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block
        self.output = None

    def forward(self, *args, **kwargs):
        if self.output is None:
            with torch.no_grad():
                self.output = self.block(*args, **kwargs)
        return self.output


def _block_of(model: nn.Module, name: str) -> tuple[str, int] | None:
    """The (ModuleList name, index) of the repeated block that holds the module `name`, e.g.
    "model.layers.15.mlp.down_proj" -> ("model.layers", 15)."""
    parts = name.split(".")
    modules = dict(model.named_modules())
    for i, part in enumerate(parts):
        if part.isdigit() and isinstance(modules.get(".".join(parts[:i])), nn.ModuleList):
            return ".".join(parts[:i]), int(part)
    return None


@contextmanager
def frozen_prefix(model: nn.Module, layer_names: list[str]) -> Iterator[None]:
    """While training one batch, compute the blocks below the first edited block once (see `_Replay`). Applies when
    every edited layer sits in the same stack of blocks (decoder layers, GPT-2 `h`, BERT/T5 encoder blocks); otherwise
    the model runs in full."""
    blocks = [_block_of(model, name) for name in layer_names]
    if not blocks or None in blocks or len({stack for stack, _ in blocks}) != 1:
        yield
        return
    stack_name, first = blocks[0][0], min(index for _, index in blocks)
    stack = model.get_submodule(stack_name)
    originals = [stack[i] for i in range(first)]
    try:
        for i, block in enumerate(originals):
            stack[i] = _Replay(block)
        yield
    finally:
        for i, block in enumerate(originals):
            stack[i] = block
