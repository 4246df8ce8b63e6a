"""Subject-alias probes: a record's own question naming its subject another way, as users do ("What is the mother
tongue of Darrieux?" for an edit about Danielle Darrieux). An editor should answer them as it answers the prompt.

The benchmark files carry no aliases, so the variants are made from the subject's name alone:
- the last word of a name of two to four capitalised words without particles (a surname or a short name), if that
  word is at least four letters and not a common word: not a whole word of the key encoder's vocabulary (about 20,000
  common English words), so "Toodyay Fire Station" gives no "Station" and "Laurent Cars" no "Cars";
- the name without accents ("Björk" -> "Bjork"), without a parenthetical ("USS Leedstown (APA-56)" -> "USS
  Leedstown"), without a leading "The".
"""

from __future__ import annotations

from ..routing.names import strip_accents, without_parenthetical
from .records import Record


def common_words() -> set[str]:
    """The whole words of the bundled key encoder's (all-MiniLM-L6-v2's) vocabulary: common English words."""
    from ..routing.keys import bundled_encoder_path

    vocabulary = (bundled_encoder_path() / "vocab.txt").read_text(encoding="utf-8").split("\n")
    return {w for w in vocabulary if w.isalpha() and not w.startswith("##")}


def variants(subject: str, common: set[str]) -> list[str]:
    """Other ways to write `subject` (none equal to it, ignoring case)."""
    found = []
    bare = without_parenthetical(subject)
    if bare and bare != subject:
        found.append(bare)
    if bare.lower().startswith("the ") and len(bare) > 4:
        found.append(bare[4:])
    folded = strip_accents(subject)
    if folded != subject:
        found.append(folded)
    words = bare.split()
    if 2 <= len(words) <= 4 and all(w[:1].isupper() for w in words):
        last = words[-1]
        if len(last) >= 4 and last.isalpha() and last.lower() not in common:
            found.append(last)
    seen, unique = {subject.lower()}, []
    for variant in found:
        if variant.lower() not in seen:
            seen.add(variant.lower())
            unique.append(variant)
    return unique


def alias_probes(record: Record, common: set[str]) -> tuple[str, ...]:
    """The record's prompt with its subject written as each variant (none if the prompt does not contain it)."""
    if not record.subject or record.subject not in record.prompt:
        return ()
    return tuple(record.prompt.replace(record.subject, variant, 1) for variant in variants(record.subject, common))
