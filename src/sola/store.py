"""Durable state on disk: a JSON manifest, an append-only JSON-lines journal and one safetensors file per edit.

    STORE/manifest.json        format version, method, config, base-model fingerprint (written atomically; a copy in
                               manifest.json.bak, from which `sola fsck --repair` restores a damaged manifest)
    STORE/edits.jsonl          one JSON object a line: {"op": "edit", ...}, {"op": "rollback", "id": ...} or
                               {"op": "repair", ...} (what `sola fsck --repair` moved aside, and the last id ever used)
    STORE/tensors/ID.safetensors   the edit's LoRA factors per layer and its routing keys; its metadata names the edit
                                   and a digest of its record, so a file can never pass for another edit's
    STORE/index/NNNNNN.safetensors the routing keys of 1,000 consecutive edits in one file, so opening a store reads a
                                   few files instead of one per edit (sola/key_index.py)
    STORE/lock                 the write lock (see sola.locking); STORE/quarantine/ what a repair moved aside

A commit is durable before the call that made it returns. Every change happens under the store's write lock: the writer
first reads the journal lines other processes committed since it last looked (so ids come from the whole journal),
writes the edit's tensors (temp file, fsync, rename, fsync of the directory) and then appends its journal line (write,
fsync): the journal line is the commit point. A crash before it leaves an orphan tensor file that nothing refers to; a
crash during it leaves a last line without its newline, which is not a commit and which the next writer, holding the
lock, cuts off. Nothing else is ever truncated. Readers take no lock: they read complete lines only, and a line is
written only after the files it names. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .bulk import collector_paused
from .errors import CorruptStoreError, ReadOnlyStoreError, StoreError, StoreExistsError
from .files import atomic_write, fsync_dir
from .journal import (
    FORMAT_VERSION,
    JOURNAL,
    MANIFEST,
    MANIFEST_BACKUP,
    TENSORS,
    Damage,
    JournalLines,
    damage_message,
    id_number,
    parse_journal,
    read_manifest,
    record_digest,
)
from .key_index import KeyIndex
from .locking import DEFAULT_WAIT, LOCK, QUEUE, StoreLock

INDEX_EVERY = 1000  # edits per key-index file


class Store:
    """One store directory. Use `Store.create` or `Store.open`; both check the files before anything is changed.

    Many processes may use one store: changes are made inside `writing()` (one writer at a time, see
    `sola.locking`), and `refresh()` reads what other processes committed since."""

    def __init__(self, path: Path, manifest: dict[str, Any], *, lock_wait: float = DEFAULT_WAIT) -> None:
        self.path, self.manifest = Path(path), manifest
        self.read_only = False  # set when opened with damage skipped: only `sola fsck --repair` may change it then
        self.damage: list[Damage] = []  # what opening found and skipped
        self._lock = StoreLock(self.path, lock_wait)
        # the records read at open (until an editor takes them), their lines (each record one line: no damage), and
        # the records read or written after them
        self._opened: list[dict[str, Any]] | None = None
        self._opened_lines: JournalLines | None = None
        self._journal: list[dict[str, Any]] = []
        self._ids: set[str] = set()  # edit ids in the journal
        self._last_id: int | None = 0  # the highest edit number ever used; None: not worked out yet (`last_id`)
        self._repaired_id = 0  # the highest a repair record remembers (of edits it quarantined)
        self._lines = 0  # journal lines read, damaged ones included
        self._valid_length = 0
        self._journal_file: tuple[int, int] | None = None  # (device, inode): a repair that rewrites it is noticed
        self._manifest_file = _file_id(self.path / MANIFEST)
        self.index = KeyIndex(self.path)

    @property
    def lock_wait(self) -> float:
        return self._lock.wait

    @lock_wait.setter
    def lock_wait(self, seconds: float) -> None:
        self._lock.wait = seconds

    # -- opening -----------------------------------------------------------------------------------------------------
    @staticmethod
    def exists(path: str | Path) -> bool:
        return (Path(path) / MANIFEST).is_file()

    @classmethod
    def create(cls, path: str | Path, manifest: dict[str, Any], *, lock_wait: float = DEFAULT_WAIT) -> Store:
        """A new, empty store. Raises `StoreExistsError` if another process created the store at `path` first (open it
        instead) and `StoreError` if `path` holds anything else. Made under the lock, journal first: the manifest is
        what makes a directory a store, so a reader never finds a store without its journal."""
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise StoreError(f"cannot create a store at {path}: it is a file; choose a new directory")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StoreError(f"cannot create a store at {path}: {err.strerror}; choose a writable directory") from None
        store = cls(path, {"format_version": FORMAT_VERSION, **manifest}, lock_wait=lock_wait)
        with store._lock:
            if (path / MANIFEST).is_file():
                raise StoreExistsError(f"cannot create a store at {path}: another process created one there; open it")
            if any(p.name not in (LOCK, QUEUE) for p in path.iterdir()):
                raise StoreError(f"cannot create a store at {path}: it exists and is not an empty directory; "
                                 "choose a new directory")
            (path / TENSORS).mkdir()
            (path / JOURNAL).touch()
            store._journal_file = _stat_id(os.stat(path / JOURNAL))
            store._write_manifest(store.manifest)
            fsync_dir(path)
        return store

    @classmethod
    def open(cls, path: str | Path, *, skip_damaged: bool = False, lock_wait: float = DEFAULT_WAIT) -> Store:
        """Open a store. A damaged journal line or key index is an error naming it and the fix, unless
        `skip_damaged`: then the rest opens read-only and `store.damage` lists what was skipped."""
        with collector_paused():  # millions of records at 10^6 edits (sola/bulk.py)
            return cls._open(Path(path), skip_damaged, lock_wait)

    @classmethod
    def _open(cls, path: Path, skip_damaged: bool, lock_wait: float) -> Store:
        store = cls(path, cls.read_manifest(path), lock_wait=lock_wait)
        journal = path / JOURNAL
        try:
            with open(journal, "rb") as handle:
                store._journal_file = _stat_id(os.fstat(handle.fileno()))
                data = handle.read()
        except FileNotFoundError:
            raise CorruptStoreError(f"{journal} is missing; the store is incomplete (if you removed it by mistake, "
                                    f"restore it; `sola fsck --store {path} --repair` cannot recreate it)") from None
        records, store._valid_length, damage = parse_journal(data)
        store._lines = len(records) if not damage else data.count(b"\n", 0, store._valid_length)
        store._last_id = None  # worked out when first needed: a reader never needs it (0.5 s at 10^6 edits)
        if damage:
            store._journal = records
        else:
            store._opened, store._opened_lines = records, JournalLines(data, store._valid_length)
        made = store._take(records, pending=False)
        index_damage = store.index.read(store._ids)
        if len(made) > store.index.indexed_count:  # every indexed edit is one of `made` (read checks it)
            store.index.committed_many(store.index.unindexed(made))
        if index_damage and not (skip_damaged or damage):
            raise CorruptStoreError(damage_message(path, index_damage[:1]) + " (or delete that file: the keys are also "
                                    "in tensors/)")
        damage += index_damage
        if any(not d.harmless for d in damage):
            if not skip_damaged:
                raise CorruptStoreError(damage_message(path, damage))
            store.read_only = True
        store.damage = damage
        return store

    @staticmethod
    def read_manifest(path: str | Path) -> dict[str, Any]:
        """The manifest alone (what a store holds and was made on), checked."""
        return read_manifest(path)

    def _take(self, records: list[dict[str, Any]], pending: bool = True) -> list[str]:
        """Records read from the journal (at open or by `refresh`) join what this object knows; -> the ids of the edits
        among them. `pending`: their keys are for the next index file (at open: those no index file holds)."""
        made = [record["id"] for record in records if record["op"] == "edit"]
        self._ids.update(made)
        self._repaired_id = max([self._repaired_id, *(int(record.get("last_id") or 0) for record in records
                                                      if record["op"] == "repair")])
        if self._last_id is not None:
            self._last_id = max([self._last_id, self._repaired_id, *map(id_number, made)])
        if pending:
            self.index.committed_many(made)
        return made

    def forget_index(self) -> None:
        """Free the keys read from the index files (once an editor holds them); `read_keys` reads files again."""
        self.index.forget()

    # -- what other processes did ------------------------------------------------------------------------------------
    def changed(self) -> bool:
        """Whether the journal or the manifest on disk differ from what this object has read (one stat each)."""
        try:
            journal = os.stat(self.path / JOURNAL)
        except FileNotFoundError:
            return True
        return (_stat_id(journal) != self._journal_file or journal.st_size != self._valid_length
                or _file_id(self.path / MANIFEST) != self._manifest_file)

    def refresh(self) -> list[dict[str, Any]]:
        """Read the records other processes committed since this object last looked (and the manifest, if it was
        rewritten); -> the new records, oldest first. Takes no lock: it sees complete commits only."""
        return self._catch_up(writer=False)

    def _catch_up(self, writer: bool) -> list[dict[str, Any]]:
        journal = self.path / JOURNAL
        try:
            with open(journal, "rb") as handle:
                stat = os.fstat(handle.fileno())
                if _stat_id(stat) != self._journal_file or stat.st_size < self._valid_length:
                    raise CorruptStoreError(f"{journal} was rewritten since this store was opened (by `sola fsck "
                                            "--repair`?); open the store again")
                handle.seek(self._valid_length)
                data = handle.read() if stat.st_size > self._valid_length else b""
        except FileNotFoundError:
            raise CorruptStoreError(f"{journal} is missing; the store is incomplete") from None
        records, length, damage = parse_journal(data, first_line=self._lines + 1)
        if damage:
            raise CorruptStoreError(damage_message(self.path, damage))
        if writer and len(data) > length:  # under the lock nobody is writing: a torn tail is a crashed writer's
            with open(journal, "r+b") as handle:
                handle.truncate(self._valid_length + length)
                os.fsync(handle.fileno())
        self._valid_length += length
        self._lines += len(records)
        self._journal += records
        self._take(records)
        manifest = _file_id(self.path / MANIFEST)
        if manifest != self._manifest_file:
            self.manifest, self._manifest_file = self.read_manifest(self.path), manifest
        return records

    @contextmanager
    def writing(self) -> Iterator[list[dict[str, Any]]]:
        """Hold the store's write lock (waiting up to `lock_wait` seconds for another writer) and yield the records
        other processes committed since this object last looked: a writer decides what to write only after it has
        seen them. Re-entrant: an inner `writing()` yields nothing new."""
        if self.read_only:
            raise ReadOnlyStoreError(f"the store {self.path} was opened read-only because it is damaged "
                                     f"({len([d for d in self.damage if not d.harmless])} problems); run `sola fsck "
                                     f"--store {self.path} --repair`, then open it again to change it")
        with self._lock:
            if self._lock.nested:
                yield []
                return
            new = self._catch_up(writer=True)
            self.index.sync()
            yield new

    def locked(self) -> StoreLock:
        """The store's write lock alone, as a context manager: no journal is read or cut (`sola fsck --repair` holds
        it on a damaged store, which `writing()` refuses)."""
        return self._lock

    # -- reading -----------------------------------------------------------------------------------------------------
    def journal(self) -> list[dict[str, Any]]:
        """Every committed record this object has read or written, oldest first (those read at open are parsed again
        from their lines once an editor has taken them: `take_opened`)."""
        if self._opened is not None:
            return self._opened + self._journal
        return (self._opened_lines.records() if self._opened_lines is not None else []) + self._journal

    def take_opened(self) -> tuple[list[dict[str, Any]], JournalLines | None]:
        """The records read at open and their lines (None if some lines were damaged), for an editor to replay: this
        object keeps their lines only. Later records come from `refresh`."""
        if self._opened_lines is None:
            return self.journal(), None
        records, self._opened = self._opened, None
        return (records if records is not None else self._opened_lines.records()), self._opened_lines

    @property
    def last_id(self) -> int:
        """The highest edit number ever used in this store (repairs remember those of edits they moved aside)."""
        if self._last_id is None:
            self._last_id = max([self._repaired_id, *map(id_number, self._ids)])
        return self._last_id

    def next_id(self) -> str:
        """The id the next edit gets (ids are never reused, also not those a repair moved aside)."""
        return f"e{self.last_id + 1}"

    def tensor_path(self, edit_id: str) -> Path:
        return self.path / TENSORS / f"{edit_id}.safetensors"

    def read_tensors(self, edit_id: str) -> dict[str, torch.Tensor]:
        def everything(path: Path) -> dict[str, torch.Tensor]:
            with safe_open(path, framework="pt") as handle:
                _check_owner(handle, edit_id, path)
                return {name: handle.get_tensor(name) for name in handle.keys()}

        return self._read(edit_id, everything)

    def read_keys(self, edit_id: str) -> torch.Tensor:
        """Only the routing keys of an edit (its LoRA factors stay on disk): from the key index if it has them."""
        indexed = self.index.keys_of(edit_id)
        if indexed is not None:
            return indexed

        def keys_only(path: Path) -> torch.Tensor:
            with safe_open(path, framework="pt") as handle:
                _check_owner(handle, edit_id, path)
                return handle.get_tensor("keys").clone()  # a copy: a view would keep the file mapped

        return self._read(edit_id, keys_only)

    def read_keys_many(self, edit_ids: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The routing keys of these edits stacked in the given order, and how many rows each edit has. Indexed edits
        are gathered from the key index in one step; the others are read from their own files."""
        return self.index.gather(edit_ids, self.read_keys)

    def _read(self, edit_id: str, read):
        """read(path of the edit's tensor file), with a missing or unreadable file named as store damage."""
        path = self.tensor_path(edit_id)
        if not path.is_file():
            raise CorruptStoreError(f"{path} is missing but {self.path / JOURNAL} records edit {edit_id}; "
                                    f"run `sola fsck --store {self.path} --repair`")
        try:
            return read(path)
        except CorruptStoreError:
            raise
        except (SafetensorError, OSError, RuntimeError, ValueError) as err:
            raise CorruptStoreError(f"{path} is not a readable safetensors file ({err}); the store is damaged: run "
                                    f"`sola fsck --store {self.path} --repair`") from None

    # -- committing --------------------------------------------------------------------------------------------------
    def commit_edit(self, record: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        """Write an edit's tensors, then its journal line (the commit point). Call it inside `writing()` after
        taking the id from `next_id()`; outside, it takes the lock itself."""
        with self.writing():
            if record["id"] in self._ids or id_number(record["id"]) <= self.last_id:
                raise StoreError(f"edit id {record['id']} is taken in {self.path} (the next free id is "
                                 f"{self.next_id()}); ids come from Store.next_id() inside Store.writing()")
            path = self.tensor_path(record["id"])
            metadata = {"edit": record["id"], "record": record_digest(record)}
            atomic_write(path, lambda t: save_file({k: v.contiguous() for k, v in tensors.items()}, str(t),
                                                   metadata=metadata))
            self._append({"op": "edit", **record})
            self._ids.add(record["id"])
            self._last_id = id_number(record["id"])
            self.index.committed(record["id"], tensors["keys"].detach().clone())
            if self.index.pending_count >= INDEX_EVERY:
                try:
                    self.index.write(self.read_keys)
                except (OSError, RuntimeError, StoreError):  # the edit is committed; its keys stay in its own file
                    pass

    def commit_rollback(self, edit_id: str, at: str, reason: str | None = None) -> None:
        record = {"op": "rollback", "id": edit_id, "at": at}
        if reason:
            record["reason"] = reason
        with self.writing():
            self._append(record)

    def update_manifest(self, changes: dict[str, Any]) -> None:
        """Merge `changes` into the manifest on disk (re-read under the lock: another writer's change is kept)."""
        with self.writing():
            manifest = {**self.manifest, **changes}
            self._write_manifest(manifest)
            self.manifest = manifest

    def _write_manifest(self, manifest: dict[str, Any]) -> None:
        text = json.dumps(manifest, indent=2, sort_keys=True)
        atomic_write(self.path / MANIFEST, lambda t: t.write_text(text))
        atomic_write(self.path / MANIFEST_BACKUP, lambda t: t.write_text(text))
        self._manifest_file = _file_id(self.path / MANIFEST)

    def _append(self, record: dict[str, Any]) -> None:
        assert self._lock.locked, "journal lines are written under the store's lock"
        line = (json.dumps(record, sort_keys=True) + "\n").encode()
        try:
            with open(self.path / JOURNAL, "r+b") as handle:
                handle.seek(self._valid_length)  # the end: under the lock, `_catch_up` has read every line before it
                handle.write(line)
                handle.truncate()
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as err:
            raise StoreError(f"could not write {self.path / JOURNAL}: {err}") from err
        self._valid_length += len(line)
        self._lines += 1
        self._journal.append(record)


def _check_owner(handle, edit_id: str, path: Path) -> None:
    """A tensor file names the edit it was written for (files from before that metadata name none)."""
    owner = (handle.metadata() or {}).get("edit")
    if owner is not None and owner != edit_id:
        raise CorruptStoreError(f"{path} holds the tensors of edit {owner}, not of {edit_id}; the store is damaged: "
                                f"run `sola fsck --store {path.parent.parent} --repair`")


def _stat_id(stat: os.stat_result) -> tuple[int, int]:
    return stat.st_dev, stat.st_ino


def _file_id(path: Path) -> tuple[int, int, int] | None:
    """What changes when a file is replaced (atomic_write makes a new inode) or rewritten."""
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns, stat.st_size
