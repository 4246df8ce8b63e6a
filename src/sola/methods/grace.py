"""GRACE (Hartvigsen et al., 2023): a codebook at one layer that maps keys to learned replacement outputs.

At the edited layer, the key of an input is the layer's input at the last prompt token. If it lies within the radius
of the nearest codebook entry, the layer's output at that token is replaced by the entry's value; otherwise the layer
runs untouched. As in the authors' code ("replace_last"), only the last prompt token's output is replaced; the
decision is made once, on the prompt, and the generated tokens read the replaced position through attention (the
authors' generation re-reads a key at every new token, which we do not).

Codebook rules, per new key (the authors' `GRACEAdapter`): farther than `radius + r_j` from the nearest entry j: a new
entry with radius `radius`; within it and the same target: entry j's radius grows to cover the key ("coverage") and
its value keeps training on the new edit; within it and another target: a new entry, and both radii become half their
distance. A value starts from the layer's own output at that token ("warm") and trains with Adam (lr 1.0) until the
target is reproduced (GRACE trains a fixed 100 steps; we stop early like every method here, capped at 100).

Rollback is exact: each edit keeps its key, its initial radius and the value its training left, and the codebook is the
deterministic replay of the live edits in order, so removing an edit gives the codebook that never saw it. (If an edit
that created an entry is removed while a later edit of the same target had expanded it, the later edit's replay creates
the entry with the value it trained.)
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..architectures import default_layers
from ..data.probes import normalise
from ..errors import ConfigError
from ..nn.injection import capture
from ..nn.wrapped import WrappedLinear
from ..prompts import EncodedPrompt
from ..training import frozen_prefix, minimise
from .registry import Method, TinySettings, register_method
from .snapshot import BaselineConfig, SnapshotEditor


@dataclass
class GraceConfig(BaselineConfig):
    layer: str | None = None
    """The module whose output is replaced (nn.Linear or GPT-2 Conv1D). None: the last of the architecture's SoLA
    layers (model.layers.17.mlp.down_proj on SmolLM2-135M)."""

    radius: float | None = None
    """The initial deferral radius (Euclidean, on the layer's input at the last prompt token). The paper's 1.0 is
    for its models' activation scale; None means: call `calibrate_threshold` or pass a value."""

    learning_rate: float = 1.0  # GRACE's edit_lr (Adam on one value vector)
    max_steps: int = 100  # GRACE's n_iter
    threshold_field = "radius"  # positive: checked by BaselineConfig.validate


class GraceLayer(WrappedLinear):
    """A base module plus a codebook: keys (N, in), values (N, out), radii (N,)."""

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        in_features, out_features = self.in_features, self.out_features
        self.keys = torch.zeros(0, in_features)
        self.values = torch.zeros(0, out_features)
        self.radii = torch.zeros(0)
        self.trainable: nn.Parameter | None = None  # (1, out): the value being trained, used by every routed row
        self._starts: torch.Tensor | None = None  # (B,) the last prompt token of each row of the current input
        self._slots: torch.Tensor | None = None  # (B,) entry per row, -1: base
        self._pending = False
        self._every_pass = False

    def arm(self, starts: torch.Tensor) -> None:
        """Look the rows up at the next forward pass (the prompt pass) and replace on that pass only."""
        self._starts, self._slots, self._pending, self._every_pass = starts, None, True, False

    def fix(self, starts: torch.Tensor, slots: torch.Tensor) -> None:
        """Replace with `trainable` on every pass (training)."""
        self._starts, self._slots, self._pending, self._every_pass = starts, slots, False, True

    def clear(self) -> None:
        self._starts, self._slots, self._pending, self._every_pass = None, None, False, False

    def lookup(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, in) -> (distance to the nearest entry, its index, routed) each (B,)."""
        if len(self.keys) == 0:
            inf = torch.full((len(queries),), float("inf"))
            return inf, torch.full((len(queries),), -1, dtype=torch.long), torch.zeros(len(queries), dtype=torch.bool)
        dist = torch.cdist(queries.float(), self.keys, compute_mode="donot_use_mm_for_euclid_dist")
        best, index = dist.min(1)
        return best, index, best <= self.radii[index]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        if self._starts is None:
            return out
        rows = torch.arange(x.shape[0])
        if self._pending:
            self._pending = False
            _, index, routed = self.lookup(x[rows, self._starts].detach())
            self._slots = torch.where(routed, index, torch.full_like(index, -1))
        elif not self._every_pass:  # a generated token: the prompt's replaced position is already in the cache
            return out
        if self._slots is None or bool((self._slots < 0).all()):
            return out
        routed = (self._slots >= 0).nonzero().squeeze(1)
        if self.trainable is not None:
            values = self.trainable.expand(len(routed), -1)
        else:
            values = self.values[self._slots[routed]]
        out = out.clone()
        out[routed, self._starts[routed]] = values.to(out.dtype)
        return out


class GraceEditor(SnapshotEditor):
    method = "grace"
    config_class = GraceConfig
    exact_rollback = True
    unrouted_is_base = True  # rows outside every radius return the base layer's output untouched

    def _build(self) -> list[nn.Module]:
        name = self.config.layer or default_layers(self.model)[-1]
        self.layer = self.attachments.inject(name, GraceLayer)
        self.config = self.config.replace(layer=name)
        # per live edit: its keys (P, in), the value its training left (out,), its normalised target
        self._records: dict[str, dict[str, Any]] = {}
        self._labels: list[str] = []  # per entry
        self._answerer: list[str] = []  # per entry: the edit whose training set its value
        self.expansions = self.splits = 0
        return [self.layer.base_layer]

    # -- keys --------------------------------------------------------------------------------------------------------
    def _starts(self, prompts: list[EncodedPrompt], batch) -> torch.Tensor:
        if batch.labels is None:  # a generation batch, padded on the left: every prompt ends at the last column
            return torch.full((len(prompts),), batch.inputs["input_ids"].shape[1] - 1)
        return torch.tensor([len(p.ids) - 1 for p in prompts])

    def _capture(self, prompt: EncodedPrompt) -> tuple[torch.Tensor, torch.Tensor]:
        """(key (in,), the layer's own output (out,)) at the prompt's last token, on the base model."""
        batch = self.task.batch([prompt], None)
        start = int(self._starts([prompt], batch)[0])
        return capture(self.layer.base_layer, lambda: self.model(**batch.inputs, use_cache=False),
                       lambda x, out: (x[0, start].detach().float(), out[0, start].detach().float()), output=True)

    def _radius(self) -> float:
        if self.config.radius is None:
            raise ConfigError("GRACE needs a deferral radius on this model's activation scale: pass "
                              "GraceConfig(radius=...) or call calibrate_threshold(unrelated_prompts, against=...)")
        return self.config.radius

    # -- the codebook ------------------------------------------------------------------------------------------------
    def _place(self, key: torch.Tensor, label: str, edit_id: str, radius: float) -> int:
        """Apply GRACE's rule for one key with initial radius `radius`; -> the entry whose value the edit trains."""
        layer = self.layer
        dist, index, _ = layer.lookup(key.unsqueeze(0))
        d, j = float(dist[0]), int(index[0])
        if j < 0 or d > radius + float(layer.radii[j]):
            return self._add(key, radius, label, edit_id)
        if self._labels[j] != label:
            new = self._add(key, d / 2, label, edit_id)
            layer.radii[j] = d / 2 - 1e-5
            self.splits += 1
            return new
        if d > float(layer.radii[j]):
            layer.radii[j] = d
            self.expansions += 1
        return j

    def _add(self, key: torch.Tensor, radius: float, label: str, edit_id: str) -> int:
        layer = self.layer
        layer.keys = torch.cat([layer.keys, key.view(1, -1).float()])
        layer.values = torch.cat([layer.values, layer.values.new_zeros(1, layer.out_features)])
        layer.radii = torch.cat([layer.radii, torch.tensor([radius], dtype=torch.float32)])
        self._labels.append(label)
        self._answerer.append(edit_id)
        return len(self._labels) - 1

    def _rebuild(self) -> None:
        """The codebook as the live edits, replayed in order, make it."""
        layer = self.layer
        layer.keys, layer.values, layer.radii = layer.keys[:0], layer.values[:0], layer.radii[:0]
        self._labels, self._answerer, self.expansions, self.splits = [], [], 0, 0
        for edit_id, record in self._records.items():
            for key in record["keys"]:
                j = self._place(key, record["label"], edit_id, record["radius"])
                layer.values[j] = record["value"]
                self._answerer[j] = edit_id

    # -- editing -----------------------------------------------------------------------------------------------------
    def _train(self, edit_id, encoded, targets, target):
        label = normalise(target)
        captured = [self._capture(p) for p in encoded]
        saved = (self.layer.keys, self.layer.values, self.layer.radii.clone(), list(self._labels), list(self._answerer),
                 self.expansions, self.splits)
        radius = self._radius()
        entries = [self._place(key, label, edit_id, radius) for key, _ in captured]
        first = entries[0]
        new_entry = first >= len(saved[3])
        start = captured[0][1] if new_entry else self.layer.values[first]
        try:
            steps, loss, converged, value = self._train_value(encoded, targets, start)
        except BaseException:  # leave the codebook as it was
            (self.layer.keys, self.layer.values, self.layer.radii, self._labels, self._answerer, self.expansions,
             self.splits) = saved
            raise
        for j in entries:
            self.layer.values[j] = value
            self._answerer[j] = edit_id
        self._records[edit_id] = {"keys": torch.stack([k for k, _ in captured]), "value": value, "label": label,
                                  "radius": radius}
        return steps, loss, converged

    def _train_value(self, encoded, targets, start: torch.Tensor):
        batch = self.task.batch(encoded, targets)
        value = nn.Parameter(start.detach().clone().view(1, -1))
        self.layer.trainable = value
        self.layer.fix(self._starts(encoded, batch), torch.zeros(len(encoded), dtype=torch.long))
        loss = torch.zeros(())

        def objective():
            nonlocal loss
            row_loss, exact = self.task.score(batch, self.task.target_forward(batch))
            loss = row_loss.mean()
            return loss, bool(exact.all()) and float(loss.detach()) < self.config.loss_bound

        try:
            with torch.enable_grad(), frozen_prefix(self.model, [self.config.layer]):
                steps, converged = minimise(objective, [value], self.config)
        finally:
            self.layer.trainable = None
            self.layer.clear()
        return steps, float(loss.detach()), converged, value.detach()[0].clone()

    def _forget(self, edit_id: str) -> None:
        del self._records[edit_id]
        self._rebuild()

    # -- routing -----------------------------------------------------------------------------------------------------
    @contextmanager
    def _routed(self, prompts, batch):
        """Inside, the layer looks every row up on the prompt pass of the enclosed forward passes."""
        if not self._disabled and len(self.layer.keys):
            self.layer.arm(self._starts(prompts, batch))
        try:
            yield
        finally:
            self.layer.clear()

    def locate(self, prompt: str):
        if len(self.layer.keys) == 0:
            return None, None, False
        key, _ = self._capture(self.encode(prompt))
        dist, index, routed = self.layer.lookup(key.unsqueeze(0))
        return self._answerer[int(index[0])], float(dist[0]), bool(routed[0])

    def calibrate_threshold(self, prompts, max_activation_rate=0.01, *, against=None):
        """Set the initial radius so that at most `max_activation_rate` of these unrelated prompts lie within it of
        the keys of `against` (or of the stored edits)."""
        queries = torch.stack([self._capture(self.encode(p))[0] for p in prompts])
        keys = torch.stack([self._capture(self.encode(p))[0] for p in against]) if against is not None \
            else self.layer.keys
        radius = self._calibrated(queries, keys, max_activation_rate)
        self.config = self.config.replace(radius=radius)
        return radius

    # -- state -------------------------------------------------------------------------------------------------------
    def _state(self):
        tensors: dict[str, torch.Tensor] = {}
        for edit_id, record in self._records.items():
            tensors[f"{edit_id}.keys"], tensors[f"{edit_id}.value"] = record["keys"], record["value"]
            tensors[f"{edit_id}.radius"] = torch.tensor([record["radius"]], dtype=torch.float64)
        return tensors

    def _restore(self, tensors):
        for edit in self.edits():
            self._records[edit.id] = {"keys": tensors[f"{edit.id}.keys"], "value": tensors[f"{edit.id}.value"],
                                      "label": normalise(edit.target), "radius": float(tensors[f"{edit.id}.radius"][0])}
        self._rebuild()

    def _describe(self):
        return {"layer": self.config.layer, "radius": self.config.radius, "threshold": self.config.radius,
                "entries": len(self._labels), "expansions": self.expansions, "splits": self.splits,
                "memory_bytes": {"codebook": self.layer.keys.nbytes + self.layer.values.nbytes
                                 + self.layer.radii.nbytes}}


register_method(Method(
    name="grace", editor=GraceEditor, config=GraceConfig,
    summary="GRACE (Hartvigsen et al., 2023): a codebook of values at one layer, keys within a deferral radius",
    tiny=TinySettings(families=("llama", "gpt2"), config=dict(prompt_format="raw", radius=1e-3, max_steps=60),
                      answer_tokens=1)))
