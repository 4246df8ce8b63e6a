"""Slots: the place of each live edit in the routing table and the layers' buffers, by edit id and back.

A slot is freed when its edit is rolled back and reused by a later edit; ids are never reused (the ledger's)."""

from __future__ import annotations


class Slots:
    def __init__(self) -> None:
        self._slot_of: dict[str, int] = {}  # live edits only
        self._owner: list[str | None] = []  # the inverse: which edit a slot belongs to (None: free)
        self._free: list[int] = []

    def add(self, edit_id: str) -> int:
        """A free slot for a new live edit."""
        if self._free:
            slot = self._free.pop()
            self._owner[slot] = edit_id
        else:
            slot = len(self._owner)
            self._owner.append(edit_id)
        self._slot_of[edit_id] = slot
        return slot

    def add_many(self, edit_ids: list[str]) -> list[int]:
        """Slots 0..n-1 for the live edits of a new editor (opening a store), in creation order."""
        assert not self._slot_of, "add_many fills an empty slot map"
        slots = list(range(len(edit_ids)))
        self._slot_of, self._owner = dict(zip(edit_ids, slots)), list(edit_ids)
        return slots

    def remove(self, slot: int) -> None:
        edit_id = self._owner[slot]
        if edit_id is None:
            raise KeyError(slot)
        del self._slot_of[edit_id]
        self._owner[slot] = None
        self._free.append(slot)

    def of(self, edit_id: str) -> int:
        return self._slot_of[edit_id]

    def owner(self, slot: int) -> str:
        edit_id = self._owner[slot] if 0 <= slot < len(self._owner) else None
        if edit_id is None:
            raise KeyError(slot)
        return edit_id

    def ids(self) -> list[str]:
        """The live edits' ids, in the order their slots were taken."""
        return list(self._slot_of)

    def __len__(self) -> int:
        return len(self._slot_of)
