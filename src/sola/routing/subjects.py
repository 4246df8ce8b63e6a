"""Subject-aware routing: an edit can only answer an input that names its subject, and then only if the input asks
about the same relation.

The key of an edit is the sentence encoder's embedding of its *relation*: the clause of the prompt that names the
subject, with the subject replaced by a neutral word ("The mother tongue of Danielle Darrieux is" -> "The mother
tongue of something is"). An input is compared only with edits whose subject it names, and with each such edit by the
embedding of its own clause masked the same way. This keeps out both hard kinds of locality prompts: the same relation
about another subject (no subject match) and another relation about the same subject (the relation embeddings
differ).

An input names a subject when it contains one of its full forms (`names.forms`: as written, in any case, without
accents, a parenthetical or a leading "The"; or a user-given alias), or when one of its names is exactly a shortened
form (`names.short_forms`: "Darrieux" for "Danielle Darrieux") that no other edited subject shares.
"""

from __future__ import annotations

import re

from .names import OPENERS, PARTICLES, clauses, fold, folded_words, forms, infer_subject, locate, names, short_forms

PLACEHOLDER = "something"


def words(text: str) -> tuple[str, ...]:
    return folded_words(text)


def _spans(text: str, subject: str) -> list[tuple[int, int]]:
    """Where `text` names `subject`: the spans of its longest full form found, else of a short form. (Short forms
    need a capitalised subject; the gate's matched forms come folded, so they mask by their full form only.)"""
    for group in (forms(subject), short_forms(subject)):
        for form in sorted(group, key=len, reverse=True):
            found = locate(text, form)
            if found:
                return found
    return []


def clause_naming(text: str, subject: str, exactly: bool = False) -> str:
    """The clause of `text` that names `subject` (the last one, if several; all of `text` if none does).
    Benchmarks' paraphrases often put an unrelated sentence first; it is not part of the clause. `exactly`: only
    the subject as written counts (any case), not its other forms."""
    parts = clauses(text)
    groups = [{folded_words(subject)}] if exactly else [forms(subject), short_forms(subject)]
    for group in groups:  # a clause with a full form wins over a later one with a shortened form only
        found = next((c for c in reversed(parts) if any(locate(c, form) for form in group)), None)
        if found is not None:
            return found
    return text


def relation_text(text: str, subject: str) -> str:
    """The clause of `text` that names `subject`, with the subject replaced by a neutral word."""
    clause = clause_naming(text, subject)
    spans = _spans(clause, subject)
    if not spans:
        return clause
    start, end = spans[0]
    return clause[:start] + PLACEHOLDER + clause[end:]


# Words a shared run may pass but not end on (`shared_relation_texts`): they carry the relation, not a name.
FUNCTION_WORDS = OPENERS | PARTICLES | frozenset(
    "has have had be been being can could will would should may might must not no nor or but so than then also s "
    "into onto upon about over under between through".split())
_RUN_WORD = re.compile(r"\w+(?:['’-]\w+)*|[^\w\s]")  # a word, or a mark (a shared run stops at one)


def shared_relation_texts(edit_text: str, edit_subject: str, text: str, form: str) -> tuple[str, str] | None:
    """The relation texts of an edit's prompt and an input, each masked over its subject and the words around it
    that the two share: outwards from the subject, word by word while both have the same word, up to the last one
    that is not a function word. None if they share no such word (then `relation_text` of each applies).

    For edits whose subject was inferred and may be part of a longer name (`EditConfig.mask_shared_words`): the
    rest of the name is shared by any two questions about it, and masking it leaves the words that differ.
    `form` is the form of the subject the input names (`SubjectIndex.find`)."""
    edit_clause, clause = clause_naming(edit_text, edit_subject), clause_naming(text, form)
    edit_spans, spans = _spans(edit_clause, edit_subject), _spans(clause, form)
    if not edit_spans or not spans:
        return None
    (e0, e1), (q0, q1) = edit_spans[0], spans[0]
    edit_words = [(m.start(), m.end(), fold(m.group())) for m in _RUN_WORD.finditer(edit_clause)]
    input_words = [(m.start(), m.end(), fold(m.group())) for m in _RUN_WORD.finditer(clause)]
    start = _shared_run(zip([w for w in edit_words if w[1] <= e0][::-1], [w for w in input_words if w[1] <= q0][::-1]),
                        side=0)
    end = _shared_run(zip([w for w in edit_words if w[0] >= e1], [w for w in input_words if w[0] >= q1]), side=1)
    if start is None and end is None:
        return None
    (e0, q0), (e1, q1) = start or (e0, q0), end or (e1, q1)
    return edit_clause[:e0] + PLACEHOLDER + edit_clause[e1:], clause[:q0] + PLACEHOLDER + clause[q1:]


