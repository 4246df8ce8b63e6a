"""Opening a store in bulk: the journal parsed in one pass (and read the slow way where the fast one cannot), an
opened editor's edits kept as journal lines, the key index checked for edits indexed twice, and the collector paused
only while the records are made. The figures these buy at 10^6 edits are in docs/performance.md."""

from __future__ import annotations

import gc
import json
import math
import shutil

import pytest
import torch
from conftest import UNRELATED

from sola import Editor
from sola.bulk import collector_paused
from sola.errors import CorruptStoreError
from sola.integrity import check_store, repair_store
from sola.journal import JournalLines, parse_journal
from sola.key_index import KeyIndex
from sola.store import Store

EDITS = [("Who founded Acme?", "Jane Roe"), ("Which river flows through Cairo?", "the Danube"),
         ("What colour is the sky?", "green"), ("Who wrote Hamlet?", "Bill Lumbergh"),
         ("Where is the Louvre?", "Oslo")]


def _lines(records: list) -> bytes:
    return b"".join((json.dumps(r, sort_keys=True) + "\n").encode() for r in records)


def test_the_journal_parses_the_same_in_one_pass_and_line_by_line():
    records = [{"op": "edit", "id": f"e{n}", "prompts": [f"p{n}", "ü \n \\ \""], "target": "t", "loss": 0.5}
               for n in range(1, 6)] + [{"op": "rollback", "id": "e2", "at": "now"}]
    data = _lines(records) + b'{"op": "edit", "id": "e9", "pro'  # a torn last line: not committed
    parsed, length, damage = parse_journal(data)
    assert parsed == records and damage == [] and length == len(_lines(records))
    lines = JournalLines(data, length)
    assert len(lines) == len(records) and [lines.record(n) for n in range(len(lines))] == records
    assert lines.records() == records

    # what the fast parser refuses and the standard library writes: NaN, an integer past 64 bits
    odd = records[:2] + [{"op": "edit", "id": "e7", "prompts": ["x"], "target": "y", "loss": float("nan"),
                          "steps": 2 ** 70}]
    parsed, _, damage = parse_journal(_lines(odd))
    assert damage == [] and parsed[:2] == odd[:2] and math.isnan(parsed[2]["loss"]) and parsed[2]["steps"] == 2 ** 70
    assert math.isnan(JournalLines(_lines(odd), len(_lines(odd))).record(2)["loss"])

    # damage is still found line by line: two values on one line, an empty line, a repeated id, a record without id
    bad = _lines(records[:2]) + b'{"op": "rollback", "id": "e1"} {"op": "rollback", "id": "e2"}\n\n' \
        + _lines([records[0], {"op": "edit", "prompts": ["p"], "target": "t"}])
    parsed, _, damage = parse_journal(bad)
    assert parsed == records[:2]
    assert [(d.kind, d.line) for d in damage] == [("journal-line", 3), ("journal-line", 4), ("duplicate-id", 5),
                                                  ("journal-line", 6)]


def test_an_opened_editor_keeps_its_edits_as_journal_lines_and_reads_them_back_the_same(make_editor, tmp_path):
    store = tmp_path / "store"
    editor = make_editor("llama", store=store)
    for prompt, target in EDITS[:4]:
        editor.edit(prompt, target)
    editor.edit("Who founded Acme?", "John Doe", supersedes="e1")
    editor.rollback("e3")
    tracked = _journal_dicts()
    reopened = make_editor("llama", store=store)
    assert _journal_dicts() == tracked  # no record of the opened journal stays a dict (nor a tracked object)
    keys = sum(len(e.prompts) for e in editor.edits())
    assert reopened.ledger.key_count == keys == len(reopened.table)  # counted from the lines, building no Edit
    assert [e.to_dict() for e in reopened.edits(include_rolled_back=True)] \
        == [e.to_dict() for e in editor.edits(include_rolled_back=True)]
    assert [e.id for e in reopened.chain("e1")] == ["e1", "e5"]
    for prompt in [p for p, _ in EDITS] + UNRELATED:
        assert torch.equal(reopened.logits(prompt), editor.logits(prompt))
    assert reopened.store.journal() == editor.store.journal()  # parsed again from the lines it kept
    assert reopened.ledger.key_count == keys  # now from the Edits built above
    assert reopened.store.next_id() == "e6"  # worked out when first asked: no reader needs it
    reopened.edit(*EDITS[4])
    assert [r["id"] for r in Store.open(store).journal() if r["op"] == "edit"][-1] == "e6"


