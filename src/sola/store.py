"""Durable state on disk: a JSON manifest, an append-only JSON-lines journal and one safetensors file per edit.

    STORE/manifest.json        format version, method, config, base-model fingerprint (written atomically)
    STORE/edits.jsonl          one JSON object a line: {"op": "edit", ...} or {"op": "rollback", "id": ...}
    STORE/tensors/ID.safetensors   the edit's LoRA factors per layer and its routing keys
    STORE/index/NNNNNN.safetensors the routing keys of 1,000 consecutive edits in one file, so opening a store reads a
                                   few files instead of one per edit (written once those edits are committed)

A commit is durable before the call that made it returns. An edit writes its tensors (temp file, fsync, rename, fsync
of the directory) and then appends its journal line (write, fsync): the journal line is the commit point. A crash
before it leaves an orphan tensor file that nothing refers to; a crash during it leaves a last line without its
newline, which is not a commit and is cut off by the next append. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .errors import CorruptStoreError, StoreError

FORMAT_VERSION = 1
MANIFEST, JOURNAL, TENSORS, INDEX = "manifest.json", "edits.jsonl", "tensors", "index"
INDEX_EVERY = 1000  # edits per key-index file


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write) -> None:
    """write(temp_path) then fsync and rename over `path`: readers see the old file or the new one, never half."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(temp))
        with open(temp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


class Store:
    """One store directory. Use `Store.create` or `Store.open`; both check the files before anything is changed."""

    def __init__(self, path: Path, manifest: dict[str, Any], journal: list[dict[str, Any]], valid_length: int):
        self.path, self.manifest, self._journal, self._valid_length = path, manifest, journal, valid_length
        # the key index as read at open: every indexed edit's key rows, edit after edit, in one matrix
        self._index_keys = torch.zeros(0, 0)
        self._index_pos: dict[str, int] = {}  # edit id -> its place among the indexed edits
        self._index_start = torch.zeros(0, dtype=torch.long)  # place -> its first row in _index_keys
        self._index_count = torch.zeros(0, dtype=torch.long)  # place -> how many rows it has
        self._unindexed: dict[str, torch.Tensor | None] = {}  # edits after the last index file -> keys if known
        self._index_files = 0
        self._read_index()

    # -- opening -----------------------------------------------------------------------------------------------------
    @staticmethod
    def exists(path: str | Path) -> bool:
        return (Path(path) / MANIFEST).is_file()

    @classmethod
    def create(cls, path: str | Path, manifest: dict[str, Any]) -> "Store":
        path = Path(path)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise StoreError(f"cannot create a store at {path}: it exists and is not an empty directory; "
                             "choose a new directory")
        (path / TENSORS).mkdir(parents=True, exist_ok=True)
        manifest = {"format_version": FORMAT_VERSION, **manifest}
        atomic_write(path / MANIFEST, lambda t: t.write_text(json.dumps(manifest, indent=2, sort_keys=True)))
        (path / JOURNAL).touch()
        _fsync_dir(path)
        return cls(path, manifest, [], 0)

    @classmethod
    def open(cls, path: str | Path) -> "Store":
        path = Path(path)
        return cls(path, cls.read_manifest(path), *cls._read_journal(path / JOURNAL))

    @staticmethod
    def read_manifest(path: str | Path) -> dict[str, Any]:
        """The manifest alone (what a store holds and was made on), checked."""
        path = Path(path)
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            raise StoreError(f"{path} is not a store ({MANIFEST} missing); create one with "
                             "Editor.from_pretrained(store=...) or Editor.save(...)")
        try:
            manifest = json.loads(manifest_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CorruptStoreError(f"{manifest_path} is not valid JSON ({err}); restore it from a backup") from None
        if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
            raise CorruptStoreError(f"{manifest_path}: unsupported format_version "
                                    f"{manifest.get('format_version') if isinstance(manifest, dict) else None!r}; "
                                    f"this version of sola reads format {FORMAT_VERSION}")
        return manifest

    @staticmethod
    def _read_journal(path: Path) -> tuple[list[dict[str, Any]], int]:
        if not path.is_file():
            raise CorruptStoreError(f"{path} is missing; the store is incomplete")
        data = path.read_bytes()
        committed = data[: data.rfind(b"\n") + 1]  # a last line without newline is a torn, uncommitted write
        lines = committed.splitlines()
        try:  # one parse of the whole journal; line by line only to name a damaged line
            records = json.loads(b"[" + b",".join(lines) + b"]")
        except (json.JSONDecodeError, UnicodeDecodeError):
            records = None
        if records is None or len(records) != len(lines):
            for number, line in enumerate(lines, start=1):
                try:
                    json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    raise CorruptStoreError(f"{path}, line {number}: not valid JSON; the journal is damaged") from None
            raise CorruptStoreError(f"{path}: the journal is damaged (its lines do not parse as one record each)")
        for number, record in enumerate(records, start=1):
            if not isinstance(record, dict) or record.get("op") not in ("edit", "rollback") or "id" not in record:
                raise CorruptStoreError(f"{path}, line {number}: a record needs 'op' (edit|rollback) and 'id'")
            if record["op"] == "edit" and not ("prompts" in record and "target" in record):
                raise CorruptStoreError(f"{path}, line {number}: an edit record needs 'prompts' and 'target'")
        return records, len(committed)

    def _read_index(self) -> None:
        """Keys of indexed edits from the index files. A file that names an edit the journal does not hold is from
        something else: an error, not a guess."""
        committed = [r["id"] for r in self._journal if r["op"] == "edit"]
        known = set(committed)
        directory = self.path / INDEX
        files = sorted(directory.glob("[0-9]*.safetensors")) if directory.is_dir() else []
        keys, counts = [], []
        for path in files:
            try:
                with safe_open(path, framework="pt") as handle:
                    ids = json.loads(handle.metadata()["ids"])
                    part, owner = handle.get_tensor("keys").clone(), handle.get_tensor("owner")
                if owner.shape != part.shape[:1] or (len(owner) and not bool((owner[1:] >= owner[:-1]).all())):
                    raise ValueError("its owner column does not match its keys")
                count = torch.bincount(owner, minlength=len(ids))
                if len(count) != len(ids):
                    raise ValueError("it names fewer edits than own its keys")
            except (SafetensorError, OSError, RuntimeError, ValueError, KeyError, TypeError) as err:
                raise CorruptStoreError(f"{path} is not a readable key index ({err}); delete it (the keys are also "
                                        "in tensors/) and open the store again") from None
            unknown = [i for i in ids if i not in known]
            if unknown:
                raise CorruptStoreError(f"{path} indexes edits the journal does not record ({unknown[:3]}); it does "
                                        "not belong to this store: delete it and open the store again")
            for edit_id in ids:
                self._index_pos[edit_id] = len(self._index_pos)
            keys.append(part)
            counts.append(count)
        if keys:
            self._index_keys = torch.cat(keys) if len(keys) > 1 else keys[0]
            self._index_count = torch.cat(counts)
            self._index_start = self._index_count.cumsum(0) - self._index_count
        self._index_files = len(files)
        self._unindexed = {i: None for i in committed if i not in self._index_pos}

    def forget_index(self) -> None:
        """Free the keys read from the index files (once an editor holds them); `read_keys` reads files again."""
        self._index_keys, self._index_pos = torch.zeros(0, 0), {}
        self._index_start = self._index_count = torch.zeros(0, dtype=torch.long)

    # -- reading -----------------------------------------------------------------------------------------------------
    def journal(self) -> list[dict[str, Any]]:
        return list(self._journal)

    def tensor_path(self, edit_id: str) -> Path:
        return self.path / TENSORS / f"{edit_id}.safetensors"

    def read_tensors(self, edit_id: str) -> dict[str, torch.Tensor]:
        return self._read(edit_id, load_file)

    def read_keys(self, edit_id: str) -> torch.Tensor:
        """Only the routing keys of an edit (its LoRA factors stay on disk): from the key index if it has them."""
        place = self._index_pos.get(edit_id)
        if place is not None:
            start = int(self._index_start[place])
            return self._index_keys[start:start + int(self._index_count[place])]

        def keys_only(path: Path) -> torch.Tensor:
            with safe_open(path, framework="pt") as handle:
                return handle.get_tensor("keys").clone()  # a copy: a view would keep the file mapped

        return self._read(edit_id, keys_only)

    def read_keys_many(self, edit_ids: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The routing keys of these edits stacked in the given order, and how many rows each edit has. Indexed edits
        are gathered from the key index in one step; the others are read from their own files."""
        places = [self._index_pos.get(i, -1) for i in edit_ids]
        own = {n: self.read_keys(edit_ids[n]) for n, p in enumerate(places) if p < 0}
        indexed = torch.tensor([n for n, p in enumerate(places) if p >= 0], dtype=torch.long)
        at = torch.tensor([p for p in places if p >= 0], dtype=torch.long)
        counts = torch.zeros(len(edit_ids), dtype=torch.long)
        counts[indexed] = self._index_count[at]
        for n, keys in own.items():
            counts[n] = keys.shape[0]
        dim = self._index_keys.shape[1] if len(at) else next(iter(own.values())).shape[1] if own else 0
        out = torch.empty(int(counts.sum()), dim)  # every row is written below
        starts = counts.cumsum(0) - counts
        if len(at):
            out[_ranges(starts[indexed], counts[indexed])] = self._index_keys[_ranges(self._index_start[at],
                                                                                        counts[indexed])]
        for n, keys in own.items():
            out[int(starts[n]):int(starts[n]) + keys.shape[0]] = keys
        return out, counts

    def _read(self, edit_id: str, read):
        """read(path of the edit's tensor file), with a missing or unreadable file named as store damage."""
        path = self.tensor_path(edit_id)
        if not path.is_file():
            raise CorruptStoreError(f"{path} is missing but {self.path / JOURNAL} records edit {edit_id}")
        try:
            return read(path)
        except (SafetensorError, OSError, RuntimeError, ValueError) as err:
            raise CorruptStoreError(f"{path} is not a readable safetensors file ({err}); the store is damaged") from None

    # -- committing --------------------------------------------------------------------------------------------------
    def commit_edit(self, record: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        path = self.tensor_path(record["id"])
        atomic_write(path, lambda t: save_file({k: v.contiguous() for k, v in tensors.items()}, str(t)))
        self._append({"op": "edit", **record})
        self._unindexed[record["id"]] = tensors["keys"].detach().clone()
        if len(self._unindexed) >= INDEX_EVERY:
            try:
                self._write_index()
            except (OSError, RuntimeError, StoreError):  # the edit is committed; its keys stay in its own file
                pass

    def _write_index(self) -> None:
        """One index file with the keys of the edits committed since the last one. Written atomically after those
        commits, so a crash leaves them readable from their own files."""
        ids = list(self._unindexed)
        keys = [k if k is not None else self.read_keys(i) for i, k in self._unindexed.items()]
        owner = torch.cat([torch.full((len(k),), n, dtype=torch.long) for n, k in enumerate(keys)])
        (self.path / INDEX).mkdir(exist_ok=True)
        path = self.path / INDEX / f"{self._index_files + 1:06d}.safetensors"
        atomic_write(path, lambda t: save_file({"keys": torch.cat(keys).contiguous(), "owner": owner}, str(t),
                                               metadata={"ids": json.dumps(ids)}))
        self._index_files += 1
        self._unindexed = {}

    def commit_rollback(self, edit_id: str, at: str) -> None:
        self._append({"op": "rollback", "id": edit_id, "at": at})

    def update_manifest(self, changes: dict[str, Any]) -> None:
        manifest = {**self.manifest, **changes}
        atomic_write(self.path / MANIFEST, lambda t: t.write_text(json.dumps(manifest, indent=2, sort_keys=True)))
        self.manifest = manifest

    def _append(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, sort_keys=True) + "\n").encode()
        try:
            with open(self.path / JOURNAL, "r+b") as handle:
                handle.truncate(self._valid_length)  # drop a torn tail left by a crash
                handle.seek(self._valid_length)
                handle.write(line)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as err:
            raise StoreError(f"could not write {self.path / JOURNAL}: {err}") from err
        self._valid_length += len(line)
        self._journal.append(record)


def _ranges(starts: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """The row numbers of the ranges [start, start + count), one range after another."""
    total = int(counts.sum())
    return torch.repeat_interleave(starts - (counts.cumsum(0) - counts), counts, output_size=total) + torch.arange(total)
