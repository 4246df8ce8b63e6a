"""Integration on the embedded SmolLM2-135M-Instruct with real zsRE edits (converted once under $SOLA_HOME)."""

from __future__ import annotations

import pytest
import torch

from sola import EditConfig, Editor
from sola.data import load_zsre

pytestmark = pytest.mark.integration

NQ_QUESTIONS = ["what is the name of the last episode of spongebob", "who sings the song i can only imagine",
                "when did the first world war start"]


def first_distinct_facts(count: int) -> list[dict]:
    """The first zsRE records whose subject and question no earlier record has: the split edits some facts twice
    with different answers, which no editor can satisfy both ways (see docs)."""
    seen, facts = set(), []
    for record in load_zsre().records:
        if record.subject in seen or record.prompt in seen:
            continue
        seen.update((record.subject, record.prompt))
        facts.append(record)
        if len(facts) == count:
            return facts
    raise AssertionError("not enough distinct facts")


@pytest.fixture(scope="module")
def edited():
    editor = Editor.from_pretrained(config=EditConfig(prompt_format="raw"))
    probes = [f.prompt for f in first_distinct_facts(20)] + NQ_QUESTIONS
    base = [editor.logits(p) for p in probes]
    edits = [editor.edit(f.prompt, f.target) for f in first_distinct_facts(20)]
    return editor, edits, probes, base


def test_twenty_sequential_zsre_edits_each_generate_their_target(edited):
    editor, edits, _, _ = edited
    facts = first_distinct_facts(20)
    answers = [editor.generate(f.prompt) for f in facts]
    assert answers == [f.target.strip() for f in facts]  # one zsRE target is " MAT-49"
    assert all(e.converged for e in edits)


def test_unrelated_questions_and_rollback_are_bit_exact(edited, tmp_path):
    editor, edits, probes, base = edited
    for nq, expected in zip(NQ_QUESTIONS, base[-len(NQ_QUESTIONS):]):
        assert editor.route(nq) is None
        assert torch.equal(editor.logits(nq), expected)
    saved = editor.save(tmp_path / "store")
    current = [editor.logits(p) for p in probes]
    loaded = Editor.load(saved)
    assert all(torch.equal(a, b) for a, b in zip(current, [loaded.logits(p) for p in probes]))
    for edit in edits:
        loaded.rollback(edit.id)
    assert all(torch.equal(a, b) for a, b in zip(base, [loaded.logits(p) for p in probes]))


def test_an_update_supersedes_and_its_rollback_restores_the_old_answer(edited):
    """zsRE edits some facts twice in other words (the Toodyay Fire Station's architect, ...): the later record is an
    update. It answers for both wordings; rolling it back brings the earlier answer back bit for bit."""
    from sola.data.probes import latest_targets

    editor, _, probes, _ = edited
    records = load_zsre().records[:1000]
    latest = latest_targets(records)
    taken = {f.subject for f in first_distinct_facts(20)}
    first = next(r for r in records if r.id in latest and r.subject not in taken and latest[r.id] != r.target)
    second = next(r for r in records if r.subject == first.subject and r.target != first.target)
    watched = probes + [first.prompt, second.prompt]
    old = editor.edit(first.prompt, first.target, subject=first.subject)
    before = [editor.logits(p) for p in watched]
    # named explicitly: whether "auto" takes this rewording for the same question is a matter of the sentence
    # encoder alone, tested with the real encoder in test_supersede.py (it catches about 70 % of zsRE's)
    new = editor.edit(second.prompt, second.target, subject=second.subject, supersedes=old.id)
    assert new.supersedes == old.id
    assert editor.generate([first.prompt, second.prompt], batch_size=2) == [second.target.strip()] * 2
    editor.rollback(new.id)
    assert all(torch.equal(a, b) for a, b in zip(before, [editor.logits(p) for p in watched]))
    assert editor.generate(first.prompt) == first.target.strip()
    editor.rollback(old.id)


def test_grace_on_the_embedded_model_answers_its_edits_and_rolls_back_exactly():
    from sola.methods import GraceConfig, GraceEditor

    facts = first_distinct_facts(2)
    editor = GraceEditor.from_pretrained(config=GraceConfig(radius=2.0))  # keys have norms near 10 at this layer
    probes = [f.prompt for f in facts] + NQ_QUESTIONS
    base = [editor.logits(p) for p in probes]
    for fact in facts:
        edit = editor.edit(fact.prompt, fact.target)
        assert edit.converged and editor.generate(fact.prompt, 16, stop_at_newline=True) == fact.target
    for question, before in zip(NQ_QUESTIONS, base[2:]):
        assert editor.route(question) is None and torch.equal(editor.logits(question), before)
    editor.rollback("e2")
    editor.rollback("e1")
    assert all(torch.equal(editor.logits(p), b) for p, b in zip(probes, base))


def test_an_edit_exported_as_a_peft_adapter_gives_the_editors_logits_on_the_embedded_model(edited, tmp_path):
    """The real `peft` library loads the exported edit onto the embedded base model (its converted safetensors
    directory): for the edit's prompt it computes the editor's logits, to float32 rounding."""
    import peft

    from sola.loading import load_model

    editor, edits, _, _ = edited
    edit = edits[3]
    directory = editor.export_peft(edit.id, tmp_path / "adapter")
    ours = editor.logits(edit.prompt, edit.target)
    _, base, _ = load_model(None)
    model = peft.PeftModel.from_pretrained(base, str(directory)).eval()
    ids = editor.encode(edit.prompt).ids + editor.task.encode_target(edit.prompt, edit.target)
    with torch.no_grad():
        theirs = model(input_ids=torch.tensor([ids])).logits[0]
    assert float((ours - theirs).abs().max()) < 1e-3
    assert theirs[len(ids) - len(editor.task.encode_target(edit.prompt, edit.target)) - 1:-1].argmax(-1).tolist() == \
        editor.task.encode_target(edit.prompt, edit.target)
