"""What the data holds beyond its records: conflicting edits, benchmark collisions, and locality probes built from the
records themselves.

Locality has three faces, and a benchmark file usually tests one:
- unrelated questions (NQ) — easy for any router;
- the same relation about another subject (CounterFact's locality prompts) — a plain distance threshold struggles;
- another relation about the same subject ("where was X born" after editing "what is X's occupation") — what a gate
  that only checks for the edit's subject gets wrong.
`relation_probes` and `subject_probes` build the last two from prompt templates of the loaded records.
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from dataclasses import dataclass

from .records import Probe, Record


def normalise(text: str) -> str:
    """Lower case, no punctuation, articles or extra spaces (SQuAD's answer normalisation)."""
    text = re.sub(r"[^\w\s]", " ", text.lower())
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def contains_words(text: str, phrase: str) -> bool:
    """`phrase` occurs in `text` as whole words (case-insensitive)."""
    return re.search(r"(?<!\w)" + re.escape(phrase.lower()) + r"(?!\w)", text.lower()) is not None


def _by_subject(records: list[Record]) -> list[list[Record]]:
    """Records grouped by normalised subject, in order (records without a subject left out)."""
    groups: dict[str, list[Record]] = defaultdict(list)
    for record in records:
        if record.subject:
            groups[normalise(record.subject)].append(record)
    return list(groups.values())


def conflicts(records: list[Record]) -> dict[str, list[str]]:
    """Records whose subject another record shares with a different target: usually the same fact edited twice to
    different answers, which no editor can satisfy both ways. -> {record id: ids of the records it conflicts with}."""
    found: dict[str, list[str]] = {}
    for group in _by_subject(records):
        for record in group:
            others = [o.id for o in group if o.id != record.id and normalise(o.target) != normalise(record.target)]
            if others:
                found[record.id] = others
    return found


def latest_targets(records: list[Record]) -> dict[str, str]:
    """For every record in a conflicting group (records sharing a subject, at least two targets; see `conflicts`),
    the target of the group's last record: what a reading in which the latest edit of a fact wins expects of each.
    -> {record id: latest target}."""
    latest = {}
    for group in _by_subject(records):
        if len({normalise(r.target) for r in group}) > 1:
            for record in group:
                latest[record.id] = group[-1].target
    return latest


def rephrase_form(record: Record) -> str | None:
    """How the record's rephrases are made: "prefixed" if each puts other text before a clause naming the subject
    (ROME's paraphrase prompts: a generated sentence, then the reworded prompt), else "plain". None without rephrases
    or a subject.

    The difference matters on EasyEdit's CounterFact file: most of its `rephrase_prompt`s are plain prompts of
    ROME's generation kind, many about another relation of the subject ("Max Blecher was born in" for the edit
    "Max Blecher speaks" -> "Spanish"), which the target cannot continue; the prefixed ones are rewordings. The
    subject counts only as written (not a shortened form), so the subsets do not move with the router's rules."""
    from ..routing.subjects import clause_naming

    if not record.rephrases or not record.subject:
        return None
    prefixed = all(clause_naming(r, record.subject, exactly=True).strip() != r.strip() for r in record.rephrases)
    return "prefixed" if prefixed else "plain"


@dataclass(frozen=True)
class Collision:
    """A locality prompt of one record that mentions the subject of another edit in the same run, so a correct
    editor may legitimately change its answer ("Bordeaux is a twin city of" is an edit and another's locality)."""

    record: str
    probe: str
    edit: str
    edit_prompt: str

    def to_dict(self) -> dict:
        return {"record": self.record, "probe": self.probe, "edit": self.edit, "edit_prompt": self.edit_prompt}


def collisions(records: list[Record]) -> list[Collision]:
    subjects = [(r, r.subject) for r in records if r.subject]
    found = []
    for record in records:
        for probe in record.locality:
            for other, subject in subjects:
                if other.id != record.id and contains_words(probe.prompt, subject):
                    found.append(Collision(record.id, probe.prompt, other.id, other.prompt))
    return found


def template_of(record: Record) -> str | None:
    """The record's prompt with its subject replaced by "{}" (None if the subject is not in the prompt)."""
    if not record.subject or record.subject not in record.prompt:
        return None
    return record.prompt.replace("{", "{{").replace("}", "}}").replace(record.subject, "{}", 1)


def relation_groups(records: list[Record]) -> dict[str, int]:
    """Group prompt templates into relations: two templates belong together when any of their answers (targets or
    true answers) coincide, e.g. "The mother tongue of {} is" and "{} is a native speaker of" (both answer
    languages). -> {template: group number}. Coarse on purpose: templates of one group are never used as each
    other's "other relation"."""
    answers: dict[str, set[str]] = defaultdict(set)
    for record in records:
        template = template_of(record)
        if template is not None:
            answers[template].update(normalise(a) for a in (record.target, record.truth) if a)
    parent = {t: t for t in answers}

    def find(t: str) -> str:
        while parent[t] != t:
            parent[t] = parent[parent[t]]
            t = parent[t]
        return t

    owner: dict[str, str] = {}
    for template, values in answers.items():
        for value in values:
            if value in owner:
                parent[find(template)] = find(owner[value])
            else:
                owner[value] = template
    roots = sorted({find(t) for t in answers})
    number = {root: i for i, root in enumerate(roots)}
    return {t: number[find(t)] for t in answers}


def subject_probes(record: Record, pool: list[Record], groups: dict[str, int], count: int = 2,
                   seed: int = 0) -> tuple[Probe, ...]:
    """Prompts about the same subject under other relations: templates of other relation groups filled with this
    record's subject. The base model's answer to them must survive the edit."""
    own = template_of(record)
    if own is None or own not in groups or not record.subject:
        return ()
    candidates = sorted({t for t in groups if groups[t] != groups[own]})
    rng = random.Random(f"{seed}:subject:{record.id}")
    chosen = rng.sample(candidates, min(count, len(candidates)))
    return tuple(Probe(t.format(record.subject)) for t in chosen)


def relation_probes(record: Record, pool: list[Record], count: int = 1, seed: int = 0) -> tuple[Probe, ...]:
    """Prompts of the same relation about other subjects: this record's template filled with the subjects of other
    records (that do not share this record's subject). The edit must not reach them."""
    own = template_of(record)
    if own is None:
        return ()
    subjects = sorted({r.subject for r in pool if r.subject and normalise(r.subject) != normalise(record.subject or "")
                       and "{" not in r.subject and "}" not in r.subject})
    rng = random.Random(f"{seed}:relation:{record.id}")
    chosen = rng.sample(subjects, min(count, len(subjects)))
    return tuple(Probe(own.format(s)) for s in chosen)
