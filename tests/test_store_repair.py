"""A damaged store: opening names what cannot be read and the fix; --skip-damaged opens the rest read-only;
`sola fsck --repair` moves the damage aside (never deleting it) and the rest opens with its outputs unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import UNRELATED
from test_contract import assert_bit_identical, probe_logits

from sola import CorruptStoreError, StoreError
from sola.cli import main
from sola.errors import ReadOnlyStoreError
from sola.integrity import check_store, repair_store

FACTS = [("Who founded Acme?", "Jane Roe"), ("Which river flows through Cairo?", "the Danube"),
         ("What colour is the sky?", "green")]


def damage(store: Path, kind: str) -> None:
    journal = store / "edits.jsonl"
    lines = journal.read_bytes().split(b"\n")
    if kind == "journal line":
        lines[1] = b'{"op": "edit", "id": "e2", "prom'  # a line in the middle that no longer parses
        journal.write_bytes(b"\n".join(lines))
    elif kind == "missing tensors":
        (store / "tensors" / "e2.safetensors").unlink()
    elif kind == "truncated tensors":
        path = store / "tensors" / "e2.safetensors"
        path.write_bytes(path.read_bytes()[:100])
    elif kind == "another edit's tensors":  # the signature of the old two-writer defect
        (store / "tensors" / "e2.safetensors").write_bytes((store / "tensors" / "e3.safetensors").read_bytes())
    elif kind == "index":
        (store / "index").mkdir(exist_ok=True)
        (store / "index" / "000001.safetensors").write_bytes(b"not an index")
    elif kind == "manifest":
        (store / "manifest.json").write_text("{not json")


KINDS = ["journal line", "missing tensors", "truncated tensors", "another edit's tensors", "index", "manifest"]


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_of_damage_is_named_skipped_and_repaired(make_editor, tmp_path, kind, capsys):
    store = tmp_path / "store"
    editor = make_editor("llama", store=store)
    for prompt, target in FACTS:
        editor.edit(prompt, target)
    intact = ["Who founded Acme?", "What colour is the sky?", *UNRELATED]
    expected = probe_logits(editor, intact)
    damage(store, kind)
    before = {p.relative_to(store): p.read_bytes() for p in store.rglob("*") if p.is_file() and p.name != "lock"}

    loses_e2 = kind not in ("index", "manifest")
    with pytest.raises(CorruptStoreError) as error:
        make_editor("llama", store=store)
    message = str(error.value)
    assert "sola fsck --store" in message and "--repair" in message
    if loses_e2 and kind != "journal line":
        assert "e2" in message
    report = check_store(store)
    assert not report.ok and (report.unreachable == ["e2"] if loses_e2 and kind != "journal line" else True)
    assert main(["fsck", "--store", str(store)]) == 1 and "DAMAGE" in capsys.readouterr().out
    after = {p.relative_to(store): p.read_bytes() for p in store.rglob("*") if p.is_file() and p.name != "lock"}
    assert after == before  # checking and failing to open changed nothing

    if kind != "manifest":  # the rest opens read-only
        skipping = make_editor("llama", store=store, skip_damaged=True)
        assert [e.id for e in skipping.edits()] == (["e1", "e3"] if loses_e2 else ["e1", "e2", "e3"])
        assert_bit_identical(probe_logits(skipping, intact), expected)
        with pytest.raises(ReadOnlyStoreError, match="fsck"):
            skipping.edit("Who wrote Hamlet?", "Bill Lumbergh")

    assert main(["fsck", "--store", str(store), "--repair"]) == 0
    capsys.readouterr()
    assert check_store(store).ok
    quarantined = [p for p in (store / "quarantine").rglob("*") if p.is_file()] if kind != "manifest" else []
    if kind in ("truncated tensors", "another edit's tensors", "index", "journal line"):
        assert any(p.name != "report.json" for p in quarantined)  # moved aside, not deleted
    repaired = make_editor("llama", store=store)
    assert_bit_identical(probe_logits(repaired, intact), expected)
    live = [e.id for e in repaired.edits()]
    assert live == (["e1", "e3"] if loses_e2 else ["e1", "e2", "e3"])
    if loses_e2 and kind != "journal line":
        assert "quarantined by repair" in repaired.get("e2").note and not repaired.get("e2").live
    assert repaired.edit("Who wrote Hamlet?", "Bill Lumbergh").id == "e4"  # ids are never reused


def test_harmless_leftovers_are_notes_and_repair_tidies_them(make_editor, tmp_path):
    store = tmp_path / "store"
    editor = make_editor("llama", store=store)
    editor.edit(*FACTS[0])
    (store / "tensors" / "e2.safetensors").write_bytes(b"a writer died before its journal line")
    with open(store / "edits.jsonl", "ab") as journal:
        journal.write(b'{"op": "rollback", "id": "e1"')
    report = check_store(store)
    assert report.ok and sorted(d.kind for d in report.damage) == ["orphan", "torn-tail"]
    make_editor("llama", store=store)  # opens as it is
    repaired = repair_store(store)
    assert repaired.ok and repaired.damage == [] and repaired.quarantine is not None
    assert (store / repaired.quarantine / "tensors" / "e2.safetensors").is_file()
    assert make_editor("llama", store=store).edit(*FACTS[1]).id == "e3"  # the orphan's id stays used


def test_fsck_of_a_missing_store_and_of_a_healthy_one(make_editor, tmp_path, capsys):
    assert main(["fsck", "--store", str(tmp_path / "nothing")]) == 2
    assert "there is no store" in capsys.readouterr().err and not (tmp_path / "nothing").exists()
    store = tmp_path / "store"
    make_editor("llama", store=store).edit(*FACTS[0])
    assert main(["fsck", "--store", str(store), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True


def test_a_manifest_without_a_readable_copy_cannot_be_repaired(make_editor, tmp_path):
    store = tmp_path / "store"
    make_editor("llama", store=store)
    (store / "manifest.json").write_text("{")
    (store / "manifest.json.bak").write_text("{")
    with pytest.raises(StoreError, match="no readable copy"):
        repair_store(store)


def test_a_repeated_edit_id_is_named_by_line_and_repair_keeps_the_first(make_editor, tmp_path):
    store = tmp_path / "store"
    editor = make_editor("llama", store=store)
    for prompt, target in FACTS[:2]:
        editor.edit(prompt, target)
    lines = (store / "edits.jsonl").read_bytes().split(b"\n")
    (store / "edits.jsonl").write_bytes(b"\n".join([lines[0], lines[1], lines[0], b""]))
    with pytest.raises(CorruptStoreError, match=r"line 3: edit e1 is recorded again \(first at line 1\)"):
        make_editor("llama", store=store)
    assert [d.line for d in check_store(store).damage if d.kind == "duplicate-id"] == [3]
    repaired = repair_store(store)
    assert repaired.ok and (store / repaired.quarantine / "edits.jsonl").read_bytes() == lines[0] + b"\n"
    assert [e.id for e in make_editor("llama", store=store).edits()] == ["e1", "e2"]
