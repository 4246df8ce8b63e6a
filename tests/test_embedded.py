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
