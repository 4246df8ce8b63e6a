"""The ledger: every edit ever made, live or rolled back, and which live edit supersedes which.

It is what a store's journal means, with no model: an `Editor` keeps one beside its routing table (which holds the
slots and keys), and `sola list` / `sola info` replay one straight from the journal in a fraction of a second.

Superseding links run between live edits: `successor[older] = newer` means `newer` answers for `older`'s fact now.
A chain is the live edits of one fact, oldest first; its last edit answers.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .edit import Edit, EditLog
from .errors import InvalidEditError, UnknownEditError

if TYPE_CHECKING:
    from .journal import JournalLines


def request_key(prompts: Iterable[str], target: str, subject: str | None) -> tuple:
    """What makes two edit requests the same request: their prompts, target and subject."""
    return tuple(prompts), target, subject


class Ledger:
    def __init__(self) -> None:
        self._edits = EditLog()  # every edit, live or rolled back, in creation order
        self._successor: dict[str, str] = {}
        self._predecessor: dict[str, str] = {}
        self._live = 0
        self._by_request: dict[tuple, str] | None = None  # live edits by request_key, built when first asked

    # -- replaying a journal -----------------------------------------------------------------------------------------
    def replay(self, records: list[dict[str, Any]], lines: JournalLines | None = None) -> list[tuple[str, str]]:
        """Take a journal's records (into an empty ledger; edits stay records until first read, or with the journal's
        `lines`, one record a line, the numbers of their lines) and return the superseding links (older, newer)
        between live edits, in the order they were made."""
        assert not self._edits, "replay into an empty ledger"
        rolled = {r["id"]: r for r in records if r["op"] == "rollback"}
        numbers = [n for n, r in enumerate(records) if r["op"] == "edit"]
        made = [records[n] for n in numbers]
        self._edits.add_records(made, rolled, lines, numbers)
        live = [r for r in made if r["id"] not in rolled] if rolled else made
        self._live = len(live)
        links = [(older, r["id"]) for r in live if r.get("supersedes") is not None
                 and (older := self.live_predecessor(r["supersedes"])) is not None]
        for older, newer in links:
            self.link(older, newer)
        return links

    def live_predecessor(self, older: str | None) -> str | None:
        """The live edit an edit that recorded `supersedes=older` supersedes: `older`, or, if that was rolled back (or
        is unknown: moved aside by a repair), what that one superseded."""
        while older is not None and (older not in self._edits or not self._edits[older].live):
            older = self._edits[older].supersedes if older in self._edits else None
        return older

    def restore(self, edits: list[Edit]) -> None:
        """Take edits as a snapshot saved them (live or rolled back, in the order they were made; no links)."""
        assert not self._edits, "restore into an empty ledger"
        for edit in edits:
            self._edits[edit.id] = edit
        self._live = sum(1 for edit in edits if edit.live)

    # -- changes -----------------------------------------------------------------------------------------------------
    def add(self, edit: Edit) -> None:
        """A new live edit (not yet linked: see `link`)."""
        self._edits[edit.id] = edit
        self._live += 1
        if self._by_request is not None:
            self._by_request[request_key(edit.prompts, edit.target, edit.subject)] = edit.id

    def link(self, older: str, newer: str) -> None:
        """`newer` supersedes the answering edit `older`."""
        self._successor[older], self._predecessor[newer] = newer, older
        self._edits[older] = Edit.from_dict({**self._edits[older].to_dict(), "superseded_by": newer})

    def rollback(self, edit_id: str, at: str, note: str | None = None) -> tuple[str | None, str | None]:
        """Mark a live edit rolled back and close its chain around it; -> (older, newer): the edits it superseded and
        that superseded it (either None). With both, `newer` now supersedes `older`; with only `older`, `older`
        answers again."""
        edit = self._edits[edit_id]
        older, newer = self._predecessor.pop(edit_id, None), self._successor.pop(edit_id, None)
        if newer is not None:
            del self._predecessor[newer]
        if older is not None:
            del self._successor[older]
            if newer is not None:
                self.link(older, newer)
            else:
                self._edits[older] = Edit.from_dict({**self._edits[older].to_dict(), "superseded_by": None})
        self._edits[edit_id] = Edit.from_dict({**edit.to_dict(), "rolled_back": at, "superseded_by": None,
                                               "note": note if note is not None else edit.note})
        self._live -= 1
        if self._by_request is not None:
            self._by_request.pop(request_key(edit.prompts, edit.target, edit.subject), None)
        return older, newer

    # -- reading -----------------------------------------------------------------------------------------------------
    def __contains__(self, edit_id: object) -> bool:
        return edit_id in self._edits

    def __len__(self) -> int:
        return len(self._edits)

    @property
    def live_count(self) -> int:
        return self._live

    @property
    def key_count(self) -> int:
        """How many routing keys the live edits have (one per prompt), without building their `Edit`s."""
        return self._edits.live_prompt_count()

    @property
    def superseded_count(self) -> int:
        return len(self._successor)

    def get(self, edit_id: str) -> Edit:
        if edit_id not in self._edits:
            raise UnknownEditError(f"edit {edit_id!r} does not exist (see `sola list`)")
        return self._edits[edit_id]

    def live_edit(self, edit_id: str) -> Edit:
        """The live edit `edit_id`; anything else is an `UnknownEditError` naming the live edits."""
        edit = self._edits.get(edit_id)
        if edit is None or not edit.live:
            state = "was already rolled back" if edit is not None else "does not exist"
            live = ", ".join(e.id for e in self.edits()[:10]) or "none"
            raise UnknownEditError(f"edit {edit_id!r} {state}; live edits: {live} (see `sola list`)")
        return edit

    def edits(self, include_rolled_back: bool = False) -> list[Edit]:
        """The edits in the order they were made (only live ones unless asked)."""
        return [e for e in self._edits.values() if include_rolled_back or e.live]

    def successor(self, edit_id: str) -> str | None:
        return self._successor.get(edit_id)

    def chain(self, edit_id: str) -> list[Edit]:
        """The live edits of `edit_id`'s fact, oldest first; the last one answers."""
        edit = self.get(edit_id)
        if not edit.live:
            return [edit]
        while edit.id in self._predecessor:
            edit = self._edits[self._predecessor[edit.id]]
        found = [edit]
        while found[-1].id in self._successor:
            found.append(self._edits[self._successor[found[-1].id]])
        return found

    def answering(self, edit_id: str) -> str:
        """The edit that answers for a live edit's fact now (itself unless superseded)."""
        while edit_id in self._successor:
            edit_id = self._successor[edit_id]
        return edit_id

    def committed_as(self, prompts: Iterable[str], target: str, subject: str | None) -> Edit | None:
        """The live edit made from exactly this request, if any (re-running a file of edits skips those)."""
        if self._by_request is None:
            self._by_request = {request_key(e.prompts, e.target, e.subject): e.id for e in self.edits()}
        found = self._by_request.get(request_key(prompts, target, subject))
        return self._edits[found] if found is not None else None

    def check_supersedable(self, edit_id: str) -> None:
        """Raise unless `edit_id` is a live edit that answers for its fact (the edit an update may name)."""
        edit = self._edits[edit_id] if edit_id in self._edits else None
        if edit is None or not edit.live:
            state = "was rolled back" if edit is not None else "does not exist"
            raise UnknownEditError(f"supersedes={edit_id!r}: that edit {state}; name a live edit (see `sola list`)")
        if edit.superseded_by is not None:
            raise InvalidEditError(f"supersedes={edit_id!r}: that edit is already superseded by {edit.superseded_by}; "
                                   f"pass supersedes={edit.superseded_by!r}, the edit that answers for that fact now")
