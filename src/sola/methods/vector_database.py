"""MELO's vector database, as its authors' code keeps it (`VecDB` and `GraceLinear.forward` in ECNU-ICALK/MELO,
`peft_egg/src/peft/tuners/melo.py`), for edits that arrive in batches: clusters of edit keys, each with a centre, a
radius and a label (the target of the edit that opened it); every key (a point) names the LoRA block of the batch
that trained it.

Adding a key:
- no cluster yet, or the nearest centre farther than that cluster's radius + `init_radius`: a new cluster at the key
  (radius `init_radius`);
- else, if the key's label is the cluster's: the key joins, the centre moves to the mean of its points and the radius
  grows to the farthest point (at least `init_radius`);
- else (a conflicting answer nearby): a new cluster at the key, and the two clusters' radii split at half their
  distance; points of the old cluster outside its new radius are forgotten (they reach no block any more).
Search: the nearest centre; farther than its radius, no block; else the block of the nearest point in that cluster.
"""

from __future__ import annotations

import torch

NO_BLOCK = -1


class VectorDatabase:
    def __init__(self, init_radius: float) -> None:
        self.init_radius = init_radius
        self.centres = torch.zeros(0, 0)  # (C, d)
        self.radii = torch.zeros(0, dtype=torch.float64)  # (C,)
        self.labels: list[str] = []  # per cluster
        self.opened_by: list[str] = []  # per cluster: the edit whose key opened it (its label is that edit's target)
        self.points: list[list[str]] = []  # per cluster: its edits (their keys are points)
        self.keys: dict[str, torch.Tensor] = {}  # every edit added, forgotten ones included
        self.block_of: dict[str, int] = {}
        self.conflicts = 0  # radius splits
        self.forgotten: set[str] = set()

    def __len__(self) -> int:
        return len(self.labels)

    def _distances(self, keys: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
        return torch.cdist(keys.float(), centres.float(), compute_mode="donot_use_mm_for_euclid_dist")

    def add(self, edit_id: str, key: torch.Tensor, label: str, block: int) -> None:
        self.keys[edit_id], self.block_of[edit_id] = key, block
        if not len(self):
            self._open(edit_id, key, label)
            return
        dist, nearest = self._distances(key.view(1, -1), self.centres)[0].min(0)
        cluster, distance = int(nearest), float(dist)
        if distance > float(self.radii[cluster]) + self.init_radius:
            self._open(edit_id, key, label)
        elif self.labels[cluster] == label:
            self.points[cluster].append(edit_id)
            members = torch.stack([self.keys[e] for e in self.points[cluster]])
            self.centres[cluster] = members.mean(0)
            farthest = float(self._distances(members, self.centres[cluster].view(1, -1)).max())
            self.radii[cluster] = max(farthest, self.init_radius)
        else:
            self._open(edit_id, key, label)
            self.conflicts += 1
            self.radii[cluster] = distance / 2 - 1e-5
            self.radii[-1] = distance / 2 + 1e-5
            kept = []
            for member in self.points[cluster]:
                inside = float(self._distances(self.keys[member].view(1, -1), self.centres[cluster].view(1, -1)))
                if inside <= float(self.radii[cluster]):
                    kept.append(member)
                else:
                    self.forgotten.add(member)
            self.points[cluster] = kept

    def _open(self, edit_id: str, key: torch.Tensor, label: str) -> None:
        self.centres = torch.cat([self.centres.reshape(-1, key.shape[0]), key.view(1, -1).float()])
        self.radii = torch.cat([self.radii, torch.tensor([self.init_radius], dtype=torch.float64)])
        self.labels.append(label)
        self.opened_by.append(edit_id)
        self.points.append([edit_id])

    def remove(self, edit_id: str) -> None:
        """Take an edit's point out (its cluster stays, as the authors' code never deletes one)."""
        for members in self.points:
            if edit_id in members:
                members.remove(edit_id)
        self.forgotten.discard(edit_id)
        del self.keys[edit_id], self.block_of[edit_id]

    def search(self, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[str | None], torch.Tensor]:
        """(B, d) -> (the block of each key or NO_BLOCK, the distance to the nearest centre, the edit whose point
        answered (None if none did), the nearest cluster (NO_BLOCK without clusters))."""
        blocks = torch.full((len(keys),), NO_BLOCK, dtype=torch.long)
        if not len(self):
            return blocks, torch.full((len(keys),), float("inf")), [None] * len(keys), blocks.clone()
        dist, nearest = self._distances(keys, self.centres).min(1)
        answered: list[str | None] = []
        for row, (distance, cluster) in enumerate(zip(dist.tolist(), nearest.tolist())):
            members = self.points[cluster]
            if distance > float(self.radii[cluster]) or not members:
                answered.append(None)
                continue
            closest = self._distances(keys[row:row + 1], torch.stack([self.keys[e] for e in members]))[0].argmin()
            answered.append(members[int(closest)])
            blocks[row] = self.block_of[answered[-1]]
        return blocks, dist, answered, nearest

    # -- state -------------------------------------------------------------------------------------------------------
    def state(self) -> dict[str, torch.Tensor]:
        """As tensors (labels are the targets of the edits that opened the clusters, read back from the ledger)."""
        ids = list(self.keys)
        return {"db.centres": self.centres, "db.radii": self.radii, "db.conflicts": torch.tensor([self.conflicts]),
                "db.keys": torch.stack([self.keys[e] for e in ids]) if ids else torch.zeros(0, 0),
                "db.edits": torch.tensor([int(e[1:]) for e in ids], dtype=torch.long),
                "db.blocks": torch.tensor([self.block_of[e] for e in ids], dtype=torch.long),
                "db.cluster": torch.tensor([self._cluster_of(e) for e in ids], dtype=torch.long),
                "db.opened_by": torch.tensor([int(e[1:]) for e in self.opened_by], dtype=torch.long)}

    def _cluster_of(self, edit_id: str) -> int:
        return next((c for c, members in enumerate(self.points) if edit_id in members), NO_BLOCK)

    @classmethod
    def restore(cls, tensors: dict[str, torch.Tensor], init_radius: float, label_of) -> VectorDatabase:
        db = cls(init_radius)
        db.centres, db.radii = tensors["db.centres"].clone(), tensors["db.radii"].clone()
        db.conflicts = int(tensors["db.conflicts"][0])
        db.points = [[] for _ in range(len(db.radii))]
        for key, number, block, cluster in zip(tensors["db.keys"], tensors["db.edits"].tolist(),
                                               tensors["db.blocks"].tolist(), tensors["db.cluster"].tolist()):
            edit_id = f"e{number}"
            db.keys[edit_id], db.block_of[edit_id] = key, block
            if cluster == NO_BLOCK:
                db.forgotten.add(edit_id)
            else:
                db.points[cluster].append(edit_id)
        db.opened_by = [f"e{n}" for n in tensors["db.opened_by"].tolist()]
        db.labels = [label_of(edit_id) for edit_id in db.opened_by]
        return db
