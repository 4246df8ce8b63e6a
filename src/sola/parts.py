"""The seam between the `Editor` and the modules that work on it.

Four parts hold something for every live edit: the ledger (its record and its chain), the slots (its place in every
LoRA layer), the router (its keys) and the residency (its factors in memory, or where to read them). `EditParts` keeps
them in step: an edit is installed into all four, forgotten from all four, or linked to the edit it supersedes, and
nothing else changes them.

The modules that train, commit, replay and plan edits (batching.py, replay.py, planning.py, adapters.py) reach an
editor only through `EditorCore`, the protocol below: its public names and its `parts`. None of them reads a private
name of the editor (the linter's SLF001 rule holds them to it).
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch

from .store import id_number

if TYPE_CHECKING:
    from torch import nn

    from .config import EditConfig
    from .edit import Edit
    from .ledger import Ledger
    from .nn import Decision, RoutedLoraLayer
    from .planning import Planner
    from .prompts import EncodedPrompt, PromptFormat
    from .residency import Residency
    from .routing.router import Router
    from .slots import Slots
    from .store import Store
    from .tasks import Task


class EditParts:
    """The per-edit state of one editor, and the only operations that change it."""

    def __init__(self, ledger: Ledger, slots: Slots, router: Router, residency: Residency) -> None:
        self.ledger, self.slots, self.router, self.residency = ledger, slots, router, residency
        self.store: Store | None = None  # where committed edits are durable (None: in memory only)
        self.counter = 0  # the last edit number of an editor without a store (a store allocates its own)
        self.refreshed = time.monotonic()  # when the store's journal was last read

    def next_number(self) -> int:
        """The number the next committed edit gets (e{n}); call it with the store's lock held."""
        return id_number(self.store.next_id()) if self.store is not None else self.counter + 1

    def install(self, edit: Edit, keys: torch.Tensor, factors: dict[str, torch.Tensor] | None) -> int:
        """A committed edit joins every part (factors None: read from the store when an input is routed to it)."""
        slot = self.slots.add(edit.id)
        self.router.add(slot, keys, edit.subject, edit.aliases, edit.prompts if edit.subject_inferred else ())
        if factors is not None:
            self.residency.put(slot, factors, durable=self.store is not None)
        self.ledger.add(edit)
        if self.store is None:
            self.counter = max(self.counter, id_number(edit.id))
        return slot

    def forget(self, edit_id: str, at: str, note: str | None = None) -> Edit:
        """A live edit leaves every part (its rollback is committed, here or by another process)."""
        slot = self.slots.of(edit_id)
        older, newer = self.ledger.rollback(edit_id, at, note)
        if older is not None and newer is None:  # the answering edit of a chain: `older` answers again
            self.router.supersede(slot, self.slots.of(older))
        for part in (self.router, self.residency, self.slots):
            part.remove(slot)
        return self.ledger.get(edit_id)

    def link(self, older: str, newer: str) -> None:
        """`newer` supersedes the answering edit `older`: every key that reached `older` now reaches `newer`."""
        self.router.supersede(self.slots.of(older), self.slots.of(newer))
        self.ledger.link(older, newer)

    def load(self, slot: int) -> dict[str, torch.Tensor]:
        """An evicted edit's factors, read back from the store."""
        assert self.store is not None, "only edits with a durable copy are evicted"
        return self.store.read_tensors(self.slots.owner(slot))


@runtime_checkable
class EditorCore(Protocol):
    """What batching, replay, planning and the adapters need from an editor (SoLA's `Editor` provides it)."""

    method: str
    source: str
    model: nn.Module
    format: PromptFormat
    task: Task
    decision: Decision
    layers: list[RoutedLoraLayer]
    kept_dtype: torch.dtype
    fingerprint: dict[str, Any]
    parts: EditParts
    ledger: Ledger
    slots: Slots
    router: Router
    residency: Residency
    planner: Planner

    @property
    def config(self) -> EditConfig: ...

    @config.setter
    def config(self, config: EditConfig) -> None: ...

    @property
    def store(self) -> Store | None: ...

    def encode(self, prompt: str) -> EncodedPrompt: ...

    def live_edit(self, edit_id: str) -> Edit: ...

    def edits(self, include_rolled_back: bool = False) -> list[Edit]: ...

    def writing(self) -> AbstractContextManager[None]: ...

