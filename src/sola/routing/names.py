"""Names in text: where a prompt names something, the forms a subject's name takes, and the subject of a prompt made
without one.

A *name* is a run of capitalised words (or numbers), possibly joined by lower-case particles ("Leonardo da Vinci",
"Bank of England"), with a sentence-opening function word left off ("What", "The", "Who" ...). Names are what the
subject gate matches on, so the rules here decide which inputs can reach an edit at all:

- `forms(subject)`: the full forms of a subject that still name it exactly: as written, without accents, without a
  parenthetical ("USS Leedstown (APA-56)" -> "USS Leedstown"), without a leading "The".
- `short_forms(subject)`: its first or last word alone ("Darrieux", "Zelkova"): a shortened name. The gate takes one
  only where the text's whole name is that word (so "Conrad Hilton" never reaches an edit about "Paris Hilton") and
  only if no other edited subject shares it.
- `infer_subject(prompt)`: the longest name in a prompt, for edits made without a subject.
"""

from __future__ import annotations

import re
import unicodedata

# Lower-case words that may join the capitalised words of one name.
PARTICLES = frozenset("of de la le du des von van der den da di del the and y al bin ibn el st for".split())
# Words after which a full stop does not end a sentence ("Mr. Smith", "Carlos W. Colby", "R.A. Dickey").
ABBREVIATIONS = frozenset("mr mrs ms dr st jr sr prof gen col lt sgt rev vol no".split())
# A word (hyphens and dots inside it belong to it: "Hyeon-jeong", "U-270", "6.0"), or a mark that ends a name.
_TOKEN = re.compile(r"\w+(?:[-.]\w+)*|[.!?;:,()\[\]\n]")
# Capitalised words that open a sentence without being a name.
OPENERS = frozenset(
    "the a an what who whom whose which where when why how in on at is was are were did does do name tell this that "
    "it he she they his her their its by for from to with as after before during if".split()
)
_WORD = re.compile(r"\w+")


# Letters that no Unicode decomposition takes to ASCII, written as English text writes them.
_LETTERS = str.maketrans({"ð": "d", "þ": "th", "æ": "ae", "ø": "o", "œ": "oe", "ß": "ss", "ł": "l", "đ": "d",
                          "ı": "i", "ħ": "h"})


def strip_accents(text: str) -> str:
    """Without combining accents, case kept: "Rodríguez" -> "Rodriguez"."""
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def without_parenthetical(name: str) -> str:
    """"USS Leedstown (APA-56)" -> "USS Leedstown"."""
    return re.sub(r"\s*\([^)]*\)", "", name).strip()


def fold(text: str) -> str:
    """Without accents, lower case: "Björk Guðmundsdóttir" -> "bjork gudmundsdottir"."""
    return strip_accents(text.lower()).translate(_LETTERS)


def folded_words(text: str) -> tuple[str, ...]:
    return tuple(_WORD.findall(fold(text)))


def locate(text: str, words: tuple[str, ...]) -> list[tuple[int, int]]:
    """(start, end) character spans of `text` where these folded words occur as whole words (any case, any accents,
    anything but word characters between them)."""
    if not words:
        return []
    folded, origin = [], []  # the folded text, and for each of its characters the index of the original one
    for index, char in enumerate(text):
        piece = fold(char)
        folded.append(piece)
        origin += [index] * len(piece)
    pattern = re.compile(r"(?<!\w)" + r"\W+".join(map(re.escape, words)) + r"(?!\w)")
    return [(origin[m.start()], origin[m.end() - 1] + 1) for m in pattern.finditer("".join(folded))]


def _capitalised(word: str) -> bool:
    """A word that can be part of a name: capitalised, a number, or with capitals inside ("iBooks", "al-Assad")."""
    return word[:1].isupper() or word[:1].isdigit() or any(c.isupper() for c in word[1:])


def _abbreviation(word: str) -> bool:
    """An initial ("W", "R.A") or a word like "Mr", after which a full stop does not end the sentence."""
    return bool(re.fullmatch(r"\w(\.\w)*", word)) or word.lower() in ABBREVIATIONS


