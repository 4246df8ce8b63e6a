"""The record of one edit, as the journal keeps it."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, MutableMapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any


@dataclass(frozen=True)
class Edit:
    """One edit: the prompts it answers, the target it answers with, and how training went.

    `id` is stable for the life of the store (also across save/load); pass it to `Editor.rollback`.
    """

    id: str
    prompts: tuple[str, ...]
    target: str
    subject: str | None = None
    subject_inferred: bool = False  # the subject was read from the prompt (`sola.routing.names.infer_subject`)
    aliases: tuple[str, ...] = ()  # other names of the subject that reach the edit too
    created: str = ""
    steps: int = 0
    loss: float = 0.0
    converged: bool = True
    seconds: float = 0.0  # wall time of key computation and training
    rolled_back: str | None = None  # when it was rolled back (ISO time), None while live
    supersedes: str | None = None  # the edit of the same fact this one replaced when it was made (see Editor.edit)
    superseded_by: str | None = None  # the live edit that answers in its place now (kept current by the Editor)
    note: str | None = None  # what a method could not do exactly (ELDER's rollback leaves its shared training)

    @property
    def prompt(self) -> str:
        return self.prompts[0]

    @property
    def live(self) -> bool:
        return self.rolled_back is None

    @property
    def answering(self) -> bool:
        """Live and not superseded: inputs routed to its fact get its target."""
        return self.live and self.superseded_by is None

    def to_dict(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in _FIELDS}  # every field is a plain value: no deep copy needed
        data["prompts"], data["aliases"] = list(self.prompts), list(self.aliases)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Edit:
        values = {k: v for k, v in data.items() if k in _FIELDS}
        values["prompts"], values["aliases"] = tuple(values.get("prompts", ())), tuple(values.get("aliases", ()))
        return cls(**values)


_FIELDS = tuple(f.name for f in dataclasses.fields(Edit))


def now() -> str:
    """The time stamps of edit records and rollbacks (`created`, `rolled_back`): UTC, ISO 8601, to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class EditLog(MutableMapping):
    """Edits by id, in the order they were made. Edits read from a journal stay journal records until they are first
    asked for: opening a store of 100,000 edits builds none of them."""

    def __init__(self) -> None:
        self._items: dict[str, Edit | dict[str, Any]] = {}

    def add_records(self, records: Iterable[dict[str, Any]]) -> None:
        """Journal records (dicts in `Edit.to_dict` form; other keys are ignored), to become `Edit`s when read."""
        for record in records:
            self._items[record["id"]] = record

    def __getitem__(self, edit_id: str) -> Edit:
        item = self._items[edit_id]
        if not isinstance(item, Edit):
            item = self._items[edit_id] = Edit.from_dict(item)
        return item

    def __setitem__(self, edit_id: str, edit: Edit) -> None:
        self._items[edit_id] = edit

    def __delitem__(self, edit_id: str) -> None:
        del self._items[edit_id]

    def __contains__(self, edit_id: object) -> bool:
        return edit_id in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)
