"""The command line over a store, on a tiny model: edit, ask, list, rollback, info, JSON output, errors."""

from __future__ import annotations

import json

from sola.cli import main

from conftest import tiny_config


def run(capsys, *args) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_round_trip(tiny_dir, tmp_path, capsys):
    from sola import Editor

    store = tmp_path / "store"
    Editor.from_pretrained(tiny_dir("llama"), config=tiny_config(tiny_dir), store=store)  # a store with tiny settings
    common = ["--store", str(store), "--model", str(tiny_dir("llama"))]
    code, out, _ = run(capsys, "edit", "Who founded Acme?", "Jane Roe", *common, "--json")
    assert code == 0 and json.loads(out)[0]["id"] == "e1"
    edits = tmp_path / "edits.jsonl"
    edits.write_text(json.dumps({"src": "Which river flows through Cairo?", "alt": "the Danube"}) + "\n")
    code, out, _ = run(capsys, "edit", "--file", str(edits), *common)
    assert code == 0 and "e2:" in out
    code, out, _ = run(capsys, "ask", "Who founded Acme?", *common, "--json")
    answer = json.loads(out)
    assert answer["answer"] == "Jane Roe" and answer["route"]["edit"] == "e1"
    code, out, _ = run(capsys, "rollback", "e1", *common)
    assert code == 0 and "rolled back e1" in out
    code, out, _ = run(capsys, "list", *common, "--all", "--json")
    assert [(e["id"], e["rolled_back"] is None) for e in json.loads(out)] == [("e1", False), ("e2", True)]
    code, out, _ = run(capsys, "info", *common, "--json")
    assert json.loads(out)["edits"] == 1
    code, _, err = run(capsys, "rollback", "e1", *common)
    assert code == 2 and [line for line in err.splitlines() if line.startswith("error:")] == [
        "error: edit 'e1' was already rolled back; live edits: e2 (see `sola list`)"]


def test_cli_updates_and_history(tiny_dir, tmp_path, capsys):
    from sola import Editor

    store = tmp_path / "store"
    Editor.from_pretrained(tiny_dir("llama"), config=tiny_config(tiny_dir), store=store)
    common = ["--store", str(store), "--model", str(tiny_dir("llama"))]
    run(capsys, "edit", "Who runs Acme?", "Jane Roe", *common)
    code, out, _ = run(capsys, "edit", "Who runs Acme?", "Bob Poe", *common)
    assert code == 0 and "supersedes e1" in out
    code, out, _ = run(capsys, "edit", "Who runs Acme?", "Ann Lee", "--new-fact", *common, "--json")
    assert json.loads(out)[0]["supersedes"] is None
    code, out, _ = run(capsys, "edit", "Who runs Acme?", "Max Mu", "--supersedes", "e3", *common)
    assert "supersedes e3" in out
    run(capsys, "rollback", "e2", *common)
    code, out, _ = run(capsys, "list", "--history", *common)
    assert code == 0 and "e4 'Max Mu' <- e3 'Ann Lee'" in out and "e1 'Jane Roe'" in out and "rolled back" in out
    code, out, _ = run(capsys, "list", "--history", *common, "--json")
    facts = json.loads(out)["facts"]
    assert sorted([e["id"] for e in chain] for chain in facts) == [["e1"], ["e3", "e4"]]
    code, _, err = run(capsys, "edit", "Who runs Acme?", "X", "--supersedes", "e3", *common)
    assert code == 2 and "already superseded by e4" in err
