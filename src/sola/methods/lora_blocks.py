"""LoRA blocks that keep training as edits arrive: what LoRA-FT (one block for everything) and MELO (one block per
cluster of edits) share. The layers, rank and training loop are SoLA's (`RoutedLoraLayer`, `train_edits`), so the
three methods differ only in which block an edit trains and which block an input uses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..architectures import default_layers, default_rank
from ..errors import ConfigError
from ..nn import Decision, RoutedLoraLayer
from ..nn.injection import modules
from ..training import frozen_prefix, train_edits, train_fixed
from .snapshot import BaselineConfig, SnapshotEditor, generators_for


@dataclass
class LoraBlocksConfig(BaselineConfig):
    layers: list[str] | None = None
    """The modules that get LoRA blocks. None: the architecture's SoLA layers (three MLP down projections of
    SmolLM2-135M), so the methods are compared on the same layers."""

    rank: int | None = None  # None: the architecture's SoLA rank (4)

    def validate(self):
        super().validate()
        if self.rank is not None and self.rank < 1:
            raise ConfigError(f"rank={self.rank} must be a positive integer")
        if self.layers is not None and (not self.layers or not all(isinstance(n, str) for n in self.layers)):
            raise ConfigError("layers must be a non-empty list of module names, e.g. ['model.layers.15.mlp.down_proj']")
        return self


class LoraBlocksEditor(SnapshotEditor):
    config_class = LoraBlocksConfig

    def _build(self) -> list[nn.Module]:
        layers = self.config.layers or default_layers(self.model)
        modules(self.model, layers)
        self.config = self.config.replace(layers=list(layers), rank=self.config.rank or default_rank(self.model))
        self.decision = Decision()
        self.layers = []
        for name in layers:
            self.layers.append(self.attachments.inject(name, lambda base: RoutedLoraLayer(base, self.config.rank, 1.0,
                                                                                     self.decision)))
        return [layer.base_layer for layer in self.layers]

    def _blocks(self) -> int:
        return self.layers[0].capacity

    def _grow(self, blocks: int) -> None:
        for layer in self.layers:
            layer.grow(blocks)

    def _train_block(self, edit_id: str, encoded, targets, block: int, fresh: bool) -> tuple[int, float, bool]:
        """Train `block` on one edit (from fresh factors or from the block's own) and write the result back."""
        batch = self.task.batch(encoded, targets)
        rows = torch.zeros(len(encoded), dtype=torch.long)
        result = train_edits(self.task, self.decision, self.layers, batch, rows, self.config,
                             generators_for(self.config.seed, edit_id), resume=None if fresh else [block])[0]
        for layer, (A, B) in zip(self.layers, result.factors):
            layer.write_slot(block, A, B)
        return result.steps, result.loss, result.converged

    def _train_block_fixed(self, seed_name: str, encoded, targets, block: int) -> dict[str, torch.Tensor]:
        """Train `block` from fresh factors on all these rows together on the fixed schedule (the authors' runner:
        `FixedSchedule`) and write it back; -> each row's loss and exactness at the last iteration."""
        batch = self.task.batch(encoded, targets)
        params = [p for layer in self.layers for p in layer.begin_training(generators_for(self.config.seed, seed_name))]
        self.decision.fix(torch.zeros(len(encoded), dtype=torch.long), training=True)
        last: dict[str, torch.Tensor] = {}

        def objective() -> torch.Tensor:
            row_loss, exact = self.task.score(batch, self.task.target_forward(batch))
            last.update(losses=row_loss.detach(), exact=exact)
            return row_loss.mean()

        try:
            with torch.enable_grad(), frozen_prefix(self.model, self.config.layers):
                train_fixed(objective, params, self.config)
            factors = [layer.trained_factors(0) for layer in self.layers]
        finally:
            self.decision.clear()
            for layer in self.layers:
                layer.end_training()
        for layer, (A, B) in zip(self.layers, factors):
            layer.write_slot(block, A, B)
        return last

    def _route_all(self, rows: int, block: int | None) -> None:
        """A decision that sends each of `rows` rows to `block` (None: the base model)."""
        if block is None or self._disabled:
            self.decision.clear()
        else:
            self.decision.fix(torch.full((rows,), block, dtype=torch.long))

    def _block_state(self) -> dict[str, torch.Tensor]:
        tensors = {}
        for name, layer in zip(self.config.layers, self.layers):
            tensors[f"{name}.lora_A"], tensors[f"{name}.lora_B"] = layer.lora_A, layer.lora_B
        return tensors

    def _restore_blocks(self, tensors: dict[str, torch.Tensor]) -> None:
        for name, layer in zip(self.config.layers, self.layers):
            layer.lora_A, layer.lora_B = tensors[f"{name}.lora_A"].clone(), tensors[f"{name}.lora_B"].clone()

    def _memory(self) -> dict[str, Any]:
        return {"lora": sum(layer.lora_A.nbytes + layer.lora_B.nbytes for layer in self.layers)}
