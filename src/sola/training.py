"""Training one edit's LoRA with everything else frozen."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .config import EditConfig
from .nn import Decision, RoutedLoraLayer
from .tasks import Batch, Task


@dataclass
class TrainResult:
    steps: int  # optimiser steps taken
    loss: float  # mean cross-entropy of the target at the end
    converged: bool  # target reproduced exactly under teacher forcing and loss under the bound
    factors: list[tuple[torch.Tensor, torch.Tensor]]  # (A, B) per edited layer, in layer order


def train_edit(task: Task, decision: Decision, layers: list[RoutedLoraLayer], batch: Batch, config: EditConfig,
               generator: torch.Generator, progress=None) -> TrainResult:
    """Train fresh LoRA factors on every edited layer until all rows of `batch` (the edit's prompts, each followed by
    the target and its end token) reproduce the target exactly and the loss is under `config.loss_bound`, or until
    `config.max_steps`."""
    params = [p for layer in layers for p in layer.begin_training(1, generator)]
    if config.optimizer == "adam":
        optimizer = torch.optim.Adam(params, lr=config.learning_rate)
        schedule = None
    else:  # the paper's SGD with cosine decay
        optimizer = torch.optim.SGD(params, lr=config.learning_rate)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / config.max_steps)))
    rows = batch.inputs["input_ids"].shape[0]
    decision.fix(torch.zeros(rows, dtype=torch.long), training=True)  # every row trains trainable edit 0
    steps, loss, converged = 0, float("inf"), False
    try:
        with torch.enable_grad():
            while True:
                logits = task.model(**batch.inputs).logits
                row_loss, exact = task.score(batch, logits)
                objective = row_loss.mean()
                loss = float(objective.detach())
                converged = bool(exact.all()) and loss < config.loss_bound
                if converged or steps >= config.max_steps:
                    break
                optimizer.zero_grad(set_to_none=True)
                objective.backward()
                optimizer.step()
                if schedule is not None:
                    schedule.step()
                steps += 1
                if progress is not None:
                    progress(steps, loss)
    finally:
        decision.clear()
        factors = [layer.end_training()[0] for layer in layers]
    return TrainResult(steps, loss, converged, factors)
