"""Bringing a store's journal into an `Editor`: all at once when it opens the store, and afterwards what other
processes commit (`Editor.refresh`). Both leave the editor's parts (ledger, slots, router, residency) exactly as
making those edits and rollbacks in this editor would have."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from .bulk import collector_paused
from .edit import Edit
from .errors import CorruptStoreError, ModelMismatchError, StoreError
from .fingerprint import describe_mismatch
from .store import Damage, Store, damage_message

if TYPE_CHECKING:
    from .parts import EditorCore


def attach(editor: EditorCore, store: Store, skip_damaged: bool = False) -> None:
    """Check that a store holds SoLA edits of this editor's model and keys, then replay its journal into it."""
    manifest = store.manifest
    if manifest.get("method") != editor.method:
        raise StoreError(f"{store.path} holds edits of method {manifest.get('method')!r}, not {editor.method!r}")
    mismatch = describe_mismatch(manifest.get("model", {}), editor.fingerprint)
    if mismatch:
        raise ModelMismatchError(f"{store.path}: {mismatch}")
    if manifest["model"].get("keys") != editor.fingerprint["keys"]:
        raise ModelMismatchError(f"{store.path}: its keys come from {manifest['model'].get('keys')} but this editor "
                                 f"computes keys with {editor.fingerprint['keys']}; use the same key encoder")
    with collector_paused():  # millions of objects at 10^6 edits (sola/bulk.py)
        open_into(editor, store, skip_damaged)


def open_into(editor: EditorCore, store: Store, skip_damaged: bool = False) -> None:
    """Replay a store's journal into a new editor, in bulk (a few microseconds per edit). Edits whose files cannot be
    read make this an error naming them, or with `skip_damaged` are left out (the store is then read-only)."""
    records, lines = store.take_opened()
    rolled = {r["id"] for r in records if r["op"] == "rollback"}
    live = [r for r in records if r["op"] == "edit" and r["id"] not in rolled]
    # read what is needed before changing anything: every live edit's keys, and the factors of the newest edits that
    # fit in memory (the others are read when an input is routed to them)
    capacity = editor.residency.capacity
    unreadable = _unreadable(store, live, capacity) if skip_damaged or store.damage else []
    skipped = {d.edit_id for d in unreadable}
    try:
        keys, counts, factors, resident = _read_live(store, [r for r in live if r["id"] not in skipped], capacity)
    except CorruptStoreError:
        unreadable = _unreadable(store, live, capacity)
        if not skip_damaged:
            raise CorruptStoreError(damage_message(store.path, unreadable)) from None
        skipped = {d.edit_id for d in unreadable}
        keys, counts, factors, resident = _read_live(store, [r for r in live if r["id"] not in skipped], capacity)
    if unreadable:
        store.damage += [d for d in unreadable if d not in store.damage]
        store.read_only = True
        records = [r for r in records if r.get("id") not in skipped]
        live = [r for r in live if r["id"] not in skipped]
        lines = None  # records left out: they are no longer one a line
    assert not len(editor.ledger), "a store is attached to a new editor only"
    links = editor.ledger.replay(records, lines)  # the records (or their lines) become Edits when asked for
    ids = [r["id"] for r in live]
    slots = editor.slots.add_many(ids)  # live edits take the slots 0..n-1 in creation order
    store.forget_index()  # the keys read from index files are `keys` now, the routing table's in a moment
    if editor.router.keys.needs_subject:
        editor.router.add_many(slots, keys, counts, [r.get("subject") for r in live],
                               [tuple(r.get("aliases") or ()) for r in live],
                               [tuple(r.get("prompts") or ()) if r.get("subject_inferred") else () for r in live],
                               own=True)
    else:  # whole-prompt keys: the router names no subjects
        editor.router.add_many(slots, keys, counts, own=True)
    for slot in slots[len(slots) - resident:]:
        editor.residency.put(slot, factors[ids[slot]], durable=True)
    editor.router.supersede_many([(editor.slots.of(older), editor.slots.of(newer)) for older, newer in links])


def apply(editor: EditorCore, records: list[dict[str, Any]]) -> None:
    """Journal records committed by another process, in order (the editor has looked at its store now)."""
    editor.parts.refreshed = time.monotonic()
    if editor.store is None:
        return
    for record in records:
        if record["op"] == "edit" and record["id"] not in editor.ledger:
            keys = editor.store.read_keys(record["id"])
            edit = Edit.from_dict({**record, "rolled_back": None, "superseded_by": None})
            editor.parts.install(edit, keys, factors=None)  # factors are read when an input routes to it
            older = editor.ledger.live_predecessor(edit.supersedes)
            if older is not None and editor.ledger.successor(older) is None:
                editor.parts.link(older, edit.id)
        elif record["op"] == "rollback" and record["id"] in editor.ledger and editor.ledger.get(record["id"]).live:
            editor.parts.forget(record["id"], record.get("at", ""), record.get("reason"))
    stored = editor.store.manifest.get("config", {})
    changes = {k: stored[k] for k in ("threshold", "unnamed_threshold")
               if k in stored and stored[k] != getattr(editor.config, k)}
    if changes:
        editor.config = editor.config.replace(**changes)


def _read_live(store: Store, live: list[dict[str, Any]], capacity: int | None):
    """(keys, key rows per edit, factors of the resident edits, how many are resident) of these live edits."""
    resident = len(live) if capacity is None else min(capacity, len(live))
    factors = {r["id"]: store.read_tensors(r["id"]) for r in live[len(live) - resident:]}
    keys, counts = store.read_keys_many([r["id"] for r in live])
    return keys, counts, factors, resident


def _unreadable(store: Store, live: list[dict[str, Any]], capacity: int | None) -> list[Damage]:
    """Damage of the live edits' files that opening would read, one per edit (edits skipped by the store's own open,
    e.g. a duplicated id, too)."""
    found = [d for d in store.damage if d.edit_id is not None and not d.harmless]
    named = {d.edit_id for d in found}
    resident = {r["id"] for r in (live if capacity is None else live[max(0, len(live) - capacity):])}
    for record in live:
        if record["id"] in named:
            continue
        try:
            store.read_tensors(record["id"]) if record["id"] in resident else store.read_keys(record["id"])
        except CorruptStoreError as err:
            path = store.tensor_path(record["id"])
            kind = "tensors-missing" if not path.exists() else "tensors-unreadable"
            found.append(Damage(kind, f"tensors/{path.name}", str(err).split(";")[0], edit_id=record["id"]))
    return found
