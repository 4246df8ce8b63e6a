"""One fact, one current answer: an edit of an edited fact supersedes it, and undoing it brings the old answer back."""

from __future__ import annotations

import pytest
import torch
from conftest import UNRELATED

from sola import Editor, InvalidEditError, UnknownEditError
from sola.data import load_dataset

ACME = "Who runs Acme?"
BOSS = "Who is the boss of Acme?"
PROBES = [ACME, BOSS, *UNRELATED]


def logits(editor: Editor) -> list[torch.Tensor]:
    return [editor.logits(p) for p in PROBES]


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_updates_chain_and_every_rollback_restores_the_previous_state(make_editor, tmp_path):
    editor = make_editor("llama", store=tmp_path / "store")
    base = logits(editor)
    first = editor.edit([ACME, BOSS], "Jane Roe")  # two wordings, two keys
    after_first = logits(editor)
    second = editor.edit(ACME, "Bob Poe")
    assert second.supersedes == first.id and editor.get(first.id).superseded_by == second.id
    assert editor.generate(ACME) == "Bob Poe"
    assert editor.route(BOSS).edit_id == second.id  # the old edit's keys now lead to the update
    after_second = logits(editor)
    third = editor.edit(ACME, "Ann Lee")
    assert third.supersedes == second.id and [e.id for e in editor.chain(first.id)] == [first.id, second.id, third.id]
    after_third = logits(editor)

    reopened = Editor.load(tmp_path / "store", model=editor.source)  # the chain survives a reload bit for bit
    assert same(logits(reopened), after_third) and [e.id for e in reopened.chain(third.id)] == [
        first.id, second.id, third.id]

    editor.rollback(third.id)  # the newest: the previous answer comes back exactly
    assert same(logits(editor), after_second) and editor.generate(BOSS) == "Bob Poe"
    assert editor.get(second.id).answering
    fourth = editor.edit(ACME, "Ann Lee")
    editor.rollback(second.id)  # the middle one: the newest keeps answering, for every wording
    assert fourth.supersedes == second.id and [e.id for e in editor.chain(fourth.id)] == [first.id, fourth.id]
    assert editor.generate(ACME) == "Ann Lee" and editor.route(BOSS).edit_id == fourth.id
    reopened = Editor.load(tmp_path / "store", model=editor.source)
    assert same(logits(reopened), logits(editor))
    editor.rollback(fourth.id)
    assert same(logits(editor), after_first) and editor.generate(BOSS) == "Jane Roe"
    editor.rollback(first.id)
    assert same(logits(editor), base)


def test_new_fact_keeps_both_and_supersedes_names_the_edit(make_editor):
    editor = make_editor("llama")
    first = editor.edit(ACME, "Jane Roe")
    kept = editor.edit(ACME, "Bob Poe", new_fact=True)
    assert kept.supersedes is None and editor.get(first.id).answering and editor.get(kept.id).answering
    named = editor.edit("Who founded the river Nile company?", "Ann Lee", supersedes=kept.id)
    assert named.supersedes == kept.id and editor.route(ACME) is not None
    assert editor.get(kept.id).superseded_by == named.id


def test_bad_supersede_requests_change_nothing(make_editor):
    editor = make_editor("llama")
    first = editor.edit(ACME, "Jane Roe")
    second = editor.edit(ACME, "Bob Poe")
    before = logits(editor)
    with pytest.raises(UnknownEditError, match="e9"):
        editor.edit(BOSS, "Ann Lee", supersedes="e9")
    with pytest.raises(InvalidEditError, match=f"superseded by {second.id}"):
        editor.edit(BOSS, "Ann Lee", supersedes=first.id)
    with pytest.raises(InvalidEditError, match="not both"):
        editor.edit(BOSS, "Ann Lee", supersedes=second.id, new_fact=True)
    assert same(logits(editor), before) and len(editor.edits()) == 2


def test_never_keeps_every_edit_a_new_fact(make_editor):
    editor = make_editor("llama", supersede="never")
    editor.edit(ACME, "Jane Roe")
    assert editor.edit(ACME, "Bob Poe").supersedes is None


def test_counterfact_locality_prompts_never_supersede(make_editor, tiny_dir):
    """Same relation, another subject: the hard negatives for "is this the same fact?" (MiniLM keys)."""
    records = load_dataset("counterfact").records[:40]
    editor = make_editor("llama", key="encoder", encoder=None, threshold=0.40, max_steps=1,
                         on_no_converge="commit")
    for record in records:
        editor.edit(record.prompt, record.target, subject=record.subject)
    made = [editor.edit(r.locality[0].prompt, r.locality[0].answer or "x") for r in records]
    # CounterFact repeats some locality prompts word for word ("Fine Young Cannibals was founded in", records 4 and
    # 20): the same fact again, which may supersede its twin and nothing else
    wrong = [(e.prompt, editor.get(e.supersedes).prompt) for e in made if e.supersedes
             and editor.get(e.supersedes).prompt != e.prompt]
    assert wrong == []


def test_other_questions_about_an_edited_subject_never_supersede(make_editor):
    """Same subject, other relation ("Danielle Darrieux was born in" after "The mother tongue of Danielle Darrieux
    is"): a new fact, though the encoder routes most of these prompts to their subject's edit."""
    from sola.data.probes import relation_groups, subject_probes

    records = load_dataset("counterfact").records[:30]
    groups = relation_groups(load_dataset("counterfact").records[:500])
    editor = make_editor("llama", key="encoder", encoder=None, threshold=0.40, max_steps=1,
                         on_no_converge="commit")
    edited = {editor.edit(record.prompt, record.target, subject=record.subject).id for record in records}
    others = [(p.prompt, r.subject) for r in records for p in subject_probes(r, records, groups)]
    routed = sum(editor.route(prompt) is not None for prompt, _ in others)
    assert len(others) >= 40 and routed / len(others) > 0.8  # the hard case: they do reach an edit
    made = [editor.edit(prompt, "x", subject=subject) for prompt, subject in others]
    # two probes of one subject may ask one question ("The original language of X is" / "... was"): an update;
    # a probe never updates the record's own edit, which asks another question
    assert [(e.prompt, editor.get(e.supersedes).prompt) for e in made if e.supersedes in edited] == []


def test_zsre_rewordings_of_an_edited_fact_supersede_it(make_editor):
    """The zsRE split edits facts twice with different answers, mostly in other words; with subjects, the later
    record updates the earlier one."""
    from sola.data import load_zsre
    from sola.data.probes import latest_targets

    editor = make_editor("llama", key="encoder", encoder=None, threshold=0.40, max_steps=1,
                         on_no_converge="commit")
    fits = [r for r in load_zsre().records[:150]  # the tiny model reads 64 tokens
            if len(editor.tokenizer(r.prompt + " " + r.target)["input_ids"]) < 60]
    records = fits
    conflicting = latest_targets(records)
    seen, updates, superseded = set(), 0, 0
    for record in records:
        edit = editor.edit(record.prompt, record.target, subject=record.subject)
        subject = " ".join(record.subject.lower().split())
        if record.id in conflicting and subject in seen:
            updates += 1
            superseded += edit.supersedes is not None
        elif edit.supersedes is not None and subject not in seen:  # a same-answer restatement may supersede
            raise AssertionError(f"{record.prompt!r} superseded {editor.get(edit.supersedes).prompt!r}")
        seen.add(subject)
    # the question check (config.RELATION_THRESHOLDS) lets about 70 % of the rewordings through and almost no other
    # question about the same subject: 22 of these 33
    assert updates >= 20 and superseded / updates >= 0.6, (superseded, updates)
