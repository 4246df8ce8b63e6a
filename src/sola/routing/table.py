"""The routing table: frozen keys, each pointing at an edit's LoRA slot, searched exactly (or, from
`APPROXIMATE_FROM` cosine keys, through sign codes whose candidates are re-scored exactly: `sola.routing.signcodes`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from . import signcodes


class Route(NamedTuple):
    """Why the model answered as it did: the edit an input was routed to and its distance to that edit's key. From
    `Editor.nearest` also an edit that does not answer it: `rival` is then the other question the input asks, if the
    relation check turned the edit away for it (`sola.routing.relations`)."""

    edit_id: str
    distance: float
    rival: str | None = None


@dataclass(frozen=True)
class Explanation:
    """Why an input runs as it does (`Editor.explain`): the edit that answered it, or else the nearest edit that did
    not and why. `distance` and `threshold` are on one scale: an input is routed exactly when distance < threshold."""

    routed: bool
    edit_id: str | None  # the answering edit if routed, else the nearest live edit (None if there is none to compare)
    distance: float | None
    threshold: float
    reason: str  # "routed", "too far", "another question", "names no edited subject", "no edits", "editing disabled"
    rival: str | None = None  # "another question": the bank's question the input is nearer to than to the edit's

    def __str__(self) -> str:
        if self.routed:
            return f"edit {self.edit_id}, distance {self.distance:.3f} < threshold {self.threshold:.3f}"
        if self.rival is not None:
            return (f"base model: edit {self.edit_id} at distance {self.distance:.3f} asks another question (the input "
                    f"is nearer to {self.rival!r})")
        if self.edit_id is not None:
            return (f"base model: nearest edit {self.edit_id} at distance {self.distance:.3f} >= threshold "
                    f"{self.threshold:.3f}")
        return f"base model: {self.reason}"

    def to_dict(self) -> dict:
        return {"routed": self.routed, "edit": self.edit_id, "distance": self.distance, "threshold": self.threshold,
                "reason": self.reason, "rival": self.rival}


# Cosine tables of at least this many keys search in two stages: half-precision scores of every key, then exact float32
# scores of the keys within HALF_WINDOW of the best one. A half-precision score of unit vectors is within ~0.0015 of
# the exact one (each factor and the result rounded to 11 bits, the products summed in float32), so the exact nearest
# key is always among those candidates and the answer equals the float32 scan's; the scan reads half the bytes.
TWO_STAGE_FROM = 4096
HALF_WINDOW = 0.01
# Keys whose distances differ by less than this (relative, plus the same absolute) are ties, and ties go to the key
# added first. Identical keys (two edits of the same prompt) must not be told apart by rounding: a matrix product gives
# two equal columns different last bits depending on where they fall in its blocks and on the thread count.
TIE = 1e-6
# Cosine tables of at least this many keys search the whole table through sign codes (`SignCodes`): the keys nearest
# in Hamming distance, re-scored exactly. Below it the exact search takes at most ~5 ms (4.1 ms at 10^5 keys, two
# threads); at 10^6 keys it takes 71 ms, the sign codes 3.4 (docs/performance.md). `EditConfig.approximate_search_from`
# sets it.
APPROXIMATE_FROM = 131072


class KeyTable:
    """Keys (N, d) in one contiguous float32 matrix (grown by doubling); `slots[i]` is the LoRA slot of key i.

    Euclidean distances use `torch.cdist` with the direct formula (its default switches to a matmul expansion above 25
    rows, which cancels catastrophically for near-identical vectors); cosine distances are 1 - <q, k> of unit vectors,
    found in two stages in large tables (see `TWO_STAGE_FROM`). Lookups among given edits (`nearest_among`,
    `nearest_of`) are always exact; a whole-table search (`nearest`, `route`) of at least `approximate_from` cosine
    keys re-scores exactly the candidates its sign codes propose (None: always exact).
    """

    def __init__(self, dim: int | None, distance: str, approximate_from: int | None = APPROXIMATE_FROM) -> None:
        self.dim, self.distance = dim, distance  # dim None: taken from the first keys added
        self.approximate_from = approximate_from
        self._codes: signcodes.SignCodes | None = None  # made at the first approximate search, then kept row for row
        self._keys = torch.zeros(0, dim or 0)
        self._slots = torch.zeros(0, dtype=torch.long)
        self._half: torch.Tensor | None = None  # half-precision copy of the keys, made when first needed
        self._count = 0
        # slot -> the row ranges of its keys (an edit's keys are added together, so usually one range): lookups among
        # a few edits' keys read those rows only, not the whole table. Rebuilt when first needed after a removal.
        self._ranges: dict[int, list[tuple[int, int]]] | None = {}

    def __len__(self) -> int:
        return self._count

    @property
    def keys(self) -> torch.Tensor:
        return self._keys[:self._count]

    @property
    def slots(self) -> torch.Tensor:
        return self._slots[:self._count]

    def _prepare(self, vectors: torch.Tensor) -> torch.Tensor:
        vectors = vectors.detach().to(torch.float32).reshape(-1, self.dim)
        if self.distance == "cosine":
            vectors = torch.nn.functional.normalize(vectors, dim=-1)
        return vectors

    def add(self, keys: torch.Tensor, slot: int) -> None:
        self.add_many([keys], [slot])

    def add_many(self, keys: list[torch.Tensor], slots: list[int]) -> None:
        """`add` of many (keys, slot) pairs at once, in order."""
        if not keys:
            return
        rows = [k.reshape(-1, k.shape[-1]) for k in keys]
        self.add_rows(torch.cat(rows), torch.repeat_interleave(torch.tensor(slots, dtype=torch.long),
                                                               torch.tensor([len(r) for r in rows])))

    def add_rows(self, stacked: torch.Tensor, owners: torch.Tensor, own: bool = False) -> None:
        """Keys (N, d) with the slot of each row (N,), appended in order. `own`: nobody else uses `stacked`, so an
        empty table may keep it as its matrix and normalise it in place (a store opened in bulk: 1.5 GB at 10^6
        keys, not copied twice)."""
        if not len(stacked):
            return
        if self.dim is None:
            self.dim, self._keys = stacked.shape[-1], torch.zeros(0, stacked.shape[-1])
        start, end = self._count, self._count + stacked.shape[0]
        if own and start == 0 and end > self._keys.shape[0] and stacked.dtype == torch.float32 \
                and stacked.is_contiguous() and stacked.dim() == 2 and stacked.shape[1] == self.dim:
            if self.distance == "cosine":
                torch.nn.functional.normalize(stacked, dim=-1, out=stacked)
            self._keys, self._slots, self._half = stacked.detach(), owners.clone(), None
        else:
            stacked = self._prepare(stacked)
            self._reserve(end)
            self._keys[start:end], self._slots[start:end] = stacked, owners
        if self._half is not None:
            self._half[start:end] = stacked.half()
        if self._codes is not None:
            self._codes.append(stacked)
        self._count = end
        if self._ranges is not None and len(owners) <= 4096:  # an edit or a batch: indexed now
            self._index_ranges(owners, start)
        else:  # a store opened in bulk: indexed when first needed
            self._ranges = None

    def _reserve(self, rows: int) -> None:
        if rows > self._keys.shape[0]:
            capacity = max(rows, 2 * self._keys.shape[0], 64)
            grown = torch.empty(capacity, self.dim)  # rows past _count are never read
            grown[:self._count] = self.keys
            slots = torch.empty(capacity, dtype=torch.long)
            slots[:self._count] = self.slots
            self._keys, self._slots, self._half = grown, slots, None

    def _index_ranges(self, owners: torch.Tensor, start: int) -> None:
        """Record the row ranges of `owners` (the slots of rows start, start + 1, ...)."""
        assert self._ranges is not None
        values, counts = torch.unique_consecutive(owners, return_counts=True)
        ends = (counts.cumsum(0) + start).tolist()
        for slot, count, end in zip(values.tolist(), counts.tolist(), ends):
            self._ranges.setdefault(slot, []).append((end - count, end))

    def rows_of(self, slots: list[int]) -> torch.Tensor:
        """The rows holding the keys of `slots`, ascending (the order keys were added in)."""
        if self._ranges is None:
            self._ranges = {}
            self._index_ranges(self.slots, 0)
        spans = [span for slot in slots for span in self._ranges.get(slot, ())]
        if not spans:
            return torch.zeros(0, dtype=torch.long)
        rows = torch.cat([torch.arange(a, b) for a, b in spans])
        return rows.sort().values if len(spans) > 1 else rows

    def remove_slot(self, slot: int) -> int:
        keep = self.slots != slot
        removed = int((~keep).sum())
        if removed:
            kept_keys, kept_slots = self.keys[keep], self.slots[keep]
            self._count = kept_keys.shape[0]
            self._keys[:self._count], self._slots[:self._count] = kept_keys, kept_slots
            self._half, self._ranges = None, None
            if self._codes is not None:
                self._codes.keep(keep)
        return removed

    def keys_of(self, slot: int) -> torch.Tensor:
        return self.keys[self.rows_of([slot])]

    def distances(self, queries: torch.Tensor) -> torch.Tensor:
        """(B, d) queries -> (B, N) distances to every key."""
        queries = self._prepare(queries)
        if self.distance == "cosine":
            return cosine_distance(queries, self.keys)
        return torch.cdist(queries, self.keys, compute_mode="donot_use_mm_for_euclid_dist")

    def nearest(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, d) queries -> (distance (B,), slot (B,)) of the nearest key; slot -1 and distance inf if empty."""
        batch = queries.shape[0]
        if len(self) == 0:
            return torch.full((batch,), float("inf")), torch.full((batch,), -1, dtype=torch.long)
        if self.approximates:
            return self._nearest_approximate(self._prepare(queries))
        if self.distance == "cosine" and len(self) >= TWO_STAGE_FROM:
            return self._nearest_two_stage(self._prepare(queries))
        return self._first_nearest(self.distances(queries), self.slots)

    @staticmethod
    def _first_nearest(dist: torch.Tensor, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N) distances -> the distance and slot of the first key (the oldest) within `TIE` of each row's best."""
        best = dist.min(dim=1, keepdim=True).values
        index = (dist <= best + TIE * (1 + best.abs())).int().argmax(dim=1)  # argmax: the first of the maxima
        return dist.gather(1, index.unsqueeze(1)).squeeze(1), slots[index]

    @property
    def approximates(self) -> bool:
        """Whether a whole-table search goes through the sign codes (a cosine table of `approximate_from` keys)."""
        return self.distance == "cosine" and self.approximate_from is not None and len(self) >= self.approximate_from

    @property
    def codes_nbytes(self) -> int:
        """Bytes of the sign codes (0 until the first approximate search)."""
        return self._codes.nbytes if self._codes is not None else 0

    def prepare_search(self) -> None:
        """Compute now what the first whole-table search would (the sign codes of an approximating table: 1.6-2.3 s at
        10^6 keys), so that no input waits for it. Nothing to do for an exact table; later adds and removals keep
        the codes up to date."""
        if self.approximates and self._codes is None:
            self._codes = signcodes.SignCodes(self.dim)
            self._codes.append(self.keys)

    def _nearest_approximate(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.prepare_search()
        dists, slots = [], []
        for query in queries:
            rows = self._codes.candidates(query, signcodes.CANDIDATES)  # ascending: ties go to the oldest key
            dist, slot = self._first_nearest(cosine_distance(query.reshape(1, -1), self.keys[rows]), self.slots[rows])
            dists.append(dist[0])
            slots.append(slot[0])
        return torch.stack(dists), torch.stack(slots)

    def _nearest_two_stage(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._half is None or self._half.shape[0] != self._keys.shape[0]:
            self._half = self._keys.half()
        rough = (queries.half() @ self._half[:self._count].T).float()  # (B, N)
        dists, slots = [], []
        for row, scores in enumerate(rough):
            candidates = (scores >= scores.max() - HALF_WINDOW).nonzero().squeeze(1)  # in key order
            exact = cosine_distance(queries[row:row + 1], self.keys[candidates])
            dist, slot = self._first_nearest(exact, self.slots[candidates])
            dists.append(dist[0])
            slots.append(slot[0])
        return torch.stack(dists), torch.stack(slots)

    def _distances_to(self, query: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """(d,) query -> (1, R) distances to the keys in `rows`."""
        query = self._prepare(query.reshape(1, -1))
        if self.distance == "cosine":
            return cosine_distance(query, self.keys[rows])
        return torch.cdist(query, self.keys[rows], compute_mode="donot_use_mm_for_euclid_dist")

    def nearest_among(self, query: torch.Tensor, slots: list[int]) -> tuple[float, int]:
        """(d,) query -> (distance, slot) of the nearest key among those of `slots` (inf, -1 if they have none);
        only their rows are read."""
        rows = self.rows_of(slots)
        if not len(rows):
            return float("inf"), -1
        found, slot = self._first_nearest(self._distances_to(query, rows), self.slots[rows])
        return float(found[0]), int(slot[0])

    def nearest_of(self, query: torch.Tensor, slots: list[int]) -> dict[int, float]:
        """(d,) query -> {slot: the distance of its nearest key} for each of `slots` that has keys; only their rows
        are read."""
        rows = self.rows_of(slots)
        if not len(rows):
            return {}
        owners, dist = self.slots[rows], self._distances_to(query, rows)[0]
        unique, inverse = torch.unique(owners, return_inverse=True)
        best = torch.full((len(unique),), float("inf")).scatter_reduce(0, inverse, dist, reduce="amin")
        return dict(zip(unique.tolist(), best.tolist()))

    def route(self, queries: torch.Tensor, threshold: float) -> torch.Tensor:
        """(B, d) queries -> slots (B,), -1 where the nearest key is not under the threshold."""
        dist, slots = self.nearest(queries)
        return torch.where(dist < threshold, slots, torch.full_like(slots, -1))


def cosine_distance(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """(B, d), (N, d) unit vectors -> (B, N) cosine distances, never below 0: float rounding of a vector against itself
    (or against the same text encoded in another batch) can give -1e-7, which is no distance a user should be shown.

    Computed in float64 and rounded once to float32, so a key's distance does not depend on which other keys were
    scored with it: a float32 product gives it different last bits by where it falls in the product's blocks, and an
    input at a threshold could then be routed by one search (a whole-table scan, a few candidates, one edit's keys) and
    not by another. The float64 sums differ by ~1e-16, which moves the float32 result only when it lies that close to
    a rounding boundary."""
    return (1.0 - queries.double() @ keys.double().T).clamp_min(0.0).float()
