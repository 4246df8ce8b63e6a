"""The journal and the manifest of a store, read without torch or the model: what `sola list` and `sola info` need,
and what `sola.store.Store` builds on. See `sola.store` for the layout and the commit protocol."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import CorruptStoreError, StoreError

FORMAT_VERSION = 1
MANIFEST, JOURNAL, TENSORS, INDEX = "manifest.json", "edits.jsonl", "tensors", "index"
MANIFEST_BACKUP, QUARANTINE = "manifest.json.bak", "quarantine"
OPS = ("edit", "rollback", "repair")


_EDIT_ID = re.compile(r"e(\d+)")


def id_number(edit_id: str) -> int:
    """The number of an edit id ("e12" -> 12); 0 for an id of another form."""
    match = _EDIT_ID.fullmatch(edit_id) if isinstance(edit_id, str) else None
    return int(match.group(1)) if match else 0


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
    lines = committed.split(b"\n")[:-1]
    try:  # one parse of the whole journal; line by line only to find damaged lines
        records = json.loads(b"[" + b",".join(lines) + b"]") if lines else []
        numbered = list(enumerate(records, start=first_line)) if len(records) == len(lines) else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        numbered = None
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
    records, _, damage = parse_journal(data)
    if damage and not skip_damaged:
        raise CorruptStoreError(damage_message(path, damage))
    return manifest, records, damage