def clauses(text: str) -> list[str]:
    """The sentences and clauses of `text` (split after . ! ? ; and at line breaks), not after an initial or an
    abbreviation ("Who designed A. P. Johnson House?" is one clause)."""
    found, start = [], 0
    for mark in re.finditer(r"[.!?;]\s+|\n+", text):
        before = re.findall(r"[\w.]+$", text[:mark.start()])
        if mark.group()[0] == "." and before and _abbreviation(before[0]):
            continue
        found.append(text[start:mark.start() + 1].strip())
        start = mark.end()
    found.append(text[start:].strip())
    return [c for c in found if c]


def name_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) character spans of the names in `text`, in order."""
    spans: list[tuple[int, int]] = []
    start = end = None
    sentence_start = True
    previous = ""
    for match in _TOKEN.finditer(text):
        token = match.group()
        abbreviated = token == "." and _abbreviation(previous)
        previous = token
        if abbreviated:
            continue  # the full stop of an initial or an abbreviation: the name goes on
        if token == "," and start is not None:
            continue  # "Arthur Wellesley, 1st Duke of Wellington": a capitalised word after it goes on with the name
        if not token[0].isalnum() and token != "_":  # a sentence or clause ends
            sentence_start = token != ","
            if start is not None:
                spans.append((start, end))
            start = None
            continue
        opener = sentence_start and token.lower() in OPENERS
        sentence_start = False
        if _capitalised(token) and not opener:
            start = match.start() if start is None else start
            end = match.end()
        elif start is None or token.lower() not in PARTICLES:  # a particle inside a name keeps it open
            if start is not None:
                spans.append((start, end))
            start = None
    if start is not None:
        spans.append((start, end))
    return [(start + _title_length(text[start:end]), end) for start, end in spans]


def names(text: str) -> list[tuple[str, ...]]:
    """The names in `text`, each as its folded words, in order."""
    return [folded_words(text[start:end]) for start, end in name_spans(text)]


def forms(subject: str) -> set[tuple[str, ...]]:
    """The full forms that name `subject` exactly (folded words): as written, without a parenthetical, without a
    leading article."""
    bare = without_parenthetical(subject)
    found = {folded_words(subject), folded_words(bare)}
    for words in list(found):
        if len(words) > 1 and words[0] == "the":
            found.add(words[1:])
    return {w for w in found if w}


def short_forms(subject: str) -> set[tuple[str, ...]]:
    """The first and the last word of a name of two words or more (each at least 3 letters); only the first if the
    name has particles ("Edwin of Northumbria": "Northumbria" names a place, not Edwin)."""
    bare = without_parenthetical(subject)
    words = _WORD.findall(bare)
    if len(words) < 2 or not all(_capitalised(w) or w.lower() in PARTICLES for w in words):
        return set()
    joined = any(w.lower() in PARTICLES for w in words[1:])
    found = set()
    for word in (words[0],) if joined else (words[0], words[-1]):
        if len(word) >= 3 and word.isalpha() and word.lower() not in PARTICLES | OPENERS:
            found.add((fold(word),))
    return found - forms(subject)


def _title_length(name: str) -> int:
    """How much of a name is an acronym title before "of": "CEO of Zelkova Pumps" -> len("CEO of ")."""
    title = re.match(r"[A-Z]{2,4}s? of (?=\w)", name)
    return title.end() if title else 0


def infer_subject(prompt: str) -> str | None:
    """The subject of a prompt made without one: its longest name, as written in the prompt (the last, on a tie).
    None if the prompt names nothing (all lower case)."""
    spans = name_spans(prompt)
    if not spans:
        return None
    start, end = max(reversed(spans), key=lambda span: span[1] - span[0])
    parenthetical = re.match(r"\s*\([^()]*\)", prompt[end:])  # "USS Leedstown (APA-56)"
    if parenthetical:
        end += parenthetical.end()
    elif prompt[end:end + 1] == "." and _abbreviation(prompt[start:end].split()[-1]):
        end += 1  # "Martin Luther King Jr." keeps its last full stop
    return prompt[start:end]
