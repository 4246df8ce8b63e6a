"""Which question an input asks about a subject: the relation check of key="subject".

Masking the subject leaves the relation ("Who founded something?"), but one absolute threshold on the distance of two
relations cannot tell "the same question in other words" from "another question about the same subject": in
all-MiniLM-L6-v2 "Who runs something?" lies 0.49 from "Who is the chief executive of something?" (the same question)
and "When was something founded?" 0.11 from "Who founded something?" (another one). What separates them is what else
one could have asked. So the check compares an input with the alternatives: a bank of generic question forms over many
relation types (`data/question_forms.json`, hundreds of forms, several phrasings each, grouped by relation).

- An edit's *relation* is the bank relation nearest to its masked prompt, if one lies within `MATCH_RADIUS`; its other
  phrasings in the bank become extra keys of the edit (a query phrased like one of them reaches it).
- An input reaches an edit only if the edit (or one of its extra keys) is nearer to the input's masked clause than
  every form of the bank's other relations, give or take `RIVAL_RATIO`. The nearer bank form is the *rival*: it says
  which other question the input asks ("When was something founded?").

For relations the bank does not hold, an edit has no extra keys and every bank form is a rival: the input must still
be nearer to the edit's question than to any other question the bank knows. The figures behind the constants
(tuned on CounterFact records 1,000-1,999, never on the benchmark's 0-999; held-out relations measured by taking the
edit's relation out of the bank) are in docs/evaluation.md, "Relation check".
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..files import atomic_write
from .subjects import PLACEHOLDER

# An edit's masked prompt within this cosine distance of a bank relation's nearest form asks that relation (CounterFact
# 1,000-1,999: 0.2 reaches 5.7 points fewer real paraphrases, 0.4 4.3 points more for 0.35 points more same-subject
# activation; zsRE 0-999: 0.2 -1.8, 0.4 +1.0 and +0.4).
MATCH_RADIUS = 0.30
# An input reaches an edit only if its distance to it is below RIVAL_RATIO times its distance to the nearest rival form.
# A ratio, not an added margin: an input that is one of the bank's forms of another relation ("When was something
# founded?", 0.11 from "Who founded something?") never passes, whatever the margin would allow. 1.0: strictest
# (CounterFact's real paraphrases reached 0.45, same-subject probes activated 0.007); 1.35: 0.62 and 0.026; 1.5: 0.62
# and 0.029 (zsRE's same-subject probes 0.024 at 1.35, 0.028 at 1.5).
RIVAL_RATIO = 1.35


@dataclass(frozen=True)
class QuestionBank:
    """Question forms grouped by relation; "{}" stands for the subject."""

    relations: dict[str, tuple[str, ...]]

    @classmethod
    def bundled(cls) -> QuestionBank:
        text = resources.files("sola.routing").joinpath("data/question_forms.json").read_text(encoding="utf-8")
        return cls.from_dict(json.loads(text)["relations"])

    @classmethod
    def from_dict(cls, relations: dict[str, list[str]]) -> QuestionBank:
        seen: dict[str, str] = {}
        for name, forms in relations.items():
            bad = [f for f in forms if f.count("{}") != 1]
            if bad:
                raise ValueError(f"question forms of {name!r} must name the subject once as '{{}}': {bad}")
            for form in forms:
                if seen.setdefault(form, name) != name:  # it would be a rival of its own relation's edits
                    raise ValueError(f"the form {form!r} is in two relations ({seen[form]!r}, {name!r}); keep it in "
                                     "one")
        return cls({name: tuple(forms) for name, forms in relations.items()})

    @cached_property
    def forms(self) -> list[str]:
        """Every form, masked as an edit's prompt is (`relation_text`): "Who founded something?"."""
        return [form.replace("{}", PLACEHOLDER) for forms in self.relations.values() for form in forms]

    @cached_property
    def relation_of_form(self) -> torch.Tensor:
        """(F,) the relation number of each form."""
        return torch.tensor([n for n, forms in enumerate(self.relations.values()) for _ in forms], dtype=torch.long)

    @cached_property
    def names(self) -> list[str]:
        return list(self.relations)


@dataclass(frozen=True)
class Profile:
    """What the bank says of one edit: its relation (None if the bank has none within `MATCH_RADIUS`), whose forms
    in the bank are the edit's extra keys."""

    relation: int | None


