"""ELDER (Li et al., 2025): a mixture of shared LoRAs on L layers, a router per layer, a guided loss and a
Hamming-distance deferral. See ../docs/methods.md for how this implementation reads the paper.

- Query: one vector per input, read once before the first mixture layer (the paper's last-token hidden state, or any
  SoLA key strategy computed outside the model, e.g. key="encoder"), so both methods can route on the same vector.
- Mixture: at layer l, scores s_l = softmax(W_l q) over N LoRAs; the top-k are kept, and the layer outputs
  base(x) + sum over the top-k of s_lj * B_j A_j x, on every token of the input. The allocation is decided once from
  the prompt and held for every generated token.
- Guided loss: each edit gets a preset random allocation (k of N LoRAs per layer), the same for identical edits
  (same prompt and target) and different from every other live edit's; training minimises the target's
  cross-entropy + lambda * sum over the allocation of -log s_lj.
- Deferral: each edit's allocation code (L x N bits, L x k set) is stored when its training ends; an input whose
  nearest stored code is more than `epsilon` away (Hamming; the paper: "exceeds a threshold") runs the base model,
  bit for bit. Codes are packed into bytes and compared with XOR and a popcount table.
- Lifelong: the LoRAs and routers are shared and keep training as edits arrive (a fresh Adam per edit).
- Rollback is NOT exact: it removes the edit's code from the deferral table, so inputs that only matched it fall back
  to the base model; what its training changed in the shared LoRAs and routers stays. `Edit.note` says so.
"""

from __future__ import annotations

import math
import zlib
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from ..architectures import default_layers
from ..data.probes import normalise
from ..errors import ConfigError
from ..routing import key_strategy
from ..nn.injection import capture, inject, modules
from ..nn.wrapped import WrappedLinear
from ..training import frozen_prefix, minimise, trainable
from .snapshot import BaselineConfig, SnapshotEditor

ROLLBACK_NOTE = ("rolled back by removing its allocation code from the deferral table; the shared LoRAs and routers "
                 "keep what its training changed (ELDER cannot undo that)")
_POPCOUNT = torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.int16)


def pack_codes(top: torch.Tensor, loras: int) -> torch.Tensor:
    """Top-k choices (B, L, k) -> packed allocation codes (B, bytes): bit l*N + j set when LoRA j of layer l is
    selected (N = `loras`)."""
    bits = torch.zeros(top.shape[0], top.shape[1], loras, dtype=torch.bool)
    bits.scatter_(-1, top, True)
    flat = bits.view(top.shape[0], -1)
    pad = (-flat.shape[1]) % 8
    flat = torch.cat([flat, flat.new_zeros(flat.shape[0], pad)], 1).view(flat.shape[0], -1, 8)
    return (flat.to(torch.uint8) << torch.arange(8, dtype=torch.uint8)).sum(-1).to(torch.uint8)


def hamming_distances(codes: torch.Tensor, stored: torch.Tensor) -> torch.Tensor:
    """Packed codes (B, bytes) and (E, bytes) -> Hamming distances (B, E): XOR, then a popcount table."""
    return _POPCOUNT[torch.bitwise_xor(codes[:, None, :], stored[None]).long()].sum(-1).to(torch.int32)


@dataclass
class ElderConfig(BaselineConfig):
    layers: list[str] | None = None
    """The mixture layers. None: six MLP down projections at the paper's depth (LLaMA2-7B: layers 20-25 of 32),
    i.e. layers 19-24 of SmolLM2-135M's 30; for other architectures the SoLA layers."""

    rank: int = 8
    loras: int = 4  # N per layer
    top_k: int = 2
    epsilon: int = 12  # an input whose nearest code is farther (Hamming) defers to the base model
    threshold_field, threshold_type, threshold_symbol = "epsilon", int, "ε"
    guide_weight: float = 1e-2  # lambda
    key: str = "last_token"
    """The query vector: "last_token" (the paper: the last prompt token's hidden state at the input of the first
    mixture layer) or a SoLA key computed outside the model ("encoder")."""
    encoder: str | None = None
    guide_replay: bool = False
    """Our addition, off by default (the paper trains on the new edit only): also apply the guided loss to the stored
    queries of the earlier live edits (routers only, no forward pass)."""
    replay_edits: int = 0
    """Our addition, 0 by default: also train on this many earlier live edits (drawn at random, seeded) at every
    step, so the shared LoRAs are reminded of them. Without it, one edit at a time overwrites the shared LoRAs
    (measured: after 6 zsRE edits on SmolLM2-135M, the earlier prompts answered the 6th target)."""
    learning_rate: float = 0.02
    max_steps: int = 80

    def validate(self):
        super().validate()
        if not 1 <= self.top_k <= self.loras:
            raise ConfigError(f"top_k={self.top_k} must be between 1 and loras={self.loras}")
        if self.rank < 1 or self.epsilon < 0 or self.guide_weight < 0:
            raise ConfigError("rank must be positive, and epsilon and guide_weight non-negative")
        if self.key not in ("last_token", "encoder"):
            raise ConfigError(f"key={self.key!r}: ELDER routes on 'last_token' (the paper) or 'encoder'")
        return self


