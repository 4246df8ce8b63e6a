"""Which edits' LoRA factors sit in memory.

An edit is known by its slot (its place in the routing table); its factors live in a row of every edited layer's slot
buffers only while it is resident. Edits whose factors are durable in a store can be evicted, least recently routed
first, and are read back from the store when an input is routed to them, so memory holds the routing keys of every
edit but the factors of at most `capacity` of them. Factors read back are the stored values, which are exactly the
values that were in memory (they are rounded to the stored precision when training ends), so eviction never changes
an output bit. Edits without a durable copy (an editor without a store) are never evicted.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch

from .nn import RoutedLoraLayer

Factors = dict[str, torch.Tensor]  # "{layer}.lora_A" / "{layer}.lora_B" -> tensor, as a store holds them


class Residency:
    def __init__(self, layers: list[RoutedLoraLayer], names: list[str], capacity: int | None) -> None:
        """`capacity` (at least 1; the Editor checks it) or None: every edit resident."""
        self.layers, self.names, self.capacity = layers, names, capacity
        self._row: OrderedDict[int, int] = OrderedDict()  # slot -> row, least recently used first
        self._free: list[int] = []
        self._pinned: set[int] = set()  # slots with no durable copy: never evicted
        self.loads = 0
        self.evictions = 0

    @property
    def resident(self) -> int:
        return len(self._row)

    def put(self, slot: int, factors: Factors, durable: bool) -> None:
        """Install an edit's factors (a new edit, or one read back)."""
        row = self._free_row(keep=())
        self._write(row, factors)
        self._row[slot] = row
        if not durable:
            self._pinned.add(slot)

    def remove(self, slot: int) -> None:
        """Forget an edit (rolled back): its row is zeroed and reused."""
        row = self._row.pop(slot, None)
        self._pinned.discard(slot)
        if row is not None:
            for layer in self.layers:
                layer.clear_slot(row)
            self._free.append(row)

    def read(self, slot: int, load: Callable[[int], Factors]) -> Factors:
        """An edit's factors, from memory if resident, else from `load` (the store), without making it resident."""
        row = self._row.get(slot)
        if row is None:
            return load(slot)
        out = {}
        for name, layer in zip(self.names, self.layers):
            out[f"{name}.lora_A"], out[f"{name}.lora_B"] = layer.read_slot(row)
        return out

    def rows(self, slots: torch.Tensor, load: Callable[[int], Factors]) -> torch.Tensor:
        """Rows of the layers' buffers for these slots (-1 stays -1), reading non-resident edits back with `load`."""
        wanted = sorted({int(s) for s in slots.tolist() if s >= 0})
        for slot in wanted:
            if slot in self._row:
                self._row.move_to_end(slot)
            else:
                row = self._free_row(keep=set(wanted))
                self._write(row, load(slot))
                self._row[slot] = row
                self.loads += 1
        if not wanted:
            return slots
        table = torch.full((max(wanted) + 1,), -1, dtype=torch.long)
        for slot in wanted:
            table[slot] = self._row[slot]
        return torch.where(slots >= 0, table[slots.clamp(min=0, max=max(wanted))], slots)

    def _free_row(self, keep) -> int:
        if self._free:
            return self._free.pop()
        if self.capacity is not None and len(self._row) >= self.capacity:
            victim = next((s for s in self._row if s not in self._pinned and s not in keep), None)
            if victim is not None:
                row = self._row.pop(victim)
                self.evictions += 1
                return row
        row = len(self._row)  # every row in use: a new one
        if row >= self.layers[0].capacity:
            for layer in self.layers:
                layer.grow(max(8, 2 * layer.capacity))
        return row

    def _write(self, row: int, factors: Factors) -> None:
        for name, layer in zip(self.names, self.layers):
            layer.write_slot(row, factors[f"{name}.lora_A"], factors[f"{name}.lora_B"])
