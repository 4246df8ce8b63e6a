"""Subject-aware routing: an edit can only answer an input that names its subject, and then only if the input asks
about the same relation.

The key of an edit is the sentence encoder's embedding of its *relation*: the clause of the prompt that names the
subject, with the subject replaced by a neutral word ("The mother tongue of Danielle Darrieux is" -> "The mother
tongue of something is"). An input is compared only with edits whose subject it contains as whole words, and with each
such edit by the embedding of its own clause masked the same way. This keeps out both hard kinds of locality prompts:
the same relation about another subject (no subject match) and another relation about the same subject (the relation
embeddings differ).
"""

from __future__ import annotations

import re

PLACEHOLDER = "something"


def words(text: str) -> tuple[str, ...]:
    return tuple(re.findall(r"\w+", text.lower()))


def _subject_pattern(subject: str) -> re.Pattern:
    parts = [re.escape(w) for w in re.findall(r"\w+", subject)]
    return re.compile(r"(?<!\w)" + r"\W+".join(parts) + r"(?!\w)", re.IGNORECASE)


def clause_naming(text: str, subject: str) -> str:
    """The clause of `text` that names `subject` (the last one, if several; all of `text` if none does).
    Benchmarks' paraphrases often put an unrelated sentence first; it is not part of the clause."""
    pattern = _subject_pattern(subject)
    clauses = [c for c in re.split(r"(?<=[.!?;])\s+|\n+", text) if c.strip()]
    return next((c for c in reversed(clauses) if pattern.search(c)), text)


def relation_text(text: str, subject: str) -> str:
    """The clause of `text` that names `subject`, with the subject replaced by a neutral word."""
    return _subject_pattern(subject).sub(PLACEHOLDER, clause_naming(text, subject), count=1)


class SubjectIndex:
    """Which edits' subjects a text names, as whole words (case-insensitive), by looking up its word n-grams."""

    def __init__(self) -> None:
        self._slots: dict[tuple[str, ...], set[int]] = {}
        self._subject_of: dict[int, str] = {}
        self._longest = 0

    def add(self, subject: str, slot: int) -> None:
        key = words(subject)
        if not key:
            raise ValueError(f"subject {subject!r} has no words")
        self._slots.setdefault(key, set()).add(slot)
        self._subject_of[slot] = subject
        self._longest = max(self._longest, len(key))

    def remove(self, slot: int) -> None:
        subject = self._subject_of.pop(slot, None)
        if subject is not None:
            slots = self._slots[words(subject)]
            slots.discard(slot)
            if not slots:
                del self._slots[words(subject)]

    def find(self, text: str) -> dict[str, list[int]]:
        """{subject as stored: slots of the edits about it} for every edited subject the text names."""
        tokens = words(text)
        found: dict[str, list[int]] = {}
        for start in range(len(tokens)):
            for length in range(1, min(self._longest, len(tokens) - start) + 1):
                slots = self._slots.get(tokens[start:start + length])
                if slots:
                    ordered = sorted(slots)
                    found.setdefault(self._subject_of[ordered[0]], []).extend(ordered)
        return {subject: sorted(set(slots)) for subject, slots in found.items()}