def _shared_run(pairs, side: int) -> tuple[int, int] | None:
    """Walking outwards over (edit word, input word) pairs while they are the same word: the `side` offsets (0: start,
    1: end) in both texts of the last one that is not a function word; None if there is none. Stops at a mark."""
    reached = None
    for ours, theirs in pairs:
        if ours[2] != theirs[2] or not ours[2][0].isalnum():
            break
        if ours[2] not in FUNCTION_WORDS:
            reached = (ours[side], theirs[side])
    return reached


class SubjectIndex:
    """Which edits' subjects a text names (see the module's docstring), by looking up its word n-grams."""

    def __init__(self) -> None:
        self._full: dict[tuple[str, ...], set[int]] = {}
        self._short: dict[tuple[str, ...], set[int]] = {}
        self._forms_of: dict[int, tuple[set, set]] = {}
        self._subject_of: dict[int, str] = {}
        self._longest = 0

    def add(self, subject: str, slot: int, aliases: tuple[str, ...] | list[str] = ()) -> None:
        full = set().union(*(forms(name) for name in (subject, *aliases)))
        if not full:
            raise ValueError(f"subject {subject!r} has no words")
        short = set().union(*(short_forms(name) for name in (subject, *aliases))) - full
        for form in full:
            self._full.setdefault(form, set()).add(slot)
            self._longest = max(self._longest, len(form))
        for form in short:
            self._short.setdefault(form, set()).add(slot)
        self._forms_of[slot], self._subject_of[slot] = (full, short), subject

    def remove(self, slot: int) -> None:
        full, short = self._forms_of.pop(slot, (set(), set()))
        self._subject_of.pop(slot, None)
        for table, group in ((self._full, full), (self._short, short)):
            for form in group:
                table[form].discard(slot)
                if not table[form]:
                    del table[form]

    def subject_of(self, slot: int) -> str | None:
        return self._subject_of.get(slot)

    def find(self, text: str) -> dict[str, list[int]]:
        """{the form the text names, as words: slots of the edits it names} for every edited subject the text names."""
        tokens = folded_words(text)
        found: dict[str, set[int]] = {}
        for start in range(len(tokens)):
            for length in range(1, min(self._longest, len(tokens) - start) + 1):
                form = tokens[start:start + length]
                if form in self._full:
                    found.setdefault(" ".join(form), set()).update(self._full[form])
        named = set().union(*found.values()) if found else set()
        for name in names(text):
            name = name[1:] if len(name) > 1 and name[0] == "the" else name
            slots = self._short.get(name, set()) - named
            subjects = {frozenset(self._forms_of[slot][0]) for slot in slots}
            if len(subjects) == 1:  # a shortened name that only one edited subject has
                found.setdefault(" ".join(name), set()).update(slots)
        return {form: sorted(slots) for form, slots in found.items()}


def names_subject(text: str, subject: str) -> bool:
    """Whether `text` names `subject` the way the subject index finds it (a full form, or a short form)."""
    index = SubjectIndex()
    index.add(subject, 0)
    return bool(index.find(text))


def shared_name(prompts: list[str]) -> str | None:
    """The name an edit's prompts share: the one the first prompt gives (`names.infer_subject`), if every prompt names
    it; else None."""
    guess = infer_subject(prompts[0])
    return guess if guess is not None and all(names_subject(p, guess) for p in prompts) else None
