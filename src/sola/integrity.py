"""Checking a store for damage and repairing it: `Store.check` / `sola fsck` and `repair` / `sola fsck --repair`.

A repair never deletes anything. What cannot be read is moved aside into `STORE/quarantine/<time>/` (with a
report.json saying what was moved and why), and the journal says what happened to each edit it loses:

- a journal line that does not parse (or is not a record) is moved into the quarantine and the journal is rewritten
  without it (atomically; it is the only change that rewrites the journal);
- an edit whose tensor file is missing, unreadable or belongs to another record is rolled back by a journal line that
  gives the reason (its file, if any, goes into the quarantine), so it lists as rolled back and its id is never reused;
- a key index file that cannot be read, or is not this store's, is moved aside (every key is also in its edit's file);
- orphan tensor files (written by a writer that crashed before its journal line) and temp files are moved aside;
- a torn last journal line (an interrupted, uncommitted write) is cut off;
- a damaged manifest is restored from its copy `manifest.json.bak` when that copy is readable.

The repair runs under the store's write lock, so no writer is half-way through a change while it looks.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

from .edit import now
from .errors import CorruptStoreError, StoreError
from .files import atomic_write
from .journal import (
    INDEX,
    JOURNAL,
    MANIFEST,
    MANIFEST_BACKUP,
    QUARANTINE,
    TENSORS,
    Damage,
    id_number,
    manifest_problem,
    parse_journal,
    record_digest,
)
from .key_index import read_index_file
from .store import Store

_EDIT_FILE = re.compile(r"(e\d+)\.safetensors")


@dataclass
class StoreReport:
    """What `check_store` found: every damaged or untidy part, and what the journal holds."""

    path: Path
    damage: list[Damage] = field(default_factory=list)
    edits: int = 0  # edit records in the journal
    live: int = 0
    repaired: list[str] = field(default_factory=list)  # what a repair did, one sentence each
    quarantine: str | None = None  # where a repair moved things (relative to the store)

    @property
    def ok(self) -> bool:
        """No damage that affects a committed edit (orphans and a torn uncommitted line are harmless)."""
        return not any(not d.harmless for d in self.damage)

    @property
    def unreachable(self) -> list[str]:
        """Edits that cannot be used as they are."""
        return sorted({d.edit_id for d in self.damage if d.edit_id and not d.harmless}, key=id_number)

    def to_dict(self) -> dict[str, Any]:
        return {"store": str(self.path), "ok": self.ok, "edits": self.edits, "live": self.live,
                "unreachable": self.unreachable, "damage": [asdict(d) for d in self.damage],
                "repaired": self.repaired, "quarantine": self.quarantine}

    def describe(self) -> str:
        lines = [f"{self.path}: {self.edits} edits in the journal, {self.live} live"]
        for d in self.damage:
            lines.append(f"  {'note' if d.harmless else 'DAMAGE'}: {d.message}")
        if not self.damage:
            lines.append("  no damage found")
        elif not self.ok and not self.repaired:
            lines.append(f"  run `sola fsck --store {self.path} --repair` to move what cannot be read aside into "
                         f"{QUARANTINE}/ (nothing is deleted) and open the rest")
        lines += [f"  repaired: {r}" for r in self.repaired]
        return "\n".join(lines)


def check_store(path: str | os.PathLike, *, deep: bool = True) -> StoreReport:
    """Every damaged or untidy part of a store, without changing anything. `deep` also opens every tensor file (each
    live edit's factors and keys are checked against the store's layers and its record); without it, only that the
    files exist."""
    path = Path(path)
    report = StoreReport(path)
    if not (path / MANIFEST).is_file() and not (path / JOURNAL).is_file():
        raise StoreError(f"there is no store at {path} (no {MANIFEST}, no {JOURNAL}); check the path")
    manifest = None
    problem = manifest_problem(path / MANIFEST) if (path / MANIFEST).is_file() else "is missing"
    if problem:
        backup_ok = (path / MANIFEST_BACKUP).is_file() and manifest_problem(path / MANIFEST_BACKUP) is None
        report.damage.append(Damage("manifest", MANIFEST, f"{MANIFEST} {problem}"
                                    + (f" (its copy {MANIFEST_BACKUP} is readable)" if backup_ok else "")))
        if backup_ok:
            manifest = json.loads((path / MANIFEST_BACKUP).read_text())
    else:
        manifest = json.loads((path / MANIFEST).read_text())
    layers = list((manifest or {}).get("config", {}).get("layers") or [])
    if not (path / JOURNAL).is_file():
        report.damage.append(Damage("journal-missing", JOURNAL, f"{JOURNAL} is missing"))
        return report
    data = (path / JOURNAL).read_bytes()
    records, length, damage = parse_journal(data)
    report.damage += damage
    if length < len(data):
        report.damage.append(Damage("torn-tail", JOURNAL, f"{JOURNAL} ends in a torn line ({len(data) - length} bytes "
                                    "of an interrupted write; it is not a commit)", harmless=True))
    made: dict[str, dict[str, Any]] = {}  # parse_journal has left out (as damage) a repeated edit id
    rolled: set[str] = set()
    for record in records:
        if record["op"] == "edit":
            made[record["id"]] = record
        elif record["op"] == "rollback":
            if record["id"] not in made:
                report.damage.append(Damage("unknown-rollback", JOURNAL, f"{JOURNAL}: a rollback of {record['id']}, "
                                            "which the journal does not record before it", harmless=True))
            rolled.add(record["id"])
    report.edits, report.live = len(made), sum(1 for i in made if i not in rolled)
    for edit_id, record in made.items():
        problem = _tensor_problem(path / TENSORS / f"{edit_id}.safetensors", record, layers, deep)
        if problem:
            kind, message = problem
            report.damage.append(Damage(kind, f"{TENSORS}/{edit_id}.safetensors", message, edit_id=edit_id,
                                        harmless=edit_id in rolled))  # a rolled-back edit's file is never read
    report.damage += _index_damage(path, set(made))
    for file in sorted((path / TENSORS).iterdir()) if (path / TENSORS).is_dir() else []:
        match = _EDIT_FILE.fullmatch(file.name)
        if match is None or match.group(1) not in made:
            what = "a temporary file of an interrupted write" if file.name.endswith(".tmp") else \
                "a tensor file no journal line refers to (a writer stopped before its commit)"
            report.damage.append(Damage("orphan", f"{TENSORS}/{file.name}", f"{TENSORS}/{file.name}: {what}",
                                        harmless=True))
    return report


def _tensor_problem(file: Path, record: dict[str, Any], layers: list[str], deep: bool) -> tuple[str, str] | None:
    name = f"{TENSORS}/{file.name}"
    if not file.is_file():
        return "tensors-missing", f"{name} is missing (edit {record['id']})"
    if not deep:
        return None
    try:
        with safe_open(file, framework="pt") as handle:
            names, metadata = set(handle.keys()), handle.metadata() or {}
            keys = handle.get_tensor("keys") if "keys" in names else None
            for key in names:  # reads every tensor: a truncated file fails here
                handle.get_tensor(key)
    except (SafetensorError, OSError, RuntimeError, ValueError) as err:
        return "tensors-unreadable", f"{name} is not a readable safetensors file ({err})"
    wanted = ["keys"] + [f"{layer}.{p}" for layer in layers for p in ("lora_A", "lora_B")]
    missing = [n for n in wanted if n not in names]
    if missing:
        return "tensors-unreadable", f"{name} lacks {', '.join(missing[:3])}"
    if keys.ndim != 2 or keys.shape[0] != len(record.get("prompts", ())):
        return "tensors-mismatch", f"{name} holds {keys.shape[0] if keys.ndim == 2 else '?'} keys for an edit of " \
                                   f"{len(record.get('prompts', ()))} prompts"
    if metadata.get("edit") not in (None, record["id"]) or metadata.get("record") not in (None, record_digest(record)):
        return "tensors-mismatch", f"{name} belongs to another edit than the journal's {record['id']} " \
                                   f"({record.get('prompts', ['?'])[0]!r})"
    return None


def _index_damage(path: Path, known: set[str]) -> list[Damage]:
    found, indexed = [], set()
    directory = path / INDEX
    for file in sorted(directory.glob("*.safetensors")) if directory.is_dir() else []:
        try:
            indexed.update(read_index_file(file, known, indexed)[0])
        except ValueError as err:
            found.append(Damage("index", f"{INDEX}/{file.name}", f"{INDEX}/{file.name} is not a readable key index of "
                                "this store: " + str(err)))
    return found


def repair_store(path: str | os.PathLike) -> StoreReport:
    """Move what cannot be read aside (never deleting anything), so that the rest opens; -> the report of what was
    found, with `repaired` saying what was done. A store without damage is left as it is (a torn tail is cut)."""
    path = Path(path)
    found = check_store(path)
    if any(d.kind == "journal-missing" for d in found.damage):
        raise CorruptStoreError(f"{path / JOURNAL} is missing: there is no record of the edits to repair from; "
                                "restore it from a copy of the store")
    manifest_damage = [d for d in found.damage if d.kind == "manifest"]
    if manifest_damage:
        backup = path / MANIFEST_BACKUP
        if not backup.is_file() or manifest_problem(backup) is not None:
            raise CorruptStoreError(f"{manifest_damage[0].message} and it has no readable copy ({MANIFEST_BACKUP}); "
                                    "restore it from a copy of the store")
        atomic_write(path / MANIFEST, lambda t: t.write_bytes(backup.read_bytes()))
        found.repaired.append(f"restored {MANIFEST} from {MANIFEST_BACKUP}")
    store = Store.open(path, skip_damaged=True)
    with store.locked():  # the lock only: `writing()` would refuse this damaged store, and must not cut lines yet
        repaired = found.repaired
        found = check_store(path)  # again, now that no writer can be half-way
        found.repaired = repaired
        moving = [d for d in found.damage if d.kind in ("index", "orphan")
                  or (d.kind.startswith("tensors") and not d.harmless)]
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        quarantine = path / QUARANTINE / stamp
        moved = []
        for d in moving:
            source = path / d.path
            if source.exists():
                (quarantine / Path(d.path).parent).mkdir(parents=True, exist_ok=True)
                shutil.move(str(source), str(quarantine / d.path))
                moved.append({"path": d.path, "reason": d.message})
                found.repaired.append(f"moved {d.path} to {QUARANTINE}/{stamp}/ ({d.message})")
        data = (path / JOURNAL).read_bytes()
        records, length, damage = parse_journal(data)
        bad = {d.line for d in damage}  # lines that are not records, or repeat an edit id
        duplicates = any(d.kind == "duplicate-id" for d in damage)
        lines = data[:length].split(b"\n")[:-1]
        kept = b"".join(line + b"\n" for n, line in enumerate(lines, start=1) if n not in bad)
        last_id = max([id_number(r["id"]) for r in records if r["op"] == "edit"]
                      + [int(r.get("last_id") or 0) for r in records if r["op"] == "repair"]
                      + [int(m) for line in lines for m in re.findall(rb'"e(\d+)"', line)]
                      + [id_number(Path(m["path"]).stem) for m in moved], default=0)
        at = now()
        rollbacks = [d for d in found.damage if d.kind.startswith("tensors") and not d.harmless]
        for d in rollbacks:
            kept += (json.dumps({"op": "rollback", "id": d.edit_id, "at": at,
                                 "reason": f"quarantined by repair: {d.message}"}, sort_keys=True) + "\n").encode()
            found.repaired.append(f"rolled back {d.edit_id}: its tensors cannot be used ({d.message})")
        if bad:
            quarantine.mkdir(parents=True, exist_ok=True)
            (quarantine / JOURNAL).write_bytes(b"".join(lines[n - 1] + b"\n" for n in sorted(bad)))
            moved.append({"path": JOURNAL, "lines": sorted(bad), "reason": "lines that are not valid records"
                          + (" or repeat an edit id" if duplicates else "")})
            found.repaired.append(f"moved journal line{'s' if len(bad) > 1 else ''} {', '.join(map(str, sorted(bad)))}"
                                  f" to {QUARANTINE}/{stamp}/{JOURNAL}")
        if moved or rollbacks:
            kept += (json.dumps({"op": "repair", "at": at, "last_id": last_id, "quarantine": f"{QUARANTINE}/{stamp}"},
                                sort_keys=True) + "\n").encode()
            quarantine.mkdir(parents=True, exist_ok=True)
            atomic_write(quarantine / "report.json", lambda t: t.write_text(json.dumps(
                {"at": at, "moved": moved, "rolled_back": [d.edit_id for d in rollbacks]}, indent=2)))
            found.quarantine = f"{QUARANTINE}/{stamp}"
        if kept != data:
            if bad:  # the only rewrite: drop damaged lines (they are in the quarantine now)
                atomic_write(path / JOURNAL, lambda t: t.write_bytes(kept))
            else:  # append-only otherwise: cut a torn tail, add the rollbacks and the repair line
                with open(path / JOURNAL, "r+b") as handle:
                    handle.truncate(length)
                    handle.seek(length)
                    handle.write(kept[length:])
                    os.fsync(handle.fileno())
            if length < len(data):
                found.repaired.append("cut off a torn last journal line (an interrupted, uncommitted write)")
    after = check_store(path)
    after.repaired, after.quarantine = found.repaired, found.quarantine
    return after
