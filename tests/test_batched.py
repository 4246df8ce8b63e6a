"""Batched editing: K edits trained together, each in its own slot, give what editing them one by one gives."""

from __future__ import annotations

import pytest
import torch

from sola import InvalidEditError, UnknownEditError

FACTS = [("Who founded Acme?", "Jane Roe"), ("Which river flows through Cairo?", "the Danube"),
         ("What is the capital of Mars?", "Olympus"), ("Who wrote the Acme handbook?", "Bob Poe"),
         ("Where is the Globex tower?", "in Lyon")]


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_batch_equals_one_by_one(make_editor, family):
    """In float32, so the comparison sees the training itself: with bfloat16 factors (the default) a rounding
    difference of the batched products can flip a factor's last bit, and training then goes on from there."""
    one = make_editor(family, factor_dtype="float32")
    singles = [one.edit(p, t) for p, t in FACTS]
    many = make_editor(family, factor_dtype="float32")
    batched = many.edit_many([{"prompt": p, "target": t} for p, t in FACTS], batch_size=3)
    assert [e.id for e in batched] == [e.id for e in singles]
    assert all(e.converged for e in batched)
    for a, b in zip(one.layers, many.layers, strict=True):
        torch.testing.assert_close(a.lora_A, b.lora_A, rtol=1e-3, atol=1e-4)
        torch.testing.assert_close(a.lora_B, b.lora_B, rtol=1e-3, atol=1e-4)
    assert [many.generate(p) for p, _ in FACTS] == [t for _, t in FACTS]


def test_batched_edits_roll_back_one_at_a_time(make_editor):
    editor = make_editor("llama")
    before = editor.logits(FACTS[1][0])
    edits = editor.edit_many([{"prompt": p, "target": t} for p, t in FACTS], batch_size=5)
    editor.rollback(edits[1].id)
    assert torch.equal(editor.logits(FACTS[1][0]), before)
    assert editor.generate(FACTS[0][0]) == FACTS[0][1]


def test_an_update_in_the_same_file_waits_for_its_fact(make_editor):
    editor = make_editor("llama")
    edits = editor.edit_many([{"prompt": "Who runs Acme?", "target": "Jane Roe"}, *[
        {"prompt": p, "target": t} for p, t in FACTS[1:3]], {"prompt": "Who runs Acme?", "target": "Bob Poe"}])
    assert edits[-1].supersedes == edits[0].id and editor.generate("Who runs Acme?") == "Bob Poe"


def test_a_bad_request_edits_nothing(make_editor):
    editor = make_editor("llama")
    with pytest.raises(InvalidEditError, match="request 3: target is empty"):  # counted from 1
        editor.edit_many([{"prompt": p, "target": t} for p, t in FACTS[:2]] + [{"prompt": "x", "target": " "}])
    with pytest.raises(UnknownEditError, match="request 2: supersedes='e7'"):
        editor.edit_many([{"prompt": "a?", "target": "b"}, {"prompt": "c?", "target": "d", "supersedes": "e7"}])
    assert editor.edits() == []
