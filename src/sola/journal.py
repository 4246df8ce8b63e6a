"""The journal and the manifest of a store, read without torch or the model: what `sola list` and `sola info` need,
and what `sola.store.Store` builds on. See `sola.store` for the layout and the commit protocol."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy
import orjson

from .bulk import collector_paused
from .errors import CorruptStoreError, StoreError

FORMAT_VERSION = 1
MANIFEST, JOURNAL, TENSORS, INDEX = "manifest.json", "edits.jsonl", "tensors", "index"
MANIFEST_BACKUP, QUARANTINE = "manifest.json.bak", "quarantine"
OPS = ("edit", "rollback", "repair")


def id_number(edit_id: str) -> int:
    """The number of an edit id ("e12" -> 12); 0 for an id of another form."""
    if isinstance(edit_id, str) and edit_id[:1] == "e" and edit_id[1:].isdecimal():  # isdecimal: what regex \d takes
        return int(edit_id[1:])
    return 0


def record_digest(record: dict[str, Any]) -> str:
    """What ties a tensor file to its journal record: a digest of the record's prompts, target and subject."""
    essence = {"prompts": list(record.get("prompts", ())), "target": record.get("target"),
               "subject": record.get("subject")}
    return hashlib.sha256(json.dumps(essence, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Damage:
    """One damaged (or merely untidy) part of a store, as `Store.check` and opening a store find it."""

    kind: str  # journal-line | duplicate-id | tensors-missing | tensors-unreadable | tensors-mismatch | index |
    #            manifest | torn-tail | orphan | unknown-rollback
    path: str  # relative to the store directory
    message: str
    edit_id: str | None = None
    line: int | None = None  # journal line, counted from 1 as an editor shows it
    harmless: bool = False  # nothing committed is affected (an orphan file, a torn uncommitted line)


def parse_journal(data: bytes, first_line: int = 1) -> tuple[list[dict[str, Any]], int, list[Damage]]:
    """The committed records of journal bytes, the length of the committed part, and every damaged line (one that is
    not a record, or records an edit id an earlier line of `data` records). A last line without its newline is a torn,
    uncommitted write: neither a record nor damage."""
    committed = data[: data.rfind(b"\n") + 1]
    count = committed.count(b"\n")
    try:  # one parse of the whole journal; line by line only to find damaged lines
        records = _parse_lines(committed) if count else []
        whole = len(records) == count  # else a line held more or less than one value
    except (json.JSONDecodeError, UnicodeDecodeError):
        whole = False
    if whole and _all_sound(records):
        return records, len(committed), []
    lines = committed.split(b"\n")[:-1]
    numbered = list(enumerate(records, start=first_line)) if whole else None
    damage: list[Damage] = []
    if numbered is None:
        numbered = []
        for number, line in enumerate(lines, start=first_line):
            try:
                numbered.append((number, json.loads(line)))
            except (json.JSONDecodeError, UnicodeDecodeError):
                damage.append(Damage("journal-line", JOURNAL, f"{JOURNAL}, line {number}: not valid JSON", line=number))
    good, edit_lines = [], {}  # edit id -> the line that records it
    for number, record in numbered:
        problem = _record_problem(record)
        if problem:
            damage.append(Damage("journal-line", JOURNAL, f"{JOURNAL}, line {number}: {problem}", line=number,
                                 edit_id=record.get("id") if isinstance(record, dict) else None))
        elif record["op"] == "edit" and record["id"] in edit_lines:
            damage.append(Damage("duplicate-id", JOURNAL, f"{JOURNAL}, line {number}: edit {record['id']} is recorded "
                                 f"again (first at line {edit_lines[record['id']]})", line=number,
                                 edit_id=record["id"]))
        else:
            if record["op"] == "edit":
                edit_lines[record["id"]] = number
            good.append(record)
    return good, len(committed), damage


class JournalLines:
    """Committed journal lines kept as bytes, one record a line, each parsed again when it is asked for.

    An editor that opens a store of 10^6 edits keeps its edits' records this way (300 MB of lines) rather than as
    parsed dicts (1.3 GB, and 3.4 million objects that every full pass of the garbage collector walks: 1.3 s each,
    docs/performance.md); the few it reads (an answer's edit, `sola list` of some) are parsed in microseconds."""

    def __init__(self, data: bytes, length: int) -> None:
        """`data[:length]`: whole lines, each one sound record (`parse_journal` found no damage in them)."""
        self._data = data
        self._ends = numpy.flatnonzero(numpy.frombuffer(data, dtype=numpy.uint8, count=length) == ord("\n"))

    def __len__(self) -> int:
        return len(self._ends)

    def record(self, number: int) -> dict[str, Any]:
        """Line `number` (from 0) parsed."""
        start = int(self._ends[number - 1]) + 1 if number else 0
        line = memoryview(self._data)[start:int(self._ends[number])]
        try:
            return orjson.loads(line)
        except orjson.JSONDecodeError:
            return json.loads(bytes(line))

    def records(self) -> list[dict[str, Any]]:
        """Every line parsed, in one parse."""
        return _parse_lines(self._data[:int(self._ends[-1]) + 1]) if len(self._ends) else []


def _parse_lines(committed: bytes) -> list[Any]:
    """The values of newline-ended JSON lines in one parse, as the items of one array (a line holds no raw newline:
    JSON escapes it). orjson parses 10^6 records in 1.4 s where the standard library takes 2.2 (docs/performance.md);
    what it refuses and the standard library reads (NaN, integers past 64 bits) is parsed by the latter."""
    array = bytearray(b"[")
    array += committed
    view = numpy.frombuffer(array, dtype=numpy.uint8)
    view[view == ord("\n")] = ord(",")
    del view  # a bytearray with a view of it cannot change size
    array[-1] = ord("]")
    try:
        return orjson.loads(array)
    except orjson.JSONDecodeError:
        return json.loads(array)


def _all_sound(records: list[Any]) -> bool:
    """Whether every record is sound and no edit id repeats: the usual journal, checked in a few passes over the list
    (at 10^6 records ~10x faster than `_record_problem` per record; any doubt falls back to that)."""
    if set(map(type, records)) - {dict}:
        return False
    try:
        ops = [record["op"] for record in records]
        ids = [record["id"] if "prompts" in record and "target" in record else None  # None: not a sound edit
               for record, op in zip(records, ops) if op == "edit"]
    except KeyError:  # a record without "op", an edit without "id"
        return False
    return (not set(map(type, ids)) - {str} and len(set(ids)) == len(ids)
            and not [record for record, op in zip(records, ops) if op != "edit" and _record_problem(record)])


def _record_problem(record: Any) -> str | None:
    if not isinstance(record, dict) or record.get("op") not in OPS:
        return "a record needs 'op' (edit|rollback|repair)"
    if record["op"] != "repair" and not isinstance(record.get("id"), str):
        return "a record needs 'op' (edit|rollback) and 'id'"
    if record["op"] == "edit" and not ("prompts" in record and "target" in record):
        return "an edit record needs 'prompts' and 'target'"
    return None


def damage_message(path: Path, damage: list[Damage]) -> str:
    """One message for the damage found on opening a store: what cannot be read, and the two ways on."""
    serious = [d for d in damage if not d.harmless]
    shown = "; ".join(d.message for d in serious[:5]) + (f"; and {len(serious) - 5} more" if len(serious) > 5 else "")
    edits = sorted({d.edit_id for d in serious if d.edit_id}, key=id_number)
    lost = f" (edits {', '.join(edits[:10])}{' ...' if len(edits) > 10 else ''} cannot be read)" if edits else ""
    return (f"the store {path} is damaged{lost}: {shown}. Run `sola fsck --store {path} --repair` to move what "
            "cannot be read aside into quarantine/ (nothing is deleted) and open the rest, or open the rest read-only "
            "now with --skip-damaged (Editor.from_pretrained(..., skip_damaged=True))")


def manifest_problem(path: Path) -> str | None:
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        return f"is not valid JSON ({err})"
    except OSError as err:
        return f"cannot be read ({err.strerror})"
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        version = manifest.get("format_version") if isinstance(manifest, dict) else None
        return f"has an unsupported format_version {version!r}; this version of sola reads format {FORMAT_VERSION}"
    return None


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of the store at `path` (what it holds and was made on), checked."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise StoreError(f"{path} is not a store ({MANIFEST} missing); create one with "
                         "Editor.from_pretrained(store=...), `sola edit --store DIR ...` or Editor.save(...)")
    problem = manifest_problem(manifest_path)
    if problem:
        backup = path / MANIFEST_BACKUP
        fix = (f"`sola fsck --store {path} --repair` restores it from its copy {MANIFEST_BACKUP}"
               if backup.is_file() and manifest_problem(backup) is None else "restore it from a copy of the store")
        raise CorruptStoreError(f"{manifest_path} {problem}; {fix}")
    return json.loads(manifest_path.read_text())


def read_journal(path: str | Path, *, skip_damaged: bool = False) -> tuple[dict[str, Any], list[dict[str, Any]],
                                                                            list[Damage]]:
    """(manifest, committed records, damaged lines) of the store at `path`, for readers that need no tensors. Damaged
    lines are an error naming them and the fix, unless `skip_damaged`."""
    path = Path(path)
    manifest = read_manifest(path)
    try:
        data = (path / JOURNAL).read_bytes()
    except FileNotFoundError:
        raise CorruptStoreError(f"{path / JOURNAL} is missing; the store is incomplete") from None
    with collector_paused():  # a million records at 10^6 edits (sola/bulk.py)
        records, _, damage = parse_journal(data)
    if damage and not skip_damaged:
        raise CorruptStoreError(damage_message(path, damage))
    return manifest, records, damage
