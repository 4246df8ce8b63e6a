"""The command line over a store, on a tiny model: edit, ask, list, rollback, info, JSON output, errors."""

from __future__ import annotations

import json

import pytest
from conftest import tiny_config

from sola.cli import main


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


def test_cli_shows_the_subject_it_read_and_explains_each_answer(tiny_dir, tmp_path, capsys):
    from sola import Editor

    store = tmp_path / "store"
    Editor.from_pretrained(tiny_dir("llama"), config=tiny_config(tiny_dir, key="subject", threshold=0.6), store=store)
    common = ["--store", str(store), "--model", str(tiny_dir("llama"))]
    code, out, _ = run(capsys, "edit", "Who is the CEO of Zelkova Pumps?", "Ada Brandt", *common)
    assert code == 0 and "subject 'Zelkova Pumps' (read from the prompt; pass --subject to set it)" in out
    code, out, _ = run(capsys, "edit", "Who founded Quillon Robotics?", "Mara Vey", "--alias", "QR Labs", *common,
                       "--json")
    assert code == 0 and json.loads(out)[0]["aliases"] == ["QR Labs"]
    code, out, _ = run(capsys, "ask", "Who is the CEO of Zelkova Pumps?", *common)
    assert code == 0 and "[edit e1, distance " in out and "< threshold 0.600]" in out
    code, out, _ = run(capsys, "ask", "Who is the CEO of Birch Valves?", *common)
    assert code == 0 and out.rstrip().endswith("[base model: names no edited subject]")
    code, out, _ = run(capsys, "ask", "Who founded QR Labs?", *common, "--json")
    assert json.loads(out)["explanation"]["edit"] == "e2" and json.loads(out)["explanation"]["routed"]


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


def no_model(*args, **kwargs):
    raise AssertionError("the model was loaded")


@pytest.mark.parametrize("argv,message", [
    (["ask", "Who is \udcff?"], "prompt is not valid UTF-8 text (byte 0xff at character 8)"),
    (["edit", "", "X"], "prompt is empty"),
    (["edit", "Who founded Acme?", "  "], "target is empty"),
    (["edit", "Who founded Acme?"], "give PROMPT and TARGET"),
    (["edit", "--file", "MISSING"], "MISSING: no such file"),
    (["edit", "--file", "EMPTY"], "holds no edit requests"),
    (["edit", "--file", "LATIN1"], "LATIN1, line 2: not valid UTF-8 (byte 0xe9 at column 23)"),
    (["edit", "--file", "BADJSON"], "BADJSON, line 3: not valid JSON"),
    (["edit", "--file", "NOTARGET"], "NOTARGET, line 2: needs a prompt"),
    (["edit", "--file", "BLANKTARGET"], "BLANKTARGET, line 1: target is empty"),
])
def test_bad_input_is_one_error_before_the_model_loads(tmp_path, capsys, monkeypatch, argv, message):
    import sola.editor

    monkeypatch.setattr(sola.editor, "load_model", no_model)
    files = {"MISSING": None, "EMPTY": b"\n  \n",
             "LATIN1": b'{"prompt": "a?", "target": "b"}\n{"prompt": "Who is Ren\xe9?", "target": "b"}\n',
             "BADJSON": b'{"prompt": "a?", "target": "b"}\n\n{"prompt": \n',
             "NOTARGET": b'{"prompt": "a?", "target": "b"}\n{"prompt": "c?"}\n',
             "BLANKTARGET": b'{"prompt": "a?", "target": " "}\n'}
    argv = [str(tmp_path / a) if a in files else a for a in argv]
    for name, data in files.items():
        if data is not None:
            (tmp_path / name).write_bytes(data)
    store = tmp_path / "store"
    code, out, err = run(capsys, *argv, "--store", str(store))
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and message in errors[0], err
    assert "Traceback" not in err and not store.exists()


@pytest.mark.parametrize("command", [["list"], ["info"], ["rollback", "e1"], ["export", "e1", "--out", "x"]])
def test_read_only_commands_never_create_a_store(tmp_path, capsys, command):
    typo = tmp_path / "typo" / "x"
    code, _, err = run(capsys, *command, "--store", str(typo))
    assert code == 2 and "there is no store at" in err and not (tmp_path / "typo").exists()


def test_ask_before_the_first_edit_answers_from_the_base_model_and_creates_nothing(tiny_dir, tmp_path, capsys,
                                                                                  monkeypatch):
    from sola import Editor

    prompts = ["Who founded Acme?", "What is 2+2?", "Which river flows through Cairo?"]
    base = Editor.from_pretrained(tiny_dir("llama"))
    expected = [base.generate(p, max_new_tokens=32) for p in prompts]
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO(prompts[2] + "\n\n"))
    typo = tmp_path / "none" / "store"
    code, out, err = run(capsys, "ask", *prompts[:2], "--file", "-", "--store", str(typo), "--model",
                         str(tiny_dir("llama")), "--json")
    rows = [json.loads(line) for line in out.splitlines()]  # several prompts: one JSON line each, one model load
    assert code == 0 and [r["prompt"] for r in rows] == prompts and [r["answer"] for r in rows] == expected
    assert all(r["route"] is None and r["explanation"]["reason"] == "no edits" for r in rows)
    assert "no store at" in err and "base model's answers" in err and not (tmp_path / "none").exists()


