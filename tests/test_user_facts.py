"""The user-like set (tests/data/made_up_facts.json) through the public API, subjects never given: rewordings reach
their edit, other questions about an edited subject and unrelated questions do not, an update supersedes the first
edit and another fact about the subject never does. Routing does not read the LoRAs, so the whole set runs on a tiny
model with one training step per edit and the real key encoder; the embedded model runs a share, generating."""

from __future__ import annotations

import pytest

from sola import EditConfig, Editor
from sola.eval.user_facts import FactSet, run

# the issue's goals (issue 43)
GOALS = {"rewordings_reached": 0.90, "others_changed": 0.03, "unrelated_changed": 0.0, "missed_updates": 0.10}


def check_goals(figures: dict) -> None:
    assert figures["rewordings_reached"] >= GOALS["rewordings_reached"], figures
    assert figures["others_changed"] <= GOALS["others_changed"], figures
    assert figures["unrelated_changed"] == GOALS["unrelated_changed"], figures
    assert figures["wrong_supersedes"] == 0, figures
    assert figures["missed_updates"] is None or figures["missed_updates"] <= GOALS["missed_updates"], figures
    assert figures["first_kept"] in (None, 1.0), figures


def test_the_set_covers_what_the_issue_asks():
    facts = FactSet.read()
    assert len(facts.facts) >= 40 and len({f.relation for f in facts.facts}) >= 15
    assert len({f.kind for f in facts.facts}) >= 6
    assert all(len(f.rewordings) == 2 and len(f.others) == 4 for f in facts.facts)
    kinds = [f.second["kind"] for f in facts.facts if f.second]
    assert kinds.count("update") >= 5 and kinds.count("other") >= 5


def test_made_up_facts_route_and_supersede_by_question(tiny_dir):
    editor = Editor.from_pretrained(tiny_dir("llama"), config=EditConfig(prompt_format="raw", max_steps=1,
                                                                         on_no_converge="commit"))
    check_goals(run(editor, FactSet.read())["figures"])


def test_without_the_relation_check_the_set_fails(tiny_dir):
    """The check the goals hold against: the threshold alone lets other questions in and swallows facts."""
    editor = Editor.from_pretrained(tiny_dir("llama"), config=EditConfig(
        prompt_format="raw", max_steps=1, on_no_converge="commit", relation_check="none"))
    figures = run(editor, FactSet.read())["figures"]
    assert figures["others_changed"] > 0.1 and figures["wrong_supersedes"] > 0, figures


@pytest.mark.integration
def test_made_up_facts_on_the_embedded_model_chat_format():
    editor = Editor.from_pretrained()  # the default: chat format, subject key, relation check
    result = run(editor, FactSet.read().share(7), generate=True, max_new_tokens=16)
    check_goals(result["figures"])
    # an other question that routes nowhere runs the base model untouched: its answer is the base model's, exactly
    assert not any(c["changed"] for c in result["cases"] if c["kind"] == "other" and c["routed_to"] is None)