class MixtureLoraLayer(WrappedLinear):
    """A frozen base module plus N LoRAs mixed per row by `weights[:, index]` (B, N) of the shared routing state."""

    def __init__(self, base_layer: nn.Module, index: int, loras: int, rank: int, state: "_Routing",
                 generator: torch.Generator) -> None:
        super().__init__(base_layer)
        in_features, out_features = self.in_features, self.out_features
        self.index, self.state = index, state
        bound = 1.0 / math.sqrt(in_features)
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
        w = weights[rows, self.index].to(x.dtype)  # (n, N)
        hidden = torch.einsum("btd,nrd->btnr", x[rows], self.lora_A)  # (n, T, N, r)
        hidden = hidden * w[:, None, :, None]
        delta = torch.einsum("btnr,nor->bto", hidden, self.lora_B)
        return out.index_add(0, rows, delta.to(out.dtype))


class _Routing:
    """The allocation of the current input, shared by every mixture layer: weights (B, L, N), zero off the top-k and
    for deferred rows; None: the base model for everyone. `pending` routes at the first mixture layer's input."""

    def __init__(self) -> None:
        self.weights: torch.Tensor | None = None
        self.pending = None


class ElderEditor(SnapshotEditor):
    method = "elder"
    config_class = ElderConfig
    exact_rollback = False
    rollback_note = ROLLBACK_NOTE

    def _build(self):
        names = self.config.layers or _paper_layers(self.model)
        modules(self.model, names)
        self.config = self.config.replace(layers=list(names))
        generator = torch.Generator().manual_seed(zlib.crc32(f"{self.config.seed}:elder".encode()))
        self.state = _Routing()
        self.layers = []
        for index, name in enumerate(names):
            self.layers.append(inject(self.model, name, lambda base: MixtureLoraLayer(
                base, index, self.config.loras, self.config.rank, self.state, generator)))
        self.keys = key_strategy(self.config.key, self.config.encoder)
        dim = self.keys.dim if not self.keys.inside_model else self.layers[0].lora_A.shape[2]
        if self.keys.inside_model and names != sorted(names, key=lambda n: _depth(n)):
            raise ConfigError("list the mixture layers in the order the model runs them")
        self.routers = nn.Parameter(torch.randn(len(names), self.config.loras, dim, generator=generator) * 0.02,
                                    requires_grad=False)  # W_r per layer: (L, N, d)
        self.allocations: dict[str, torch.Tensor] = {}  # per edit (live or not): (L, k) LoRA indices
        self.codes: dict[str, torch.Tensor] = {}  # per live edit: packed allocation code (bytes,)
        self.queries: dict[str, torch.Tensor] = {}  # per live edit: its query vector, for guide_replay
        first = self.layers[0].base_layer
        first.register_forward_pre_hook(self._route_at_first_layer)
        return [layer.base_layer for layer in self.layers]

    # -- routing -----------------------------------------------------------------------------------------------------
    def _route_at_first_layer(self, _module, args) -> None:
        pending = self.state.pending
        if pending is None:
            return
        self.state.pending = None
        mask, deferral = pending
        self.state.weights = self._weights(self.keys.pool(args[0], mask), deferral)[0]

    def _scores(self, queries: torch.Tensor) -> torch.Tensor:
        """(B, d) -> router scores (B, L, N)."""
        return torch.softmax(torch.einsum("bd,lnd->bln", queries.float(), self.routers), dim=-1)

    def _weights(self, queries: torch.Tensor, deferral: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, d) -> (weights (B, L, N): the top-k scores, zero elsewhere and for deferred rows; top-k (B, L, k))."""
        scores = self._scores(queries)
        top = scores.topk(self.config.top_k, dim=-1).indices.sort(-1).values
        keep = torch.zeros_like(scores).scatter(-1, top, 1.0)
        weights = scores * keep
        if deferral:
            weights = weights * self._within(top).view(-1, 1, 1).to(weights.dtype)
        return weights, top

    def _code(self, top: torch.Tensor) -> torch.Tensor:
        return pack_codes(top, self.config.loras)

    def _hamming(self, top: torch.Tensor) -> tuple[torch.Tensor, list[str]]:
        """(B, L, k) -> Hamming distances (B, E) to the stored codes of the live edits, and their ids."""
        ids = list(self.codes)
        if not ids:
            return torch.zeros(top.shape[0], 0, dtype=torch.int32), ids
        return hamming_distances(self._code(top), torch.stack([self.codes[i] for i in ids])), ids

    def _within(self, top: torch.Tensor) -> torch.Tensor:
        distances, ids = self._hamming(top)
        if not ids:
            return torch.zeros(top.shape[0], dtype=torch.bool)
        return self._reaches(distances.min(1).values)

    def _reaches(self, nearest: torch.Tensor) -> torch.Tensor:
        """Whether a nearest distance uses the mixture: the paper defers only a distance that exceeds epsilon."""
        return nearest <= self.config.epsilon

    def _query(self, prompt) -> torch.Tensor:
        """The query vector of one encoded prompt, on the base model (nothing before the first mixture layer is
        edited, so this is also what inference reads)."""
        if not self.keys.inside_model:
            return self.keys.encode([prompt.text])[0]
        batch = self.task.batch([prompt], None)
        return capture(self.layers[0].base_layer, lambda: self.model(**batch.inputs, use_cache=False),
                       lambda hidden: self.keys.pool(hidden.detach().float(), batch.mask)[0])

    @contextmanager
    def _routed(self, prompts, batch):
        try:
            if self._disabled or not self.codes:
                self.state.weights, self.state.pending = None, None
            elif self.keys.inside_model:
                self.state.weights, self.state.pending = None, (batch.mask, True)
            else:
                queries = self.keys.encode([p.text for p in prompts])
                self.state.weights = self._weights(queries, True)[0]
            yield
        finally:
            self.state.weights, self.state.pending = None, None

    def locate(self, prompt):
        if not self.codes:
            return None, None, False
        top = self._weights(self._query(self._encode(prompt)).unsqueeze(0), False)[1]
        distances, ids = self._hamming(top)
        best = int(distances[0].argmin())
        distance = distances[0, best]
        return ids[best], float(distance), bool(self._reaches(distance))

    # -- allocations -------------------------------------------------------------------------------------------------
    def _allocation(self, prompts: list[str], target: str) -> torch.Tensor:
        """The preset allocation of an edit: random, drawn from a generator seeded by the edit's content, so an
        identical edit gets the same one; redrawn while another live edit holds it."""
        label = normalise(" | ".join(prompts) + " => " + target)
        for edit_id, allocation in self.allocations.items():
            edit = self.ledger.get(edit_id) if edit_id in self.ledger else None
            if edit is not None and normalise(" | ".join(edit.prompts) + " => " + edit.target) == label:
                return allocation
        taken = {tuple(a.flatten().tolist()) for e, a in self.allocations.items() if e in self.codes}
        generator = torch.Generator().manual_seed(zlib.crc32(f"{self.config.seed}:{label}".encode()))
        for _ in range(10_000):
            allocation = torch.stack([torch.randperm(self.config.loras, generator=generator)[:self.config.top_k].sort()
                                      .values for _ in self.layers])
            if tuple(allocation.flatten().tolist()) not in taken:
                return allocation
        raise ConfigError("every allocation is taken; raise loras, top_k or the number of layers")

    # -- editing -----------------------------------------------------------------------------------------------------
    def _train(self, edit_id, encoded, targets, target):
        allocation = self._allocation([p.text for p in encoded], target)
        own = len(encoded)
        encoded, targets = list(encoded), list(targets)
        for edit in self._replayed(edit_id):
            for prompt in edit.prompts:
                encoded.append(self._encode(prompt))
                targets.append(self.task.encode_target(prompt, edit.target))
        queries = torch.stack([self._query(p) for p in encoded])
        batch = self.task.batch(encoded, targets)
        params = [self.routers] + [p for layer in self.layers for p in (layer.lora_A, layer.lora_B)]
        wanted = allocation.unsqueeze(0).expand(own, -1, -1)
        earlier = [e for e in self.codes if e in self.queries] if self.config.guide_replay else []
        guided_queries = torch.cat([queries[:own]] + [self.queries[e].view(1, -1) for e in earlier])
        guided_wanted = torch.cat([wanted] + [self.allocations[e].unsqueeze(0) for e in earlier])
        own_loss = torch.zeros(())

        def objective():
            nonlocal own_loss
            weights, top = self._weights(queries, False)
            self.state.weights = weights
            row_loss, exact = self.task.score(batch, self.task.target_forward(batch))
            scores = self._scores(guided_queries)
            guide = -torch.log(scores.gather(-1, guided_wanted).clamp_min(1e-12)).sum((1, 2)).mean()
            own_loss = row_loss[:own].mean().detach()
            converged = bool(exact[:own].all()) and float(own_loss) < self.config.loss_bound \
                and bool((top[:own] == wanted).all())
            return row_loss.mean() + self.config.guide_weight * guide, converged

        try:
            with trainable(params), torch.enable_grad(), frozen_prefix(self.model, self.config.layers):
                steps, converged = minimise(objective, params, self.config)
        finally:
            self.state.weights = None
        with torch.no_grad():
            top = self._weights(queries[:1], False)[1]
        self.allocations[edit_id] = allocation
        self.codes[edit_id] = self._code(top)[0]
        self.queries[edit_id] = queries[:own].mean(0)
        return steps, float(own_loss), converged

    def _replayed(self, edit_id: str) -> list:
        live = [e for e in self.edits() if e.id in self.codes]
        count = min(self.config.replay_edits, len(live))
        if not count:
            return []
        generator = torch.Generator().manual_seed(zlib.crc32(f"{self.config.seed}:replay:{edit_id}".encode()))
        return [live[i] for i in torch.randperm(len(live), generator=generator)[:count].tolist()]

    def _forget(self, edit_id):
        del self.codes[edit_id]
        self.queries.pop(edit_id, None)

    # -- state -------------------------------------------------------------------------------------------------------
    def _state(self):
        tensors = {"routers": self.routers.detach()}
        for name, layer in zip(self.config.layers, self.layers):
            tensors[f"{name}.lora_A"], tensors[f"{name}.lora_B"] = layer.lora_A.detach(), layer.lora_B.detach()
        for edit_id, allocation in self.allocations.items():
            tensors[f"{edit_id}.allocation"] = allocation
        for edit_id, code in self.codes.items():
            tensors[f"{edit_id}.code"], tensors[f"{edit_id}.query"] = code, self.queries[edit_id]
        return tensors

    def _restore(self, tensors):
        with torch.no_grad():
            self.routers.copy_(tensors["routers"])
            for name, layer in zip(self.config.layers, self.layers):
                layer.lora_A.copy_(tensors[f"{name}.lora_A"])
                layer.lora_B.copy_(tensors[f"{name}.lora_B"])
        for name, tensor in tensors.items():
            edit_id, _, kind = name.rpartition(".")
            if kind == "allocation":
                self.allocations[edit_id] = tensor
            elif kind == "code" and edit_id in self.ledger:
                self.codes[edit_id], self.queries[edit_id] = tensor, tensors[f"{edit_id}.query"]

    def _describe(self):
        parameters = self.routers.numel() + sum(l.lora_A.numel() + l.lora_B.numel() for l in self.layers)
        return {"layers": self.config.layers, "rank": self.config.rank, "loras": self.config.loras,
                "top_k": self.config.top_k, "epsilon": self.config.epsilon, "threshold": self.config.epsilon,
                "key": self.config.key, "codes": len(self.codes),
                "memory_bytes": {"parameters": parameters * 4, "codes": sum(c.numel() for c in self.codes.values())}}


def _depth(name: str) -> tuple[int, ...]:
    return tuple(int(p) for p in name.split(".") if p.isdigit())


def _paper_layers(model: nn.Module) -> list[str]:
    """Six consecutive MLP layers at the depth the paper edits LLaMA2-7B (20-25 of 32); else the SoLA layers."""
    sola = default_layers(model)
    count = getattr(model.config, "num_hidden_layers", None)
    if not sola or count is None or ".layers." not in sola[0] or count < 6:
        return sola
    template = sola[0].split(".layers.")[0] + ".layers.{i}." + sola[0].split(".layers.")[1].split(".", 1)[1]
    start = min(count - 6, round(20 / 32 * count))
    return [template.format(i=i) for i in range(start, start + 6)]
