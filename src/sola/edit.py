"""The record of one edit, as the journal keeps it."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .journal import JournalLines


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


class _RolledBack(dict):
    """The record of a rolled-back edit in an `EditLog`, its rollback written into it."""


class EditLog(MutableMapping):
    """Edits by id, in the order they were made. Edits read from a journal stay journal records, or the numbers of
    their journal lines, until they are first asked for: opening a store of 10^6 edits builds none of them."""

    def __init__(self) -> None:
        self._items: dict[str, Edit | dict[str, Any] | int] = {}
        self._lines: JournalLines | None = None

    def add_records(self, records: list[dict[str, Any]], rolled: dict[str, dict[str, Any]] | None = None,
                    lines: JournalLines | None = None, numbers: list[int] | None = None) -> None:
        """Journal records of edits (dicts in `Edit.to_dict` form; other keys are ignored), to become `Edit`s when
        read: live and answering unless `rolled` holds their rollback record (what a record itself says about either
        is not read: the journal's later lines decide). With their `lines` and each record's line `numbers`, only
        the numbers of live edits are kept, and their lines parsed again when read."""
        rolled = rolled or {}
        if lines is not None:
            self._lines = lines
            live: list[Any] = numbers if not rolled else [n for r, n in zip(records, numbers) if r["id"] not in rolled]
        else:
            live = records if not rolled else [r for r in records if r["id"] not in rolled]
        if not rolled:
            self._items.update(zip([r["id"] for r in records], live))
            return
        kept = iter(live)  # one for each record not rolled back, in order
        self._items.update({r["id"]: next(kept) if r["id"] not in rolled else _RolledBack(
            {**r, "rolled_back": rolled[r["id"]].get("at", ""), "superseded_by": None,
             "note": rolled[r["id"]].get("reason") or r.get("note")}) for r in records})

    def __getitem__(self, edit_id: str) -> Edit:
        item = self._items[edit_id]
        if isinstance(item, Edit):
            return item
        if isinstance(item, int):
            item = self._lines.record(item)
        edit = self._items[edit_id] = Edit.from_dict(
            item if isinstance(item, _RolledBack) else {**item, "rolled_back": None, "superseded_by": None})
        return edit

    def live_prompt_count(self) -> int:
        """How many prompts the live edits have (their rows in a routing table), counted without building Edits: a
        record not marked rolled back is live (see `add_records`)."""
        total = 0
        for item in self._items.values():
            if isinstance(item, Edit):
                total += len(item.prompts) if item.live else 0
            elif not isinstance(item, _RolledBack):
                record = self._lines.record(item) if isinstance(item, int) else item
                total += len(record.get("prompts") or ())
        return total

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