def test_an_unknown_edit_id_is_an_error_before_the_model_loads(tiny_dir, tmp_path, capsys, monkeypatch):
    from sola import Editor

    store = tmp_path / "store"
    Editor.from_pretrained(tiny_dir("llama"), config=tiny_config(tiny_dir), store=store).edit("Who founded Acme?",
                                                                                               "Jane Roe")
    import sola.editor

    monkeypatch.setattr(sola.editor, "load_model", no_model)
    for command in (["rollback", "e9"], ["export", "e9", "--out", str(tmp_path / "out")]):
        code, _, err = run(capsys, *command, "--store", str(store))
        assert code == 2 and "error: edit 'e9' does not exist; live edits: e1" in err, err
    code, _, err = run(capsys, "ask", "--store", str(store))
    assert code == 2 and "give PROMPT arguments or --file FILE" in err


def test_list_and_info_read_the_store_without_the_model(tiny_dir, tmp_path, capsys, monkeypatch):
    import sola.editor
    from sola import Editor

    store = tmp_path / "store"
    editor = Editor.from_pretrained(tiny_dir("llama"), config=tiny_config(tiny_dir), store=store)
    editor.edit("Who founded Acme?", "Jane Roe")
    editor.edit("Who founded Acme?", "Bob Poe")  # supersedes e1
    editor.edit("What colour is the sky?", "green")
    editor.rollback("e3")
    monkeypatch.setattr(sola.editor, "load_model", no_model)
    code, out, _ = run(capsys, "list", "--store", str(store), "--history")
    assert code == 0 and "e2 'Bob Poe' <- e1 'Jane Roe'" in out and "e3 'green'" in out
    code, out, _ = run(capsys, "info", "--store", str(store), "--json")
    info = json.loads(out)
    assert code == 0 and (info["edits"], info["superseded"], info["rolled_back"], info["keys"]) == (2, 1, 1, 2)
    assert info["threshold"] == editor.config.threshold and "unnamed_threshold" in info


def test_an_edit_that_does_not_converge_is_refused_or_kept_with_exit_3(tiny_dir, tmp_path, capsys):
    from sola import Editor

    store = tmp_path / "store"
    Editor.from_pretrained(tiny_dir("llama"), config=tiny_config(tiny_dir), store=store)
    common = ["--store", str(store), "--model", str(tiny_dir("llama"))]
    code, _, err = run(capsys, "edit", "Who founded Acme?", "Jane Roe", "--max-steps", "1", *common)
    assert code == 3 and "did not converge and was not stored" in err and "--max-steps" in err
    assert (store / "edits.jsonl").read_bytes() == b""
    code, out, err = run(capsys, "edit", "Who founded Acme?", "Jane Roe", "--max-steps", "1", "--keep-unconverged",
                         *common, "--json")
    assert code == 3 and json.loads(out)[0]["converged"] is False and "did not converge but was stored" in err
    edits = tmp_path / "edits.jsonl"
    edits.write_text(json.dumps({"prompt": "What colour is the sky?", "target": "green"}) + "\n"
                     + json.dumps({"prompt": "Who wrote Hamlet?", "target": "Bill Lumbergh " * 6}) + "\n")
    code, out, err = run(capsys, "edit", "--file", str(edits), "--max-steps", "1", *common)
    assert code == 3 and "the edits of lines 1, 2 did not converge" in err and "were not stored" in err
    assert [line.endswith("not stored") for line in out.splitlines()] == [True, True]
    assert len((store / "edits.jsonl").read_text().splitlines()) == 1  # only the --keep-unconverged edit
    code, out, _ = run(capsys, "edit", "--file", str(edits), *common)  # the store's 200 steps: both converge
    assert code == 0 and [line.split(":")[0] for line in out.splitlines()] == ["e2", "e3"]


def test_a_target_beyond_the_token_limit_is_refused_with_the_limit(make_editor, tmp_path, monkeypatch):
    from sola import InvalidEditError

    # the tiny model reads 64 positions, fewer than the real limit (128): a lower limit shows the same refusal
    monkeypatch.setattr("sola.prompts.MAX_TARGET_TOKENS", 32)
    editor = make_editor("llama", store=tmp_path / "store")
    with pytest.raises(InvalidEditError, match="at most 32 .sola.prompts.MAX_TARGET_TOKENS"):
        editor.edit("Who?", "a b c d e f g h i j k " * 2)
    assert (tmp_path / "store" / "edits.jsonl").read_bytes() == b""


def test_sola_edit_shows_training_progress_on_a_terminal_and_stays_quiet_with_json(tiny_dir, tmp_path, capsys,
                                                                                   monkeypatch):
    import sys

    from sola import Editor

    store = tmp_path / "store"
    Editor.from_pretrained(tiny_dir("llama"), config=tiny_config(tiny_dir), store=store)
    common = ["--store", str(store), "--model", str(tiny_dir("llama"))]
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # standard error is a terminal
    code, out, err = run(capsys, "edit", "Who founded Acme?", "Jane Roe", *common)
    assert code == 0 and "e1:" in out and "training" in err and "step" in err and "loss=" in err
    code, out, err = run(capsys, "edit", "Which river flows through Cairo?", "the Danube", *common, "--json")
    assert code == 0 and json.loads(out)[0]["id"] == "e2" and "loss=" not in err
