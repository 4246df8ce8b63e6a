"""`ElderEditor`: ELDER's editor (the method is described in `sola.methods.elder`): the mixture layers and their
routers built on a model, training an edit (alone or in a batch) with the guided loss, and the deferral rule asking
which inputs use the mixture."""

from __future__ import annotations

import math
import zlib
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ...architectures import default_layers
from ...data.probes import normalise
from ...errors import ConfigError, InvalidEditError
from ...nn.injection import modules
from ...nn.wrapped import WrappedLinear
from ...routing import key_strategy
from ...training import frozen_prefix, minimise, train_fixed, trainable
from ..registry import Method, TinySettings, register_method
from ..snapshot import SnapshotEditor
from .config import ElderConfig
from .deferral import RULES, pack_codes
from .mixture import MixtureLoraLayer, RoutingState

ROLLBACK_NOTE = ("rolled back by removing its allocation code from the deferral table; the shared LoRAs and routers "
                 "keep what its training changed (ELDER cannot undo that)")


class ElderEditor(SnapshotEditor):
    method = "elder"
    config_class = ElderConfig
    exact_rollback = False
    rollback_note = ROLLBACK_NOTE
    trains_batches = True

    @classmethod
    def bench_label(cls, config, threshold) -> str:
        rule = RULES[config.get("deferral", "codes")]
        return rule.label(cls.method, config, threshold) or super().bench_label(config, threshold)

    @classmethod
    def bench_name_parts(cls, config) -> list[str]:
        return [config["deferral"]] if config.get("deferral", "codes") != "codes" else []  # the paper's is unnamed

    def _build(self):
        names = self.config.layers or _paper_layers(self.model)
        modules(self.model, names)
        self.config = self.config.replace(layers=list(names))
        generator = torch.Generator().manual_seed(zlib.crc32(f"{self.config.seed}:elder".encode()))
        self.state = RoutingState()
        self.layers = []
        scale = self.config.lora_alpha / self.config.rank
        for index, name in enumerate(names):
            self.layers.append(self.attachments.inject(name, lambda base, index=index: MixtureLoraLayer(
                base, index, self.config.loras, self.config.rank, scale, self.state, generator)))
        self.keys = key_strategy(self.config.key, self.config.encoder)
        if self.keys.inside_model:
            if names != sorted(names, key=lambda n: _depth(n)):
                raise ConfigError("list the mixture layers in the order the model runs them")
            query = self.config.query_layer or _block_before(self.model, names[0])
            self.config = self.config.replace(query_layer=query)
            self.query_module = modules(self.model, [query], "query_layer")[query]
            if isinstance(self.query_module, WrappedLinear):  # the first mixture layer itself: read its input
                self.query_module = self.query_module.base_layer
            if _depth(query) > _depth(names[0]):
                raise ConfigError(f"query_layer {query!r} runs after the first mixture layer {names[0]!r}; choose "
                                  "one at or before it")
            dim = WrappedLinear(self.query_module).in_features
            self.attachments.pre_hook(self.query_module, self._route_at_query_layer)
        else:
            dim = self.keys.dim
        bound = 1.0 / math.sqrt(dim)  # nn.Linear's own initialisation of the authors' gate (weight and bias)
        self.routers = nn.Parameter((torch.rand(len(names), self.config.loras, dim, generator=generator) * 2 - 1)
                                    * bound, requires_grad=False)  # W_l per layer: (L, N, d)
        self.router_bias = nn.Parameter((torch.rand(len(names), self.config.loras, generator=generator) * 2 - 1)
                                        * bound, requires_grad=False)  # b_l: (L, N)
        self.allocations: dict[str, torch.Tensor] = {}  # per edit (live or not): (L, k) LoRA indices
        self.codes: dict[str, torch.Tensor] = {}  # per live edit: the packed codes of its training rows (rows, bytes)
        self.queries: dict[str, torch.Tensor] = {}  # per live edit: its query per training row (guide_replay, refresh)
        self.calibration = torch.zeros(0, dim)  # queries of the calibration questions (`calibrate_threshold`)
        self.deferral_rule = RULES[self.config.deferral](self)  # sola.methods.elder_deferral
        return [layer.base_layer for layer in self.layers]

    def _parameters(self) -> list[torch.Tensor]:
        return [self.routers, self.router_bias] + [p for layer in self.layers for p in (layer.lora_A, layer.lora_B)]

    # -- routing -----------------------------------------------------------------------------------------------------
    def _route_at_query_layer(self, _module, args) -> None:
        pending = self.state.pending
        if pending is None:
            return
        self.state.pending = None
        mask, deferral = pending
        self.state.weights = self.mixture_weights(self.keys.pool(args[0], mask), deferral)[0]

    def _scores(self, queries: torch.Tensor) -> torch.Tensor:
        """(B, d) -> router scores (B, L, N)."""
        logits = torch.einsum("bd,lnd->bln", queries.float(), self.routers) + self.router_bias
        return torch.softmax(logits, dim=-1)

    def mixture_weights(self, queries: torch.Tensor, deferral: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, d) -> (weights (B, L, N): the top-k scores, zero elsewhere and for deferred rows; top-k (B, L, k))."""
        scores = self._scores(queries)
        top = scores.topk(self.config.top_k, dim=-1).indices.sort(-1).values
        keep = torch.zeros_like(scores).scatter(-1, top, 1.0)
        weights = scores * keep
        if deferral:
            weights = weights * self.deferral_rule.within(top, queries).view(-1, 1, 1).to(weights.dtype)
        return weights, top

    def code_of(self, top: torch.Tensor) -> torch.Tensor:
        return pack_codes(top, self.config.loras)

    def query_of(self, prompt) -> torch.Tensor:
        return self.queries_of([prompt])[0]

    def queries_of(self, prompts) -> torch.Tensor:
        """The query vectors of encoded prompts (B, d), on the base model (nothing at or before the query layer is
        edited, so this is also what inference reads)."""
        if not self.keys.inside_model:
            return self.keys.encode([p.text for p in prompts])
        return self._inputs_at(self.query_module, prompts, self.keys.pool)

    @contextmanager
    def _routed(self, prompts, batch):
        try:
            live = not self._disabled and bool(self.codes)
            gate = self.deferral_rule.admits([p.text for p in prompts]) if live else None
            self.state.gate = gate
            if not live or (gate is not None and not bool(gate.any())):  # nobody is edited: the base model
                self.state.weights, self.state.pending = None, None
            elif self.keys.inside_model:
                self.state.weights, self.state.pending = None, (batch.mask, True)
            else:
                queries = self.keys.encode([p.text for p in prompts])
                self.state.weights = self.mixture_weights(queries, True)[0]
            yield
        finally:
            self.state.weights, self.state.pending, self.state.gate = None, None, None

    def locate(self, prompt):
        if not self.codes:
            return None, None, False
        return self.deferral_rule.locate(self.encode(prompt))

    def calibrate_threshold(self, prompts, max_activation_rate=0.01, *, against=None):
        """Make the deferral threshold follow these unrelated prompts: at most `max_activation_rate` of them may use
        the mixture (the way GRACE's radius is calibrated). For the codes (the paper's rule), epsilon is re-chosen
        after every training, as ELDER's codes move with its routers; `against` is not needed, the codes are the
        edits'. For the query radius, `against` gives a first radius before anything is stored. For the subject gate,
        this calibrates the threshold of edits without a subject (SoLA's calibration). Returns the threshold for
        what is stored now (the paper's epsilon until there are codes)."""
        prompts = list(prompts)
        if len(prompts) < 2 or not 0 <= max_activation_rate < 1:
            raise InvalidEditError("calibration needs at least 2 prompts and 0 <= max_activation_rate < 1")
        against = [self.encode(p) for p in against] if against is not None else None
        return self.deferral_rule.calibrate([self.encode(p) for p in prompts], max_activation_rate, against)

    def deferral(self, prompts: list[str]) -> dict[str, Any]:
        """How these prompts' nearest stored vectors lie under the deferral rule: for the codes, the distances'
        histogram and the share that uses the mixture under the current epsilon and under the paper's (12)."""
        return self.deferral_rule.report(self.queries_of([self.encode(p) for p in prompts]))

    # -- allocations -------------------------------------------------------------------------------------------------
    def _allocation(self, prompts: list[str], target: str, pending: dict | None = None) -> torch.Tensor:
        """The preset allocation of an edit: random, drawn from a generator seeded by the edit's content, so an
        identical edit gets the same one; redrawn while another live edit (or an edit of `pending`, label ->
        allocation, the batch being trained) holds it."""
        label = _label(prompts, target)
        if pending and label in pending:
            return pending[label]
        for edit_id, allocation in self.allocations.items():
            edit = self.ledger.get(edit_id) if edit_id in self.ledger else None
            if edit is not None and _label(edit.prompts, edit.target) == label:
                return allocation
        taken = {tuple(a.flatten().tolist()) for e, a in self.allocations.items() if e in self.codes}
        taken |= {tuple(a.flatten().tolist()) for a in (pending or {}).values()}
        generator = torch.Generator().manual_seed(zlib.crc32(f"{self.config.seed}:{label}".encode()))
        for _ in range(10_000):
            allocation = torch.stack([torch.randperm(self.config.loras, generator=generator)[:self.config.top_k].sort()
                                      .values for _ in self.layers])
            if tuple(allocation.flatten().tolist()) not in taken:
                return allocation
        raise ConfigError("every allocation is taken; raise loras, top_k or the number of layers")

    # -- editing -----------------------------------------------------------------------------------------------------
    def _train(self, edit_id, encoded, targets, target):
        """One edit (with `replay_edits` earlier ones): until it converges (at most `max_steps`), or the fixed
        schedule for `schedule="fixed"` (elder-online)."""
        allocation = self._allocation([p.text for p in encoded], target)
        own = len(encoded)
        encoded, targets = list(encoded), list(targets)
        wanted = [allocation] * own
        self._add_replayed(edit_id, encoded, targets, wanted)
        result = self._fit(encoded, targets, torch.stack(wanted), own, self._guided_earlier())
        self.allocations[edit_id] = allocation
        self.codes[edit_id] = result["codes"][:own]
        self.queries[edit_id] = result["queries"][:own]
        self._refresh_codes()
        self.deferral_rule.recalibrate()
        return result["steps"], result["losses"][:own].mean().item(), bool(result["exact"][:own].all())

    def _train_batch(self, edit_ids, edits):
        """A batch of edits together, on the fixed schedule (the authors' runner): every row of the batch in one
        batch, its codes read at the last iteration; with `replay_edits` (ours), that many earlier live edits join
        the batch (their rows train toward their own targets and allocations; their codes are kept as they were)."""
        pending: dict[str, torch.Tensor] = {}
        encoded, targets, wanted, owner = [], [], [], []
        for index, (prompts, ids, target) in enumerate(edits):
            allocation = self._allocation([p.text for p in prompts], target, pending)
            pending[_label([p.text for p in prompts], target)] = allocation
            encoded += prompts
            targets += ids
            wanted += [allocation] * len(prompts)
            owner += [index] * len(prompts)
        own = len(encoded)
        self._add_replayed(edit_ids[0], encoded, targets, wanted)
        result = self._fit(encoded, targets, torch.stack(wanted), own, self._guided_earlier(), fixed=True)
        mine = {key: result[key][:own] for key in ("codes", "queries", "losses", "exact")}  # not the replayed rows
        owner = torch.tensor(owner)
        outcomes = []
        for index, edit_id in enumerate(edit_ids[:len(edits)]):
            rows = owner == index
            self.allocations[edit_id] = wanted[int(rows.nonzero()[0])]
            self.codes[edit_id] = mine["codes"][rows]
            self.queries[edit_id] = mine["queries"][rows]
            outcomes.append((result["steps"], mine["losses"][rows].mean().item(), bool(mine["exact"][rows].all())))
        self._refresh_codes()
        self.deferral_rule.recalibrate()
        return outcomes

    def _fit(self, encoded, targets, wanted: torch.Tensor, own: int, earlier: list[str], fixed: bool = False):
        """Train the shared LoRAs and routers on these rows (the first `own` are the new edits', the rest replayed)
        toward their allocations `wanted` (rows, L, k), plus the guided loss of the `earlier` edits' stored queries;
        -> the steps, and per row at the last iteration: loss, exact, code; and the rows' queries."""
        queries = self.queries_of(encoded)
        batch = self.task.batch(encoded, targets)
        guided_queries = torch.cat([queries[:own]] + [self.queries[e] for e in earlier])
        guided_wanted = torch.cat([wanted[:own]] + [self.allocations[e].expand(len(self.queries[e]), -1, -1)
                                                    for e in earlier])
        last: dict[str, torch.Tensor] = {}

        def loss_and_read():
            weights, top = self.mixture_weights(queries, False)
            self.state.weights = weights
            row_loss, exact = self.task.score(batch, self.task.target_forward(batch))
            scores = self._scores(guided_queries)
            guide = -torch.log(scores.gather(-1, guided_wanted).clamp_min(1e-12)).sum((1, 2)).mean()
            last.update(losses=row_loss.detach(), exact=exact, top=top)
            return row_loss.mean() + self.config.guide_weight * guide

        def objective():
            loss = loss_and_read()
            converged = bool(last["exact"][:own].all()) \
                and float(last["losses"][:own].mean()) < self.config.loss_bound \
                and bool((last["top"][:own] == wanted[:own]).all())
            return loss, converged

        params = self._parameters()
        try:
            with trainable(params), torch.enable_grad(), frozen_prefix(self.model, self.config.layers):
                if fixed or self.config.schedule == "fixed":
                    # the codes, losses and exactness are the last iteration's, read before its step (the authors')
                    train_fixed(loss_and_read, params, self.config)
                    steps = self.config.fixed_steps
                else:
                    steps, _ = minimise(objective, params, self.config)
        finally:
            self.state.weights = None
        return {"steps": steps, "losses": last["losses"], "exact": last["exact"],
                "codes": self.code_of(last["top"].detach()), "queries": queries}

    def _refresh_codes(self) -> None:
        """With `refresh_codes`: every live edit's codes read again from its stored queries (one per training row)."""
        if not self.config.refresh_codes or not self.codes:
            return
        ids = list(self.codes)
        codes = self.code_of(self.mixture_weights(torch.cat([self.queries[e] for e in ids]), False)[1])
        for edit_id, rows in zip(ids, codes.split([len(self.queries[e]) for e in ids])):
            self.codes[edit_id] = rows

    def _add_replayed(self, edit_id: str, encoded: list, targets: list, wanted: list) -> None:
        """Append the rows of the earlier edits replayed with `edit_id` (or its batch) to the training rows."""
        for edit in self._replayed(edit_id):
            for prompt in edit.prompts:
                encoded.append(self.encode(prompt))
                targets.append(self.task.encode_target(prompt, edit.target))
                wanted.append(self.allocations[edit.id])

    def _guided_earlier(self) -> list[str]:
        """With `guide_replay`: the earlier live edits whose stored queries the guided loss also pulls toward their
        allocations."""
        return [e for e in self.codes if e in self.queries] if self.config.guide_replay else []

    def _replayed(self, edit_id: str) -> list:
        live = [e for e in self.edits() if e.id in self.codes]
        count = min(self.config.replay_edits, len(live))
        if not count:
            return []
        generator = torch.Generator().manual_seed(zlib.crc32(f"{self.config.seed}:replay:{edit_id}".encode()))
        return [live[i] for i in torch.randperm(len(live), generator=generator)[:count].tolist()]

    def _record(self, edit_id, subject, prompts, target, outcome, seconds):
        record = super()._record(edit_id, subject, prompts, target, outcome, seconds)
        self.deferral_rule.add(edit_id, [self.encode(p) for p in prompts], subject)
        return record

    def _forget(self, edit_id):
        del self.codes[edit_id]
        self.queries.pop(edit_id, None)
        self.deferral_rule.remove(edit_id)

    # -- state -------------------------------------------------------------------------------------------------------
    def _state(self):
        tensors = {"routers": self.routers.detach(), "router_bias": self.router_bias.detach(),
                   "calibration": self.calibration}
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
            if "router_bias" in tensors:  # snapshots before the bias had none (zero)
                self.router_bias.copy_(tensors["router_bias"])
            else:
                self.router_bias.zero_()
            for name, layer in zip(self.config.layers, self.layers):
                layer.lora_A.copy_(tensors[f"{name}.lora_A"])
                layer.lora_B.copy_(tensors[f"{name}.lora_B"])
        self.calibration = tensors.get("calibration", self.calibration)
        for name, tensor in tensors.items():
            edit_id, _, kind = name.rpartition(".")
            if kind == "allocation":
                self.allocations[edit_id] = tensor
            elif kind == "code" and edit_id in self.ledger:  # one code per edit before every row's code was kept
                self.codes[edit_id] = tensor.view(-1, tensor.shape[-1])
                query = tensors[f"{edit_id}.query"]  # one per training row (a mean of them before refresh_codes)
                self.queries[edit_id] = query.view(-1, query.shape[-1])
        self.deferral_rule.restore([edit for edit in self.edits() if edit.id in self.codes])

    def _describe(self):
        parameters = sum(p.numel() for p in self._parameters())
        return {"layers": self.config.layers, "query_layer": self.config.query_layer, "rank": self.config.rank,
                "loras": self.config.loras, "top_k": self.config.top_k, "epsilon": self.config.epsilon,
                "deferral": self.config.deferral, "query_radius": self.config.query_radius,
                "threshold": self.deferral_rule.threshold, **self.deferral_rule.describe(),
                "epsilon_rate": self.config.epsilon_rate,
                "key": self.config.key, "codes": sum(len(c) for c in self.codes.values()),
                "distinct_codes": len({bytes(row.tolist()) for c in self.codes.values() for row in c}),
                **{f"calibration_{k}": v for k, v in self.deferral_rule.report(self.calibration).items()
                   if k != "histogram"},
                "memory_bytes": {"parameters": parameters * 4, "codes": sum(c.numel() for c in self.codes.values())}}


def _label(prompts, target: str) -> str:
    """What makes two edits identical for their allocation: their prompts and target, normalised."""
    return normalise(" | ".join(prompts) + " => " + target)


def _depth(name: str) -> tuple[int, ...]:
    return tuple(int(p) for p in name.split(".") if p.isdigit())


def _block_before(model: nn.Module, name: str) -> str:
    """The same module one block before `name` ("model.layers.19.mlp.down_proj" -> "model.layers.18.mlp.down_proj");
    `name` itself when it is in the first block or not in a stack of blocks."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            if int(part) == 0:
                return name
            return ".".join(parts[:i] + [str(int(part) - 1)] + parts[i + 1:])
    return name


def _paper_layers(model: nn.Module) -> list[str]:
    """Six consecutive MLP layers at the depth the paper edits LLaMA2-7B (20-25 of 32); else the SoLA layers."""
    sola = default_layers(model)
    count = getattr(model.config, "num_hidden_layers", None)
    if not sola or count is None or ".layers." not in sola[0] or count < 6:
        return sola
    template = sola[0].split(".layers.")[0] + ".layers.{i}." + sola[0].split(".layers.")[1].split(".", 1)[1]
    start = min(count - 6, round(20 / 32 * count))
    return [template.format(i=i) for i in range(start, start + 6)]


register_method(Method(
    name="elder", editor=ElderEditor, config=ElderConfig,
    summary="ELDER (Li et al., 2025): a mixture of shared LoRAs per layer, a guided loss, deferral by allocation codes",
    tiny=TinySettings(families=("llama", "gpt2"), config=dict(epsilon=1, prompt_format="raw", learning_rate=0.05,
                                                               max_steps=200))))
