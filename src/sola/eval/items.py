"""The evaluation set of a run: each record with its locality probes (see `sola.data.probes`), and the held-out NQ
questions a threshold is calibrated on."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from ..data import Dataset, Probe, Record, load_dataset
from ..data.aliases import alias_probes, common_words
from ..data.probes import normalise, relation_groups, relation_probes, subject_probes
from ..errors import DataError
from .spec import BenchSpec

PROBE_KINDS = ("unrelated", "relation", "subject")


@dataclass
class Item:
    record: Record
    probes: dict[str, list[Probe]]
    aliases: list[str] = field(default_factory=list)  # the prompt naming the subject another way (should answer)


def nq_pool(spec: BenchSpec) -> list[Record]:
    try:
        source = spec.data if spec.data and not Path(spec.data).is_file() else None
        return load_dataset("nq", source).records
    except DataError:
        return []


def build_items(dataset: Dataset, nq: list[Record], seed: int, subject_count: int,
                passages: list[Record] | None = None) -> list[Item]:
    """The probes of every record. QA sets (zsRE) carry unrelated NQ questions as their locality; CounterFact carries
    same-relation prompts. The other faces are built from the records' own templates (and NQ questions), and the
    subject-alias prompts from the subjects' names (`sola.data.aliases`). Hallucination records carry upstream text
    (WISE's `locality_prompt`: unrelated); the passages never edited (`passages`, WISE's other file, each with its
    correct next sentence: the accurate sentences ARR reads) are spread over the records, each passage once: one
    about an edited person is a "subject" probe of an edit of that person (the same biography at another point),
    one about a person no edit is about is a "relation" probe (another biography)."""
    records = dataset.records
    groups = relation_groups(records) if dataset.kind in ("qa", "completion") else {}
    used = {_question(p.prompt) for r in records for p in r.locality}
    spare = [q for q in nq if normalise(q.prompt) not in used]
    rng = random.Random(f"{seed}:unrelated")
    unrelated_for_completion = rng.sample(spare, min(len(spare), len(records))) if dataset.kind == "completion" else []
    common = common_words() if dataset.kind in ("qa", "completion") else set()
    items = []
    for index, record in enumerate(records):
        probes: dict[str, list[Probe]] = {kind: [] for kind in PROBE_KINDS}
        if dataset.kind == "completion":
            probes["relation"] = list(record.locality)
            if index < len(unrelated_for_completion):
                question = unrelated_for_completion[index]
                probes["unrelated"] = [Probe(question.prompt, question.target)]
        else:
            probes["unrelated"] = list(record.locality)
            if dataset.kind == "qa":
                probes["relation"] = list(relation_probes(record, records, 1, seed))
        if groups:
            probes["subject"] = list(subject_probes(record, records, groups, subject_count, seed))
        items.append(Item(record, probes, list(alias_probes(record, common)) if common else []))
    if dataset.kind == "hallucination" and passages and items:
        _spread_passages(items, passages)
    return items


def _spread_passages(items: list[Item], passages: list[Record]) -> None:
    """Each never-edited passage once: to an edit of the same person (round robin) as a "subject" probe, or, if no
    edit is about that person, to the edits in turn as a "relation" probe."""
    edits_of: dict[str, list[int]] = {}
    for index, item in enumerate(items):
        if item.record.subject:
            edits_of.setdefault(normalise(item.record.subject), []).append(index)
    taken: dict[str, int] = {}
    others = 0
    for passage in passages:
        subject = normalise(passage.subject or "")
        owners = edits_of.get(subject)
        if owners:
            index, kind = owners[taken.get(subject, 0) % len(owners)], "subject"
            taken[subject] = taken.get(subject, 0) + 1
        else:
            index, kind = others % len(items), "relation"
            others += 1
        items[index].probes[kind].append(Probe(passage.prompt, passage.target))


def _question(prompt: str) -> str:
    """An NQ question as it can be compared across files (zsRE prefixes its copies with "nq question: ")."""
    return normalise(prompt.removeprefix("nq question: "))


def calibration_questions(items: list[Item], nq: list[Record], count: int = 500) -> list[str]:
    """Held-out NQ questions: none of them is a probe of this run."""
    used = {_question(p.prompt) for item in items for ps in item.probes.values() for p in ps}
    return [q.prompt for q in nq if normalise(q.prompt) not in used][:count]
