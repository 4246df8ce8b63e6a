"""MELO (Yu et al., 2024): LoRA blocks on the edited layers, chosen per input by a vector index of cluster centres.

An input's key is the mean of its prompt's hidden states at the input of the first edited layer. An edit whose key
lies within `radius` of the nearest centre joins that cluster: the cluster's block keeps training on it and the centre
moves to the mean of its members' keys (the "semantic drift" the SoLA paper measures in its Fig. 2). Otherwise the edit
opens a new cluster with a fresh block. At inference the nearest centre within the radius picks the block; farther
inputs run the base model, bit for bit. The decision is made once from the prompt and held while generating.

`info()` counts centre updates and mismatches: live edits whose own prompt no longer reaches the block that learned
it (the centre moved away, or another centre came nearer).

Rollback is exact only for an edit that is its cluster's only member (the block and the centre go); an edit that
shares a block cannot be separated from the others' training, so `rollback` refuses and says why.

Batches (`edit_many`, `sola bench --batch-size B`) run as the authors' code does: each batch trains a new block from
fresh factors on all its rows, on the fixed schedule (`num_edit_per_block: 100`, 50 iterations, Adam 1e-2,
StepLR(20, 0.5)), and every edit's key goes into MELO's vector database (`sola.methods.vector_database`), which
routes an input to the block of the nearest key of the nearest cluster within that cluster's radius. An editor is
edited either one edit at a time or in batches, not both.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from ..data.probes import normalise
from ..errors import ConfigError
from ..routing.keys import HiddenStateKeys
from .lora_blocks import LoraBlocksConfig, LoraBlocksEditor
from .registry import Method, TinySettings, register_method
from .snapshot import FixedSchedule, RollbackNotSupportedError, check_fixed_schedule
from .vector_database import VectorDatabase


@dataclass
class MeloConfig(LoraBlocksConfig, FixedSchedule):
    radius: float | None = None
    """Cluster radius (Euclidean, on mean-pooled hidden states; in batches, the vector database's `init_radius`).
    MELO's 75 is for T5's activation scale; None means: call `calibrate_threshold` or pass a value."""

    threshold_field = "radius"  # positive: checked by BaselineConfig.validate

    def validate(self):
        super().validate()
        check_fixed_schedule(self)
        return self


class MeloEditor(LoraBlocksEditor):
    method = "melo"
    trains_batches = True
    config_class = MeloConfig
    exact_rollback = False  # exact for an edit alone in its cluster
    unrouted_is_base = True  # rows outside every radius return the base layer's output untouched

    def _build(self):
        base = super()._build()
        self.pooling = HiddenStateKeys("mean_pool")
        self.centres = torch.zeros(0, 0)  # (C, d), row c is the centre of the cluster in block c
        self.members: list[list[str]] = []  # per block: its live edits, in order; [] for a free block
        self.keys: dict[str, torch.Tensor] = {}  # per live edit
        self.cluster_of: dict[str, int] = {}
        self.centre_updates = 0
        self.db: VectorDatabase | None = None  # MELO's vector database, once edits arrive in batches
        self.batches = 0
        first = self.layers[0].base_layer
        self.attachments.pre_hook(first, lambda _m, args: self.decision.decide_from(args[0]))
        return base

    # -- keys --------------------------------------------------------------------------------------------------------
    def _key(self, prompt) -> torch.Tensor:
        return self._keys([prompt])[0]

    def _keys(self, prompts) -> torch.Tensor:
        return self._inputs_at(self.layers[0].base_layer, prompts, self.pooling.pool)

    def _radius(self) -> float:
        if self.config.radius is None:
            raise ConfigError("MELO needs a cluster radius on this model's activation scale: pass "
                              "MeloConfig(radius=...) or call calibrate_threshold(unrelated_prompts, against=...)")
        return self.config.radius

    def _nearest(self, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, d) -> distance to the nearest live centre and its block, (B,) each (inf, -1 without clusters)."""
        live = torch.tensor([bool(m) for m in self.members], dtype=torch.bool)
        if not bool(live.any()):
            return torch.full((len(keys),), float("inf")), torch.full((len(keys),), -1, dtype=torch.long)
        dist = torch.cdist(keys.float(), self.centres, compute_mode="donot_use_mm_for_euclid_dist")
        dist[:, ~live] = float("inf")
        return dist.min(1)

    def _router(self, hidden, mask):
        if self.db is not None:
            return self.db.search(self.pooling.pool(hidden, mask))[0]
        dist, block = self._nearest(self.pooling.pool(hidden, mask))
        return torch.where(dist <= self.config.radius, block, torch.full_like(block, -1))

    # -- editing -----------------------------------------------------------------------------------------------------
    def _train(self, edit_id, encoded, targets, target):
        if self.db is not None:
            raise ConfigError("this MELO editor was edited in batches (MELO's vector database); edit one at a time "
                              "in a new editor, or pass this edit in a batch (edit_many)")
        radius = self._radius()
        key = torch.stack([self._key(p) for p in encoded]).mean(0)
        dist, block = self._nearest(key.unsqueeze(0))
        joins = bool(dist[0] <= radius)
        if joins:
            cluster = int(block[0])
        else:
            cluster = next((c for c, m in enumerate(self.members) if not m), len(self.members))
            if cluster >= self._blocks():
                self._grow(max(8, 2 * self._blocks()))
        steps, loss, converged = self._train_block(edit_id, encoded, targets, cluster, fresh=not joins)
        self.keys[edit_id], self.cluster_of[edit_id] = key, cluster
        if cluster == len(self.members):
            self.members.append([])
            self.centres = torch.cat([self.centres.reshape(-1, key.shape[0]), key.view(1, -1)])
        self.members[cluster].append(edit_id)
        self.centres[cluster] = torch.stack([self.keys[e] for e in self.members[cluster]]).mean(0)
        if joins:
            self.centre_updates += 1
        return steps, loss, converged

    def _train_batch(self, edit_ids, edits):
        """A new block for the batch, trained on all its rows on the fixed schedule; each edit's key into the
        vector database, naming that block."""
        if any(self.members):
            raise ConfigError("this MELO editor was edited one edit at a time (a block per cluster); batches use "
                              "MELO's vector database: make them in a new editor")
        radius = self._radius()
        if self.db is None:
            self.db = VectorDatabase(radius)
        block = self.batches
        if block >= self._blocks():
            self._grow(max(8, 2 * self._blocks()))
        encoded = [p for prompts, _, _ in edits for p in prompts]
        targets = [t for _, ids, _ in edits for t in ids]
        owner = torch.tensor([i for i, (prompts, _, _) in enumerate(edits) for _ in prompts])
        last = self._train_block_fixed(f"batch{block}", encoded, targets, block)
        keys = self._keys(encoded)
        outcomes = []
        for index, (edit_id, (_, _, target)) in enumerate(zip(edit_ids, edits)):
            rows = owner == index
            self.db.add(edit_id, keys[rows].mean(0), normalise(target), block)
            outcomes.append((self.config.fixed_steps, last["losses"][rows].mean().item(),
                             bool(last["exact"][rows].all())))
        self.batches += 1
        return outcomes

    def _forget(self, edit_id):
        if self.db is not None:
            block = self.db.block_of[edit_id]
            others = [e for e, b in self.db.block_of.items() if b == block and e != edit_id]
            if others:
                raise RollbackNotSupportedError(
                    f"MELO cannot roll back {edit_id} exactly: its batch trained LoRA block {block} together with "
                    f"{', '.join(others[:10])}, and their changes cannot be separated. Only an edit alone in its "
                    "batch can be rolled back.")
            for layer in self.layers:
                layer.clear_slot(block)
            self.db.remove(edit_id)
            return
        cluster = self.cluster_of[edit_id]
        others = [e for e in self.members[cluster] if e != edit_id]
        if others:
            raise RollbackNotSupportedError(
                f"MELO cannot roll back {edit_id} exactly: it trained LoRA block {cluster}, which edits "
                f"{', '.join(others[:10])} also trained, and their changes cannot be separated. Only an edit alone in "
                "its cluster can be rolled back.")
        for layer in self.layers:
            layer.clear_slot(cluster)
        self.members[cluster] = []
        del self.keys[edit_id], self.cluster_of[edit_id]

    # -- routing -----------------------------------------------------------------------------------------------------
    def _has_edits(self) -> bool:
        return any(self.members) or (self.db is not None and bool(self.db.keys))

    @contextmanager
    def _routed(self, prompts, batch):
        if not self._disabled and self._has_edits():
            self._radius()
            self.decision.arm(batch.mask, self._router)
        try:
            yield
        finally:
            self.decision.clear()

    def locate(self, prompt):
        if not self._has_edits():
            return None, None, False
        if self.db is not None:
            _, dist, answered, cluster = self.db.search(self._key(self.encode(prompt)).unsqueeze(0))
            return answered[0] or self.db.opened_by[int(cluster[0])], float(dist[0]), answered[0] is not None
        dist, block = self._nearest(self._key(self.encode(prompt)).unsqueeze(0))
        cluster = int(block[0])
        return self.members[cluster][-1], float(dist[0]), bool(dist[0] <= self._radius())

    def calibrate_threshold(self, prompts, max_activation_rate=0.01, *, against=None):
        """Set the radius so that at most `max_activation_rate` of these unrelated prompts lie within it of the keys
        of `against` (or of the stored centres)."""
        queries = torch.stack([self._key(self.encode(p)) for p in prompts])
        keys = torch.stack([self._key(self.encode(p)) for p in against]) if against is not None else self.centres
        radius = self._calibrated(queries, keys, max_activation_rate)
        self.config = self.config.replace(radius=radius)
        return radius

    def mismatches(self) -> int:
        """Live edits whose own key no longer reaches the block that learned them."""
        if self.db is not None:
            ids = list(self.db.keys)
            blocks = self.db.search(torch.stack([self.db.keys[e] for e in ids]))[0] if ids else []
            return sum(1 for e, b in zip(ids, blocks) if int(b) != self.db.block_of[e])
        if not self.keys:
            return 0
        ids = list(self.keys)
        dist, block = self._nearest(torch.stack([self.keys[e] for e in ids]))
        return sum(1 for e, d, b in zip(ids, dist, block) if not (d <= self._radius() and int(b) == self.cluster_of[e]))

    # -- state -------------------------------------------------------------------------------------------------------
    def _state(self):
        tensors = self._block_state()
        if self.db is not None:
            return {**tensors, **self.db.state(), "batches": torch.tensor([self.batches])}
        tensors["centres"] = self.centres
        tensors["centre_updates"] = torch.tensor([self.centre_updates])
        for edit_id, key in self.keys.items():
            tensors[f"{edit_id}.key"] = key
            tensors[f"{edit_id}.cluster"] = torch.tensor([self.cluster_of[edit_id]])
        return tensors

    def _restore(self, tensors):
        self._restore_blocks(tensors)
        if "db.centres" in tensors:
            self.db = VectorDatabase.restore(tensors, self._radius(), lambda e: normalise(self.ledger.get(e).target))
            self.batches = int(tensors["batches"][0])
            return
        self.centres = tensors["centres"].clone()
        self.centre_updates = int(tensors["centre_updates"][0])
        self.members = [[] for _ in range(len(self.centres))]
        for edit in self.edits():
            self.keys[edit.id] = tensors[f"{edit.id}.key"]
            self.cluster_of[edit.id] = cluster = int(tensors[f"{edit.id}.cluster"][0])
            self.members[cluster].append(edit.id)

    def _describe(self):
        if self.db is not None:
            return {"layers": self.config.layers, "rank": self.config.rank, "radius": self.config.radius,
                    "threshold": self.config.radius, "clusters": len(self.db), "blocks": self.batches,
                    "conflicts": self.db.conflicts, "forgotten_keys": len(self.db.forgotten),
                    "mismatches": self.mismatches(),
                    "memory_bytes": {**self._memory(), "centres": self.db.centres.nbytes}}
        return {"layers": self.config.layers, "rank": self.config.rank, "radius": self.config.radius,
                "threshold": self.config.radius, "clusters": sum(1 for m in self.members if m),
                "centre_updates": self.centre_updates,
                "mismatches": self.mismatches() if self.config.radius is not None else None,
                "memory_bytes": {**self._memory(), "centres": self.centres.nbytes}}


register_method(Method(
    name="melo", editor=MeloEditor, config=MeloConfig,
    summary="MELO (Yu et al., 2024): LoRA blocks chosen by clustered keys in a vector database",
    tiny=TinySettings(families=("llama", "gpt2"), config=dict(radius=1e-3, prompt_format="raw", learning_rate=0.05,
                                                               max_steps=200))))
