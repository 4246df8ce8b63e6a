"""The relation check (`sola.routing.relations`): another question about an edited subject never reaches its edit or
swallows it, a rewording does; the decision is visible (`explain`, `plan`, `sola edit` and `--dry-run`). Tiny model,
real key encoder (all-MiniLM-L6-v2): routing reads only the encoder."""

from __future__ import annotations

import json

import pytest
from conftest import tiny_config

from sola import EditConfig, Editor
from sola.cli import main
from sola.routing.relations import QuestionBank, RelationCheck


@pytest.fixture
def editor(tiny_dir):
    return Editor.from_pretrained(tiny_dir("llama"), config=EditConfig(prompt_format="raw", max_steps=1,
                                                                       on_no_converge="commit"))


def test_the_bundled_bank_is_well_formed():
    bank = QuestionBank.bundled()
    forms = [f for fs in bank.relations.values() for f in fs]
    assert len(bank.relations) >= 150 and len(forms) >= 600
    assert len(forms) == len(set(forms)), "a form in two relations would be its own rival"
    assert all(len(fs) >= 3 for fs in bank.relations.values())
    with pytest.raises(ValueError, match="name the subject once"):
        QuestionBank.from_dict({"founder": ["Who founded it?"]})
    with pytest.raises(ValueError, match="in two relations"):
        QuestionBank.from_dict({"producer": ["Who produced {}?"], "manufacturer": ["Who produced {}?"]})


def test_another_question_about_the_subject_is_turned_away_and_says_why(editor):
    e1 = editor.edit("Who founded Velmora Foods?", "Tobias Wren")
    assert editor.route("Who was the founder of Velmora Foods?").edit_id == e1.id
    why = editor.explain("When was Velmora Foods founded?")
    assert not why.routed and why.reason == "another question" and why.edit_id == e1.id
    assert why.rival == "When was something founded?" and "asks another question" in str(why)
    assert editor.route("When was Velmora Foods founded?") is None
    assert editor.nearest("When was Velmora Foods founded?").rival == why.rival  # nearest still names the edit


def test_a_second_fact_about_a_subject_never_supersedes_and_an_update_does(editor):
    first = editor.edit("Who founded Velmora Foods?", "Tobias Wren")
    plan = editor.plan("When was Velmora Foods founded?", "1987")
    assert plan.supersedes is None and plan.nearest == first.id and plan.reason.startswith("another question")
    other = editor.edit("When was Velmora Foods founded?", "1987")
    assert other.supersedes is None and editor.route("Who founded Velmora Foods?").edit_id == first.id
    assert editor.route("When was Velmora Foods founded?").edit_id == other.id
    runs = editor.edit("Who runs the Zelkova Pump Company?", "Jane Roe")
    plan = editor.plan("Who is the chief executive of the Zelkova Pump Company?", "Bob Poe")
    assert plan.supersedes == runs.id and plan.reason.startswith("same question")
    assert plan.action == f"update of {runs.id}"
    update = editor.edit("Who is the chief executive of the Zelkova Pump Company?", "Bob Poe")
    assert update.supersedes == runs.id and editor.route("Who runs the Zelkova Pump Company?").edit_id == update.id
    assert len(editor.edits()) == 4  # plan() stored nothing


def test_without_the_check_the_threshold_alone_decides(tiny_dir):
    """relation_check="none" is the behaviour of stores made before the check: "When was X founded?" reaches the
    founder edit (0.11 apart) and an edit of it supersedes the founder."""
    editor = Editor.from_pretrained(tiny_dir("llama"), config=EditConfig(
        prompt_format="raw", max_steps=1, on_no_converge="commit", relation_check="none"))
    first = editor.edit("Who founded Velmora Foods?", "Tobias Wren")
    assert editor.route("When was Velmora Foods founded?").edit_id == first.id
    assert editor.edit("When was Velmora Foods founded?", "1987").supersedes == first.id


def test_stores_made_before_the_check_keep_routing_by_threshold(tiny_dir, tmp_path):
    store = tmp_path / "store"
    Editor.from_pretrained(tiny_dir("llama"), config=EditConfig(prompt_format="raw"), store=store)
    manifest = store / "manifest.json"
    data = json.loads(manifest.read_text())
    del data["config"]["relation_check"]  # as a store of 2026-12-05 wrote it
    manifest.write_text(json.dumps(data))
    assert Editor.from_pretrained(tiny_dir("llama"), store=store).config.relation_check == "none"


def test_a_relation_the_bank_lacks_still_faces_every_other_question(editor):
    editor.edit("What is Corvin Hale's signature dish?", "smoked eel risotto")
    assert editor.route("Which dish is Corvin Hale best known for cooking?") is not None
    assert editor.explain("Where was Corvin Hale born?").reason in ("another question", "too far")


def test_without_a_relation_shares_the_encoded_forms(editor):
    check = RelationCheck(editor.router.keys.encode)
    smaller = check.without({"founder"})
    assert "founder" not in smaller.bank.relations and len(smaller.vectors) == len(smaller.bank.forms)
    assert len(smaller.vectors) == len(check.vectors) - len(check.bank.relations["founder"])


def test_cli_prints_the_decision_and_dry_run_changes_nothing(tiny_dir, tmp_path, capsys):
    store = tmp_path / "store"
    Editor.from_pretrained(tiny_dir("llama"), config=tiny_config(tiny_dir, key="subject", threshold=None),
                           store=store)
    common = ["--store", str(store), "--model", str(tiny_dir("llama"))]
    assert main(["edit", "Who founded Velmora Foods?", "Tobias Wren", "--subject", "Velmora Foods", *common]) == 0
    assert "new fact" in capsys.readouterr().out
    assert main(["edit", "--dry-run", "When was Velmora Foods founded?", "1987", *common]) == 0
    out = capsys.readouterr().out
    assert out.startswith("would be a new fact: nearest live edit e1 'Who founded Velmora Foods?'") and "dry run" in out
    assert main(["edit", "--dry-run", "Who was the founder of Velmora Foods?", "Ann Lee", *common, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["supersedes"] == "e1"
    assert main(["list", *common, "--json"]) == 0 and len(json.loads(capsys.readouterr().out)) == 1
    assert main(["edit", "Who was the founder of Velmora Foods?", "Ann Lee", *common]) == 0
    assert "update: supersedes e1 'Who founded Velmora Foods?': same question" in capsys.readouterr().out
    assert main(["edit", "--dry-run", "Who founded Acme?", "x", "--store", str(tmp_path / "none")]) == 0
    assert "the store does not exist yet" in capsys.readouterr().out and not (tmp_path / "none").exists()


def test_a_prompt_that_is_a_bank_form_word_for_word_reaches_its_own_edit(editor):
    """Two edits of one fact kept apart (new_fact): the newer prompt is the bank's "Who is the director of {}?", which
    is also an extra key of the older edit, at the same distance 0. The edit's own prompt wins (zsRE record 211 went
    to record 210 at T = 1,000 before this was pinned)."""
    older = editor.edit("Who was Fimpen directed or edited by?", "Bo Widerberg")
    newer = editor.edit("Who is the director of Fimpen?", "Wolfgang Petersen", new_fact=True)
    assert editor.route("Who is the director of Fimpen?").edit_id == newer.id
    assert editor.route("Who was Fimpen directed or edited by?").edit_id == older.id