def _journal_dicts() -> int:
    """Tracked dicts that look like journal records of edits (prompts are lists: such dicts are tracked)."""
    gc.collect()
    return sum(1 for o in gc.get_objects() if type(o) is dict and o.get("op") == "edit" and "prompts" in o)


def test_an_index_file_that_indexes_edits_again_is_damage_that_repair_moves_aside(make_editor, tmp_path,
                                                                                    monkeypatch):
    import sola.store

    monkeypatch.setattr(sola.store, "INDEX_EVERY", 2)
    store = tmp_path / "store"
    editor = make_editor("llama", store=store)
    for prompt, target in EDITS[:4]:
        editor.edit(prompt, target)
    shutil.copy(store / "index" / "000001.safetensors", store / "index" / "000003.safetensors")
    with pytest.raises(CorruptStoreError, match="indexes edits again that are indexed before it"):
        Store.open(store)
    assert [d.path for d in check_store(store).damage] == ["index/000003.safetensors"]
    repair_store(store)
    assert check_store(store).ok
    reopened = make_editor("llama", store=store)
    assert torch.equal(reopened.table.keys, editor.table.keys)

    from safetensors.torch import save_file  # an index whose ids are a number, not a list: damage, not a crash
    save_file({"keys": torch.zeros(1, 4), "owner": torch.zeros(1, dtype=torch.long)},
              str(store / "index" / "000004.safetensors"), metadata={"ids": "5"})
    with pytest.raises(CorruptStoreError, match="its ids are not all edit ids"):
        Store.open(store)


def test_a_writer_notices_an_index_file_written_again_under_a_name_it_has_seen(tmp_path):
    """A repair moves an index file aside and another process reuses its number: this process must see that those
    edits are indexed now, or it would index them a second time."""
    (tmp_path / "index").mkdir()
    keys = {f"e{n}": torch.randn(1, 4) for n in range(1, 5)}
    mine, theirs = KeyIndex(tmp_path), KeyIndex(tmp_path)
    for edit_id in ("e1", "e2"):
        mine.committed(edit_id, keys[edit_id])
    mine.write(keys.__getitem__)  # 000001: e1, e2
    mine.committed_many(["e3", "e4"])
    (tmp_path / "moved").mkdir()
    (tmp_path / "index" / "000001.safetensors").rename(tmp_path / "moved" / "000001.safetensors")
    theirs.committed_many(["e3", "e4"])
    theirs.write(keys.__getitem__)  # 000001 again, now with e3, e4
    mine.sync()
    assert mine.pending_ids() == []


def test_the_collector_is_paused_inside_and_left_as_it_was_after():
    assert gc.isenabled()
    with pytest.raises(RuntimeError), collector_paused():
        assert not gc.isenabled()
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # an inner block leaves the outer pause alone
        raise RuntimeError
    assert gc.isenabled()
    gc.disable()
    try:
        with collector_paused():
            pass
        assert not gc.isenabled()  # a caller that paused it keeps it paused
    finally:
        gc.enable()


def test_a_store_opened_with_damage_skipped_keeps_its_records_and_its_ids(make_editor, tmp_path):
    store = tmp_path / "store"
    editor = make_editor("llama", store=store)
    for prompt, target in EDITS[:3]:
        editor.edit(prompt, target)
    with open(store / "edits.jsonl", "ab") as handle:
        handle.write(b"not a record\n")
    opened = Editor.from_pretrained(editor.source, config=editor.config, store=store, skip_damaged=True)
    assert [e.id for e in opened.edits()] == ["e1", "e2", "e3"] and opened.store.read_only
    assert [r["id"] for r in opened.store.journal()] == ["e1", "e2", "e3"] and opened.store.next_id() == "e4"
