"""Slots: the place of each live edit in the routing table and the layers' buffers, by edit id and back.

A slot is freed when its edit is rolled back and reused by a later edit; ids are never reused (the ledger's)."""

from __future__ import annotations


class Slots:
    def __init__(self) -> None:
        self._slot_of: dict[str, int] = {}  # live edits only
        self._owner: dict[int, str] = {}  # the inverse: which edit a routed slot belongs to
        self._free: list[int] = []

    def add(self, edit_id: str) -> int:
        """A free slot for a new live edit."""
        slot = self._free.pop() if self._free else len(self._slot_of)
        self._slot_of[edit_id], self._owner[slot] = slot, edit_id
        return slot

    def add_many(self, edit_ids: list[str]) -> list[int]:
        """Slots 0..n-1 for the live edits of a new editor (opening a store), in creation order."""
        assert not self._slot_of, "add_many fills an empty slot map"
        slots = list(range(len(edit_ids)))
        self._slot_of, self._owner = dict(zip(edit_ids, slots)), dict(zip(slots, edit_ids))
        return slots

    def remove(self, slot: int) -> None:
        del self._slot_of[self._owner.pop(slot)]
        self._free.append(slot)

    def of(self, edit_id: str) -> int:
        return self._slot_of[edit_id]

    def owner(self, slot: int) -> str:
        return self._owner[slot]

    def ids(self) -> list[str]:
        """The live edits' ids, in the order their slots were taken."""
        return list(self._slot_of)

    def __len__(self) -> int:
        return len(self._slot_of)
