"""The router: which edit, if any, answers an input, decided once from its prompt.

It owns everything routing needs per edit, keyed by the edit's slot: its keys in the `KeyTable` (one row per prompt),
its subject in the `SubjectIndex` (key="subject"; edits made without a subject are reached by the whole prompt), and
the answer map: key slot -> the slot that answers for those keys (itself, or the live edit that superseded it). The
other index spaces are the ledger's (edit ids) and the residency's (buffer rows); `Editor` maps between them.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from ..config import EditConfig
from ..errors import InvalidEditError
from ..loading import sola_home
from ..nn import Decision, RoutedLoraLayer
from ..nn.injection import Attachments, capture, modules
from ..prompts import EncodedPrompt
from ..tasks import Batch, Task
from .keys import key_strategy
from .relations import Profile, RelationCheck, Verdict
from .subjects import SubjectIndex, shared_relation_texts
from .table import KeyTable


class Candidate(NamedTuple):
    """An edit weighed for an input: its distance on the threshold's scale, its slot, and the bank form the input is
    nearer to if the relation check turned it away (`sola.routing.relations`; None: it may route)."""

    distance: float
    slot: int
    rival: str | None = None
    by_extra_key: bool = False  # its distance is to one of the bank's phrasings of its relation, not to its prompt

    def order(self) -> tuple:
        """Which candidate answers: admitted before turned away, then nearest; at equal distances (to rounding) an
        edit's own prompt before another edit's bank phrasing (an edit's prompt may be a bank form word for word:
        it must still reach that edit, not an older edit of the same relation), then the oldest slot."""
        return self.rival is not None, round(self.distance, 6), self.by_extra_key, self.slot


class Router:
    def __init__(self, config: EditConfig, model: nn.Module, task: Task, decision: Decision,
                 attachments: Attachments | None = None) -> None:
        self.model, self.task, self.decision = model, task, decision
        self.attachments = attachments  # where the key hook goes (the editor's, so that its `close()` removes it)
        self.keys = key_strategy(config.key, config.encoder)
        self.table = KeyTable(self.keys.dim if not self.keys.inside_model else None, config.resolved_distance())
        self.config = config
        if self.keys.inside_model:
            self._hook_key_module()
        self.subjects = SubjectIndex()  # key="subject": which edits an input names
        self.unnamed: set[int] = set()  # key="subject": slots of edits made without a subject (whole-prompt keys)
        self.inferred: dict[int, tuple[str, ...]] = {}  # key="subject": the prompts of edits whose subject was
        # read from them (`EditConfig.mask_shared_words`)
        self._live: set[int] = set()
        self._answer = torch.zeros(0, dtype=torch.long)
        # key="subject" with relation_check="bank": the bank, and each edit's profile in it (made when first needed)
        self.relations = None
        if self.keys.needs_subject and config.relation_check == "bank":
            self.relations = RelationCheck(self.keys.encode, cache=sola_home() / "cache",
                                           encoder_id=self.keys.identity())
        self._profiles: dict[int, Profile] = {}

    @property
    def config(self) -> EditConfig:
        return self._config

    @config.setter
    def config(self, config: EditConfig) -> None:  # the table searches as the config in force says
        self._config = config
        self.table.approximate_from = config.approximate_search_from

    def _hook_key_module(self) -> None:
        name = self.config.key_module or self.config.layers[0]
        module = modules(self.model, [name], "key_module")[name]
        self._key_module = module.base_layer if isinstance(module, RoutedLoraLayer) else module

        def read_query(_module, args, kwargs):
            self.decision.decide_from(args[0] if args else kwargs.get("hidden_states"))

        if self.attachments is None:
            self.attachments = Attachments(self.model)
        self.attachments.pre_hook(self._key_module, read_query, with_kwargs=True)

    def __len__(self) -> int:
        """How many keys the table holds."""
        return len(self.table)

    # -- per-edit state ----------------------------------------------------------------------------------------------
    def add(self, slot: int, keys: torch.Tensor, subject: str | None, aliases: tuple[str, ...] = (),
            inferred_from: tuple[str, ...] = ()) -> None:
        """An edit's keys (one row per prompt). `inferred_from`: its prompts, if its subject was read from them."""
        self._claim(slot, subject, aliases, inferred_from)
        self.table.add(keys, slot)

    def add_many(self, slots: list[int], keys: torch.Tensor, counts: torch.Tensor,
                 subjects: list[str | None] | None = None, aliases: list[tuple[str, ...]] | None = None,
                 inferred_from: list[tuple[str, ...]] | None = None, own: bool = False) -> None:
        """Many edits at once (opening a store): `keys` stacked in slot order, `counts[i]` rows for `slots[i]`; their
        subjects (needed when keys are subjects: `keys.needs_subject`). `own`: nobody else uses `keys`, the table may
        keep it (see `KeyTable.add_rows`)."""
        if not slots:
            return
        claimed = torch.tensor(slots, dtype=torch.long)
        self._reserve_answers(max(slots))
        self._answer[claimed] = claimed  # each slot answers for itself, as `_claim` sets it, in one step
        self._live.update(slots)
        if self.keys.needs_subject:
            if subjects is None:
                raise ValueError("these keys name subjects: pass each edit's subject")
            for n, (slot, subject) in enumerate(zip(slots, subjects)):
                self._name(slot, subject, aliases[n] if aliases else (), inferred_from[n] if inferred_from else ())
        self.table.add_rows(keys, torch.repeat_interleave(claimed, counts), own=own)

    def _reserve_answers(self, slot: int) -> None:
        if slot >= len(self._answer):
            grown = max(8, 2 * len(self._answer), slot + 1)
            self._answer = torch.cat([self._answer, torch.arange(len(self._answer), grown)])

    def _claim(self, slot: int, subject: str | None, aliases: tuple[str, ...] = (),
               inferred_from: tuple[str, ...] = ()) -> None:
        self._reserve_answers(slot)
        self._answer[slot] = slot
        self._live.add(slot)
        if self.keys.needs_subject:
            self._name(slot, subject, aliases, inferred_from)

    def _name(self, slot: int, subject: str | None, aliases: tuple[str, ...], inferred_from: tuple[str, ...]) -> None:
        """key="subject": which edits an input names (or none: a whole-prompt key)."""
        if subject is None:
            self.unnamed.add(slot)
        else:
            self.subjects.add(subject, slot, aliases)
            if inferred_from:
                self.inferred[slot] = tuple(inferred_from)

    def remove(self, slot: int) -> None:
        self.table.remove_slot(slot)
        self.subjects.remove(slot)
        self.unnamed.discard(slot)
        self.inferred.pop(slot, None)
        self._profiles.pop(slot, None)
        self._live.discard(slot)

    def supersede(self, older: int, newer: int) -> None:
        """Every key that reached slot `older` now reaches slot `newer`."""
        self._answer[self._answer == older] = newer

    def supersede_many(self, links: list[tuple[int, int]]) -> None:
        """`supersede` of each (older, newer) in order, on a table where every key still answers for itself (opening
        a store): who answers for whom is worked out first and written once."""
        answered: dict[int, list[int]] = {}  # answering slot -> the slots whose keys it answers for
        for older, newer in links:
            answered.setdefault(newer, [newer]).extend(answered.pop(older, [older]))
        for slot, slots in answered.items():
            self._answer[torch.tensor(slots)] = slot

    def answering(self, slots: torch.Tensor) -> torch.Tensor:
        """Key slots -> the slots that answer for them (-1 stays -1)."""
        return torch.where(slots >= 0, self._answer[slots.clamp(min=0)], slots)

    def keys_of(self, slot: int) -> torch.Tensor:
        return self.table.keys_of(slot)

    # -- queries -----------------------------------------------------------------------------------------------------
    def queries(self, prompts: list[EncodedPrompt]) -> torch.Tensor:
        """(B, d) routing queries of prompts, computed on the base model (nothing before the key module is edited).

        One prompt at a time: exactly the computation that routes that prompt at inference, so a stored prompt finds
        its own key at distance zero (padding a batch would change the numbers in the last bits)."""
        return torch.cat([self._query(p) for p in prompts])

    def _query(self, prompt: EncodedPrompt) -> torch.Tensor:
        if not self.keys.inside_model:
            return self.keys.encode([prompt.text])
        batch = self.task.batch([prompt], None)
        return capture(self._key_module, lambda: self.model(**batch.inputs),
                       lambda hidden: self.keys.pool(hidden, batch.mask))

    def edit_keys(self, prompts: list[EncodedPrompt], subject: str | None) -> torch.Tensor:
        """The keys an edit of these prompts stores: relation keys under key="subject" with a subject, else queries."""
        if self.keys.needs_subject and subject is not None:
            return self.keys.relation([p.text for p in prompts], [subject] * len(prompts))
        return self.queries(prompts)  # key="subject" without a subject: the whole prompt, as key="encoder"

    # -- deciding ----------------------------------------------------------------------------------------------------
    def decide(self, prompts: list[EncodedPrompt], batch: Batch, rows) -> None:
        """Set the decision for this batch: `rows(answering slots)` -> buffer rows of the layers."""
        if self.keys.inside_model:  # decided at the key module, from the prompt's hidden states
            self.decision.arm(batch.mask, lambda hidden, mask: rows(self.route_hidden(hidden, mask)))
        else:
            dist, slots = self.nearest_texts([p.text for p in prompts])
            threshold = self.config.resolved_threshold()
            self.decision.fix(rows(self.answering(torch.where(dist < threshold, slots, torch.full_like(slots, -1)))))

    def route_hidden(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Keys read inside the model: hidden states (B, T, d) at the key module -> answering slots (B,), -1: base."""
        queries = self.keys.pool(hidden, mask).float().cpu()  # the key table lives on the CPU
        return self.answering(self.table.route(queries, self.config.resolved_threshold()))

    def nearest(self, prompt: EncodedPrompt) -> Candidate | None:
        """The prompt's nearest edit, under the threshold or not, with its answering slot; None if none. Under
        key="subject" an edit the relation check admits comes before a nearer one it turned away (`Candidate.rival`)."""
        if self.keys.inside_model:
            dist, slot = self.table.nearest(self.queries([prompt]))
            found = Candidate(float(dist[0]), int(slot[0]))
        else:
            found = self.weigh_texts([prompt.text])[0]
        if found.slot < 0:
            return None  # key="subject": the prompt names no edited subject
        return found._replace(slot=int(self.answering(torch.tensor([found.slot]))[0]))

    def nearest_texts(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(distance (B,), slot (B,)) of each text's nearest edit that may route it, for keys computed outside the
        model; an edit the relation check turned away counts as infinitely far. Slot -1 and distance inf if there is
        no candidate (key="subject": the text names no edited subject)."""
        found = self.weigh_texts(texts)
        dists = torch.tensor([c.distance if c.rival is None else float("inf") for c in found])
        return dists, torch.tensor([c.slot for c in found], dtype=torch.long)

    def weigh_texts(self, texts: list[str]) -> list[Candidate]:
        """Each text's best candidate (see `nearest`). With key="subject", the candidates are the edits whose subject
        the text names (by relation, then the relation check) and the edits made without a subject (by the whole
        text, the distance rescaled to the subject key's threshold); Candidate(inf, -1) if there are none."""
        if not self.keys.needs_subject or (self.unnamed and len(self.unnamed) == len(self._live)):
            dists, slots = self.table.nearest(self.keys.encode(texts))  # no edit names a subject: key="encoder"
            if self.keys.needs_subject:
                dists = self.on_subject_scale(dists)
            return [Candidate(float(d), int(s)) for d, s in zip(dists, slots)]
        unnamed = sorted(self.unnamed)
        whole = self.keys.encode(texts) if unnamed else None  # the queries key="encoder" would route by
        best = []
        for row, text in enumerate(texts):
            found = [c for form, candidates in self.subjects.find(text).items()
                     for c in self._weigh_by_relation(text, form, candidates)]
            if unnamed:
                distance, slot = self.table.nearest_among(whole[row], unnamed)
                found.append(Candidate(float(self.on_subject_scale(torch.tensor([distance]))[0]), slot))
            best.append(min(found, key=Candidate.order, default=Candidate(float("inf"), -1)))
        return best

    def _weigh_by_relation(self, text: str, form: str, candidates: list[int]) -> list[Candidate]:
        """The edits `text` names by `form`, each weighed by relation. Edits whose subject was inferred are compared
        by the clauses masked over the words they share (`EditConfig.mask_shared_words`)."""
        query = self.keys.relation([text], [form])[0]
        shared = [c for c in candidates if c in self.inferred] if self.config.mask_shared_words else []
        distances = self.table.nearest_of(query, [c for c in candidates if c not in shared])
        distances.update({slot: self._shared_distance(text, form, slot, query) for slot in shared})
        if self.relations is None:
            return [Candidate(distance, slot) for slot, distance in distances.items()]
        forms = self.relations.form_distances(query)
        verdicts: dict[int, Verdict] = {slot: self.relations.weigh(query, distance, self.profile(slot), forms)
                                        for slot, distance in distances.items()}
        return [Candidate(v.distance, slot, v.rival, v.by_extra_key) for slot, v in verdicts.items()]

    def profile(self, slot: int) -> Profile:
        """The bank's profile of an edit of a named subject (its relation and extra keys), made on first use."""
        assert self.relations is not None, "profiles exist under relation_check='bank'"
        if slot not in self._profiles:
            self._profiles[slot] = self.relations.profile(self.table.keys_of(slot))
        return self._profiles[slot]

    def _shared_distance(self, text: str, form: str, slot: int, query: torch.Tensor) -> float:
        """The distance of `text` to an edit whose subject was inferred: per prompt, its stored key against the
        input's relation, or both clauses masked over the words they share (`shared_relation_texts`)."""
        rows, subject = self.table.keys_of(slot), self.subjects.subject_of(slot)
        prompts = self.inferred[slot]
        if len(rows) != len(prompts):  # keys not one per prompt: compare by the stored keys
            return self.table.nearest_among(query, [slot])[0]
        best = float("inf")
        for prompt, key in zip(prompts, rows):
            pair = shared_relation_texts(prompt, subject, text, form)
            if pair is None:
                ours, theirs = key, query
            else:
                ours, theirs = self.keys.encode(list(pair))
            probe = KeyTable(ours.shape[-1], self.table.distance)
            probe.add(ours.reshape(1, -1), slot=0)
            best = min(best, float(probe.nearest(theirs.reshape(1, -1))[0][0]))
        return best

    def on_subject_scale(self, whole: torch.Tensor) -> torch.Tensor:
        """key="subject": whole-prompt distances (edits without a subject) put on the scale of `threshold`, such that a
        distance is under `threshold` exactly when it was under `unnamed_threshold` (multiplying alone can round a
        distance equal to `unnamed_threshold` to just under `threshold`, and route it)."""
        threshold, unnamed = self.config.resolved_threshold(), self.config.resolved_unnamed_threshold()
        scaled = (whole.double() * (threshold / unnamed)).to(whole.dtype)
        within = whole < unnamed
        below = torch.nextafter(torch.tensor(threshold, dtype=whole.dtype), torch.tensor(0.0, dtype=whole.dtype))
        at_least = torch.tensor(threshold, dtype=whole.dtype)
        return torch.where(within, torch.minimum(scaled, below), torch.maximum(scaled, at_least))

    # -- calibration -------------------------------------------------------------------------------------------------
    def calibrated(self, prompts: list[EncodedPrompt], rate: float,
                   edit_prompts: list[EncodedPrompt] | None) -> tuple[str, float]:
        """(the config field, its value) under which at most `rate` of these unrelated prompts would reach an edit:
        against the keys of `edit_prompts`, else the stored edits (key="subject": those made without a subject, the
        only ones an unrelated prompt can reach), else each other."""
        if len(prompts) < 2 or not 0 <= rate < 1:
            raise InvalidEditError("calibration needs at least 2 prompts and 0 <= max_activation_rate < 1")
        queries = self.queries(prompts)  # key="subject": whole-prompt embeddings
        against = self.queries(edit_prompts) if edit_prompts is not None else None
        stored = sorted(self.unnamed) if self.keys.needs_subject else None
        if against is not None:
            table = KeyTable(against.shape[1], self.config.resolved_distance())
            table.add(against, slot=0)
            dist = torch.cat([table.nearest(q.unsqueeze(0))[0] for q in queries])
        elif len(self.table) and stored is None:  # one query at a time, exactly as `route` computes it
            dist = torch.cat([self.table.nearest(q.unsqueeze(0))[0] for q in queries])
        elif stored:
            dist = torch.tensor([self.table.nearest_among(q, stored)[0] for q in queries])
        else:
            probe = KeyTable(queries.shape[1], self.config.resolved_distance())
            probe.add(queries, slot=0)
            dist = probe.distances(queries).fill_diagonal_(float("inf")).min(dim=1).values
        ordered = dist.sort().values
        threshold = float(ordered[int(rate * len(ordered))])  # fewer than k+1 values lie below it
        if not threshold > 0:
            raise InvalidEditError("the calibration prompts contain duplicates of stored keys; use unrelated prompts")
        return ("unnamed_threshold" if self.keys.needs_subject else "threshold"), threshold
