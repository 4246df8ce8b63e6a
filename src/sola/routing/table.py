"""The routing table: frozen keys, each pointing at an edit's LoRA slot, searched exactly."""

from __future__ import annotations

from typing import NamedTuple

import torch


class Route(NamedTuple):
    """Why the model answered as it did: the edit an input was routed to and its distance to that edit's key."""

    edit_id: str
    distance: float


class KeyTable:
    """Keys (N, d) in one contiguous float32 matrix; `slots[i]` is the LoRA slot of key i.

    The search is exact. Euclidean distances use `torch.cdist` with the direct formula (its default switches to a
    matmul expansion above 25 rows, which cancels catastrophically for near-identical vectors); cosine distances are
    1 - <q, k> of unit vectors.
    """

    def __init__(self, dim: int | None, distance: str) -> None:
        self.dim, self.distance = dim, distance  # dim None: taken from the first keys added
        self.keys = torch.zeros(0, dim or 0)
        self.slots = torch.zeros(0, dtype=torch.long)

    def __len__(self) -> int:
        return self.keys.shape[0]

    def _prepare(self, vectors: torch.Tensor) -> torch.Tensor:
        vectors = vectors.detach().to(torch.float32).reshape(-1, self.dim)
        if self.distance == "cosine":
            vectors = torch.nn.functional.normalize(vectors, dim=-1)
        return vectors

    def add(self, keys: torch.Tensor, slot: int) -> None:
        if self.dim is None:
            self.dim, self.keys = keys.shape[-1], torch.zeros(0, keys.shape[-1])
        keys = self._prepare(keys)
        self.keys = torch.cat([self.keys, keys])
        self.slots = torch.cat([self.slots, torch.full((keys.shape[0],), slot, dtype=torch.long)])

    def remove_slot(self, slot: int) -> int:
        keep = self.slots != slot
        removed = int((~keep).sum())
        self.keys, self.slots = self.keys[keep], self.slots[keep]
        return removed

    def keys_of(self, slot: int) -> torch.Tensor:
        return self.keys[self.slots == slot]

    def distances(self, queries: torch.Tensor) -> torch.Tensor:
        """(B, d) queries -> (B, N) distances to every key."""
        queries = self._prepare(queries)
        if self.distance == "cosine":
            return 1.0 - queries @ self.keys.T
        return torch.cdist(queries, self.keys, compute_mode="donot_use_mm_for_euclid_dist")

    def nearest(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, d) queries -> (distance (B,), slot (B,)) of the nearest key; slot -1 and distance inf if empty."""
        batch = queries.shape[0]
        if len(self) == 0:
            return torch.full((batch,), float("inf")), torch.full((batch,), -1, dtype=torch.long)
        dist, index = self.distances(queries).min(dim=1)
        return dist, self.slots[index]

    def nearest_among(self, query: torch.Tensor, slots: list[int]) -> tuple[float, int]:
        """(d,) query -> (distance, slot) of the nearest key among those of `slots` (inf, -1 if they have none)."""
        allowed = torch.isin(self.slots, torch.tensor(slots, dtype=torch.long))
        if not bool(allowed.any()):
            return float("inf"), -1
        dist = self.distances(query.reshape(1, -1))[0].masked_fill(~allowed, float("inf"))
        index = int(dist.argmin())
        return float(dist[index]), int(self.slots[index])

    def route(self, queries: torch.Tensor, threshold: float) -> torch.Tensor:
        """(B, d) queries -> slots (B,), -1 where the nearest key is not under the threshold."""
        dist, slots = self.nearest(queries)
        return torch.where(dist < threshold, slots, torch.full_like(slots, -1))
