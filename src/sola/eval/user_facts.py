"""A user's first edits, measured through the public API: made-up facts edited without a subject, each asked again in
other words (should reach the edit), about other things of its subject (must keep the base model's answer), and
edited a second time (an update must supersede the first edit; another fact must not).

The set (tests/data/made_up_facts.json) was written for this, not drawn from a benchmark. `run` edits every fact with
`Editor.edit(prompt, target)` and reads `Editor.route` and, with `generate=True`, `Editor.generate`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FACTS = Path(__file__).resolve().parents[3] / "tests" / "data" / "made_up_facts.json"


@dataclass(frozen=True)
class Fact:
    subject: str
    kind: str
    relation: str
    prompt: str
    target: str
    rewordings: tuple[str, ...]
    others: tuple[str, ...]
    second: dict[str, str] | None = None
    novel: bool = False  # a relation the question bank has no group for


@dataclass
class FactSet:
    facts: list[Fact]
    unrelated: list[str] = field(default_factory=list)

    @classmethod
    def read(cls, path: str | Path = FACTS) -> FactSet:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        facts = [Fact(f["subject"], f["kind"], f["relation"], f["prompt"], f["target"], tuple(f["rewordings"]),
                      tuple(f["others"]), f.get("second"), bool(f.get("novel"))) for f in data["facts"]]
        return cls(facts, list(data.get("unrelated", ())))

    def share(self, every: int) -> FactSet:
        """Every `every`-th fact (a fixed, spread share for quick runs)."""
        return FactSet(self.facts[::every], self.unrelated[:3])


def _share(hits: list[bool]) -> float | None:
    return round(sum(hits) / len(hits), 4) if hits else None


def run(editor, facts: FactSet, generate: bool = False, max_new_tokens: int = 24) -> dict[str, Any]:
    """Edit every fact, then every second edit, on `editor` (a fresh one); -> figures and every case's outcome.

    Figures: `rewordings_reached` (routed to the fact's edit), `others_changed` (other questions about an edited
    subject routed to an edit, or with `generate` answering differently from the base model), `unrelated_changed`,
    `wrong_supersedes` (second edits of another fact that superseded something), `missed_updates` (updates that did
    not supersede the first edit), and after the second edits `first_kept` (an other-fact second edit left the first
    fact's prompt answering with the first edit)."""
    questions = [q for f in facts.facts for q in (*f.rewordings, *f.others)] + facts.unrelated
    before = {q: editor.generate(q, max_new_tokens=max_new_tokens) for q in questions} if generate else {}
    edits = {f.subject: editor.edit(f.prompt, f.target) for f in facts.facts}
    cases: list[dict[str, Any]] = []

    def reaches(question: str, edit_id: str) -> bool:
        route = editor.route(question)
        return route is not None and route.edit_id == edit_id

    for fact in facts.facts:
        edit = edits[fact.subject]
        for q in fact.rewordings:
            case = {"kind": "rewording", "subject": fact.subject, "novel": fact.novel, "question": q,
                    "reached": reaches(q, edit.id)}
            if generate:
                case["answer"] = editor.generate(q, max_new_tokens=max_new_tokens)
                case["answered"] = fact.target.lower() in case["answer"].lower()
            cases.append(case)
        for q in fact.others:
            route = editor.route(q)
            case = {"kind": "other", "subject": fact.subject, "novel": fact.novel, "question": q,
                    "routed_to": route.edit_id if route else None, "changed": route is not None}
            if generate:
                case["answer"] = editor.generate(q, max_new_tokens=max_new_tokens)
                case["changed"] = case["answer"] != before[q]
            cases.append(case)
    for q in facts.unrelated:
        route = editor.route(q)
        changed = route is not None
        if generate:
            changed = editor.generate(q, max_new_tokens=max_new_tokens) != before[q]
        cases.append({"kind": "unrelated", "question": q, "changed": changed})
    for fact in facts.facts:
        if not fact.second:
            continue
        first = edits[fact.subject]
        second = editor.edit(fact.second["prompt"], fact.second["target"])
        update = fact.second["kind"] == "update"
        case = {"kind": "second", "subject": fact.subject, "update": update, "prompt": fact.second["prompt"],
                "supersedes": second.supersedes, "right": (second.supersedes == first.id) if update
                else second.supersedes is None}
        if not update:  # the first fact must still answer with its own edit
            case["first_kept"] = reaches(fact.prompt, first.id)
        cases.append(case)
    of = lambda kind: [c for c in cases if c["kind"] == kind]  # noqa: E731
    seconds = of("second")
    figures = {
        "facts": len(facts.facts),
        "relations": len({f.relation for f in facts.facts}),
        "rewordings_reached": _share([c["reached"] for c in of("rewording")]),
        "rewordings_reached_novel_relations": _share([c["reached"] for c in of("rewording") if c["novel"]]),
        "others_changed": _share([c["changed"] for c in of("other")]),
        "others_changed_novel_relations": _share([c["changed"] for c in of("other") if c["novel"]]),
        "unrelated_changed": _share([c["changed"] for c in of("unrelated")]),
        "wrong_supersedes": sum(1 for c in seconds if not c["update"] and not c["right"]),
        "other_fact_second_edits": sum(1 for c in seconds if not c["update"]),
        "missed_updates": _share([not c["right"] for c in seconds if c["update"]]),
        "updates": sum(1 for c in seconds if c["update"]),
        "first_kept": _share([c["first_kept"] for c in seconds if "first_kept" in c]),
    }
    if generate:
        figures["rewordings_answered"] = _share([c["answered"] for c in of("rewording")])
    return {"figures": figures, "cases": cases}
