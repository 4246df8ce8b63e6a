"""A store's key index: the routing keys of 1,000 consecutive edits in one file (STORE/index/NNNNNN.safetensors), so
opening a store of 100,000 edits reads a hundred files instead of one per edit.

An index file is written once the edits it holds are committed, atomically, so a crash leaves their keys readable from
their own tensor files; every key in it is also in its edit's file. A file that cannot be read, or that names an edit
the journal does not hold, is damage: the keys are read from the edits' own files instead.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .files import atomic_write
from .journal import INDEX, Damage

ReadKeys = Callable[[str], torch.Tensor]  # an edit id -> its keys, from its own tensor file


class KeyIndex:
    """The index files of one store: the keys read from them at open (every indexed edit's rows, edit after edit, in
    one matrix), and the edits committed since the last file (whose keys the next file will hold)."""

    def __init__(self, store_path: Path) -> None:
        self.directory = Path(store_path) / INDEX
        self._keys = torch.zeros(0, 0)
        self._place: dict[str, int] = {}  # edit id -> its place among the indexed edits read at open
        self._start = torch.zeros(0, dtype=torch.long)  # place -> its first row in _keys
        self._count = torch.zeros(0, dtype=torch.long)  # place -> how many rows it has
        self._pending: dict[str, torch.Tensor | None] = {}  # edits after the last index file -> keys if known
        self._seen: dict[str, int] = {}  # index files seen: name -> inode (a file written again under a seen name is
        #                                  new: a repair may move one aside and another process reuse its number)

    def _files(self) -> dict[str, int]:
        """The index files now: name -> inode, in name order. One directory read (no per-file stat): every commit
        looks, and at 10^6 edits the directory holds 1,000 files."""
        try:
            with os.scandir(self.directory) as entries:
                found = {e.name: e.inode() for e in entries if e.name[:1].isdigit() and e.name.endswith(".safetensors")}
        except FileNotFoundError:
            return {}
        return dict(sorted(found.items()))

    # -- what is indexed ---------------------------------------------------------------------------------------------
    def indexed_ids(self) -> list[str]:
        """The edits whose keys were read from index files (until `forget`)."""
        return list(self._place)

    def pending_ids(self) -> list[str]:
        """The edits committed after the last index file."""
        return list(self._pending)

    @property
    def pending_count(self) -> int:
        """How many edits the next index file would hold."""
        return len(self._pending)

    def committed(self, edit_id: str, keys: torch.Tensor | None = None) -> None:
        """An edit joined the journal (with its keys, if this process wrote it)."""
        self._pending[edit_id] = keys

    def committed_many(self, edit_ids: list[str]) -> None:
        """Edits other processes committed (their keys are in their files)."""
        self._pending.update(dict.fromkeys(edit_ids))

    # -- reading -----------------------------------------------------------------------------------------------------
    def read(self, known: set[str]) -> list[Damage]:
        """Read every index file (at open, before any edit is pending); -> the damage found (files that cannot be read,
        name edits not in `known`, the journal's edits, or index an edit an earlier file indexes)."""
        assert not self._pending, "index files are read at open; pending edits are those they do not hold"
        keys, counts, damage = [], [], []
        for name, inode in self._files().items():
            self._seen[name], path = inode, self.directory / name
            try:
                ids, part, count = read_index_file(path, known, self._place.keys())
            except ValueError as err:
                damage.append(Damage("index", f"{INDEX}/{path.name}", f"{INDEX}/{path.name} is not a readable key "
                                     f"index of this store ({err})"))
                continue
            self._place.update(zip(ids, range(len(self._place), len(self._place) + len(ids))))
            keys.append(part)
            counts.append(count)
        if keys:
            self._keys = torch.cat(keys) if len(keys) > 1 else keys[0].clone()  # a copy: a view keeps a file mapped
            self._count = torch.cat(counts)
            self._start = self._count.cumsum(0) - self._count
        return damage

    def sync(self) -> None:
        """Index files other processes wrote: their edits are indexed already (this process need not write them)."""
        for name, inode in self._files().items():
            if self._seen.get(name) != inode:
                self._seen[name], path = inode, self.directory / name
                try:
                    with safe_open(path, framework="pt") as handle:
                        ids = json.loads(handle.metadata()["ids"])
                except (SafetensorError, OSError, ValueError, KeyError, TypeError):
                    continue  # a damaged index is fsck's business; these edits' keys stay in their own files
                for edit_id in ids:
                    self._pending.pop(edit_id, None)

    def forget(self) -> None:
        """Free the keys read at open (once an editor holds them); reads go to the edits' own files again."""
        self._keys, self._place = torch.zeros(0, 0), {}
        self._start = self._count = torch.zeros(0, dtype=torch.long)

    @property
    def indexed_count(self) -> int:
        """How many edits' keys were read from index files (until `forget`)."""
        return len(self._place)

    def unindexed(self, edit_ids: list[str]) -> list[str]:
        """Those of these edits whose keys were not read from an index file (until `forget`)."""
        return [edit_id for edit_id in edit_ids if edit_id not in self._place]

    def keys_of(self, edit_id: str) -> torch.Tensor | None:
        """An indexed edit's keys, None if they were not read from an index file."""
        place = self._place.get(edit_id)
        if place is None:
            return None
        start = int(self._start[place])
        return self._keys[start:start + int(self._count[place])]

    def gather(self, edit_ids: list[str], read_own: ReadKeys) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys of these edits stacked in the given order, and how many rows each has: indexed edits gathered in
        one step, the others read with `read_own`. Asked for every indexed edit in index order (a store opened with
        nothing rolled back), the keys read at open are returned as they are, not copied: do not change them."""
        if len(edit_ids) == len(self._place) and edit_ids == list(self._place):  # one comparison of the strings
            return self._keys, self._count.clone()
        places = [self._place.get(i, -1) for i in edit_ids]
        own = {n: read_own(edit_ids[n]) for n, p in enumerate(places) if p < 0}
        indexed = torch.tensor([n for n, p in enumerate(places) if p >= 0], dtype=torch.long)
        at = torch.tensor([p for p in places if p >= 0], dtype=torch.long)
        counts = torch.zeros(len(edit_ids), dtype=torch.long)
        counts[indexed] = self._count[at]
        for n, keys in own.items():
            counts[n] = keys.shape[0]
        if not own and len(at):  # indexed edits only: one gather
            return self._keys[_ranges(self._start[at], counts)], counts
        dim = self._keys.shape[1] if len(at) else next(iter(own.values())).shape[1] if own else 0
        out = torch.empty(int(counts.sum()), dim)  # every row is written below
        starts = counts.cumsum(0) - counts
        if len(at):
            out[_ranges(starts[indexed], counts[indexed])] = self._keys[_ranges(self._start[at], counts[indexed])]
        for n, keys in own.items():
            out[int(starts[n]):int(starts[n]) + keys.shape[0]] = keys
        return out, counts

    # -- writing -----------------------------------------------------------------------------------------------------
    def write(self, read_own: ReadKeys) -> None:
        """One index file with the keys of the pending edits (under the store's lock, after their commits)."""
        ids = list(self._pending)
        keys = [k if k is not None else read_own(i) for i, k in self._pending.items()]
        owner = torch.cat([torch.full((len(k),), n, dtype=torch.long) for n, k in enumerate(keys)])
        self.directory.mkdir(exist_ok=True)
        number = max((int(n.split(".")[0]) for n in self._seen if n.split(".")[0].isdigit()), default=0) + 1
        path = self.directory / f"{number:06d}.safetensors"
        atomic_write(path, lambda t: save_file({"keys": torch.cat(keys).contiguous(), "owner": owner}, str(t),
                                               metadata={"ids": json.dumps(ids)}))
        self._seen[path.name] = os.stat(path).st_ino
        self._pending = {}


def read_index_file(path: Path, known: set[str], earlier: AbstractSet[str] = frozenset()) -> tuple[
        list[str], torch.Tensor, torch.Tensor]:
    """(edit ids, their key rows, rows per edit) of one index file; ValueError if it cannot be read or indexes an edit
    that is not `known` (the journal's edits: the file belongs to something else) or that an `earlier` file indexes
    (each edit's keys are in one index file: a second would misplace the rows after it). The rows may be a view of
    the mapped file: copy them to keep them."""
    try:
        with safe_open(path, framework="pt") as handle:
            ids = json.loads(handle.metadata()["ids"])
            part, owner = handle.get_tensor("keys"), handle.get_tensor("owner")
    except (SafetensorError, OSError, RuntimeError, ValueError, KeyError, TypeError) as err:
        raise ValueError(str(err) or type(err).__name__) from None
    if not isinstance(ids, list) or set(map(type, ids)) - {str}:  # before len(ids): a number has none
        raise ValueError("its ids are not all edit ids")
    if owner.shape != part.shape[:1] or (len(owner) and not bool((owner[1:] >= owner[:-1]).all())):
        raise ValueError("its owner column does not match its keys")
    count = torch.bincount(owner, minlength=len(ids))
    if len(count) != len(ids):
        raise ValueError("it names fewer edits than own its keys")
    named = set(ids)
    if len(named) != len(ids) or not earlier.isdisjoint(named):
        repeated = [i for n, i in enumerate(ids) if i in earlier or i in ids[:n]]
        raise ValueError(f"it indexes edits again that are indexed before it ({repeated[:3]})")
    if not named <= known:
        unknown = [i for i in ids if i not in known]
        raise ValueError(f"it indexes edits the journal does not record ({unknown[:3]}); it does not belong to this "
                         "store")
    return ids, part, count


def _ranges(starts: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """The row numbers of the ranges [start, start + count), one range after another."""
    total = int(counts.sum())
    offsets = torch.repeat_interleave(starts - (counts.cumsum(0) - counts), counts, output_size=total)
    return offsets + torch.arange(total)