@dataclass(frozen=True)
class Verdict:
    """One edit weighed for one input: the input's distance to it (its nearest key, extra keys included) and the bank
    form the input is nearer to, if any (then the input asks another question and does not reach the edit)."""

    distance: float
    rival: str | None
    by_extra_key: bool = False  # the distance is to one of the bank's phrasings, not to a prompt of the edit


class RelationCheck:
    """The bank, encoded once by the key encoder (`encode`: texts -> (N, d) unit vectors)."""

    def __init__(self, encode: Callable[[list[str]], torch.Tensor], bank: QuestionBank | None = None,
                 cache: Path | None = None, encoder_id: str = "") -> None:
        """`cache`: a directory where the encoded bank is kept (safetensors), named by a hash of the forms and of
        `encoder_id` (which weights `encode` runs); None: encoded in every process."""
        self._encode, self.bank = encode, bank or QuestionBank.bundled()
        self._cache, self.encoder_id = cache, encoder_id

    def without(self, relations: set[str]) -> RelationCheck:
        """The same check with these relations taken out of the bank (the encoded forms are shared, not encoded
        again): how it does on relations it has never seen."""
        kept = {name: forms for name, forms in self.bank.relations.items() if name not in relations}
        check = RelationCheck(self._encode, QuestionBank(kept))  # no cache: its vectors are a slice of these
        keep = torch.tensor([self.bank.names[int(r)] not in relations for r in self.bank.relation_of_form])
        check.__dict__["vectors"] = self.vectors[keep]
        return check

    @cached_property
    def vectors(self) -> torch.Tensor:
        """(F, d) the masked forms' embeddings: read from the cache, or encoded on first use (1-2 s for the bundled
        bank on 2 CPU cores) and cached. Every process on one machine then routes by the same bits."""
        path = None
        if self._cache is not None:
            digest = hashlib.sha256("\n".join([self.encoder_id, *self.bank.forms]).encode()).hexdigest()[:20]
            path = self._cache / f"question-bank-{digest}.safetensors"
            if path.is_file():
                try:
                    return load_file(path)["vectors"]
                except Exception:  # a damaged cache file is encoded again and replaced
                    pass
        forms = self.bank.forms
        vectors = torch.cat([self._encode(forms[i:i + 128]).float() for i in range(0, len(forms), 128)])
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(path, lambda temp: save_file({"vectors": vectors.contiguous()}, str(temp)))
            except OSError:  # a read-only home: encode in every process
                pass
        return vectors

    def relation_distances(self, vector: torch.Tensor) -> torch.Tensor:
        """(d,) a masked clause's embedding -> (R,) its cosine distance to each relation's nearest form."""
        by_form = 1 - self.vectors @ vector.float()
        out = torch.full((len(self.bank.names),), float("inf"))
        return out.scatter_reduce(0, self.bank.relation_of_form, by_form, reduce="amin")

    def profile(self, keys: torch.Tensor) -> Profile:
        """An edit's profile from its keys (P, d): the relation nearest to any of them, if within `MATCH_RADIUS`."""
        nearest = torch.stack([self.relation_distances(k) for k in keys]).min(0).values
        relation = int(nearest.argmin())
        if not float(nearest[relation]) < MATCH_RADIUS:
            return Profile(None)
        return Profile(relation)

    def form_distances(self, query: torch.Tensor) -> torch.Tensor:
        """(d,) an input's masked clause -> (F,) its cosine distance to every form: once per input, for every edit
        it is weighed against."""
        return 1 - self.vectors @ query.float()

    def weigh(self, query: torch.Tensor, distance: float, profile: Profile,
              forms: torch.Tensor | None = None) -> Verdict:
        """The verdict on an edit whose stored keys lie at `distance` from the input's masked clause `query` (d,);
        `forms`: `form_distances(query)`, if already computed."""
        by_form = self.form_distances(query) if forms is None else forms
        extra = False
        if profile.relation is not None:  # its relation's forms are its extra keys, and no rivals
            own = self.bank.relation_of_form == profile.relation
            nearest = max(0.0, float(by_form[own].min()))
            # nearer by more than rounding: an edit's prompt that is a bank form word for word stays its own key
            distance, extra = min(distance, nearest), round(nearest, 6) < round(distance, 6)
            by_form = by_form.masked_fill(own, float("inf"))
        best = int(by_form.argmin())
        rival = None if distance < RIVAL_RATIO * float(by_form[best]) else self.bank.forms[best]
        return Verdict(distance, rival, extra)
