"""The router: which edit, if any, answers an input, decided once from its prompt.

It owns everything routing needs per edit, keyed by the edit's slot: its keys in the `KeyTable` (one row per prompt),
its subject in the `SubjectIndex` (key="subject"; edits made without a subject are reached by the whole prompt), and
the answer map: key slot -> the slot that answers for those keys (itself, or the live edit that superseded it). The
other index spaces are the ledger's (edit ids) and the residency's (buffer rows); `Editor` maps between them.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import EditConfig
from ..errors import InvalidEditError
from ..nn import Decision, RoutedLoraLayer
from ..nn.injection import capture, modules
from ..prompts import EncodedPrompt
from ..tasks import Batch, Task
from .keys import key_strategy
from .subjects import SubjectIndex, shared_relation_texts
from .table import KeyTable


class Router:
    def __init__(self, config: EditConfig, model: nn.Module, task: Task, decision: Decision) -> None:
        self.config, self.model, self.task, self.decision = config, model, task, decision
        self.keys = key_strategy(config.key, config.encoder)
        if self.keys.inside_model:
            self._hook_key_module()
        self.table = KeyTable(self.keys.dim if not self.keys.inside_model else None, config.resolved_distance())
        self.subjects = SubjectIndex()  # key="subject": which edits an input names
        self.unnamed: set[int] = set()  # key="subject": slots of edits made without a subject (whole-prompt keys)
        self.inferred: dict[int, tuple[str, ...]] = {}  # key="subject": the prompts of edits whose subject was
        # read from them (`EditConfig.mask_shared_words`)
        self._live: set[int] = set()
        self._answer = torch.zeros(0, dtype=torch.long)

    def _hook_key_module(self) -> None:
        name = self.config.key_module or self.config.layers[0]
        module = modules(self.model, [name], "key_module")[name]
        self._key_module = module.base_layer if isinstance(module, RoutedLoraLayer) else module

        def read_query(_module, args, kwargs):
            self.decision.decide_from(args[0] if args else kwargs.get("hidden_states"))

        self._key_module.register_forward_pre_hook(read_query, with_kwargs=True)

    def __len__(self) -> int:
        """How many keys the table holds."""
        return len(self.table)

    # -- per-edit state ----------------------------------------------------------------------------------------------
    def add(self, slot: int, keys: torch.Tensor, subject: str | None, aliases: tuple[str, ...] = (),
            inferred_from: tuple[str, ...] = ()) -> None:
        """An edit's keys (one row per prompt). `inferred_from`: its prompts, if its subject was read from them."""
        self._claim(slot, subject, aliases, inferred_from)
        self.table.add(keys, slot)

    def add_many(self, slots: list[int], keys: torch.Tensor, counts: torch.Tensor, subjects: list[str | None],
                 aliases: list[tuple[str, ...]] | None = None,
                 inferred_from: list[tuple[str, ...]] | None = None) -> None:
        """Many edits at once (opening a store): `keys` stacked in slot order, `counts[i]` rows for `slots[i]`."""
        for n, (slot, subject) in enumerate(zip(slots, subjects)):
            self._claim(slot, subject, aliases[n] if aliases else (), inferred_from[n] if inferred_from else ())
        self.table.add_rows(keys, torch.repeat_interleave(torch.tensor(slots, dtype=torch.long), counts))

    def _claim(self, slot: int, subject: str | None, aliases: tuple[str, ...] = (),
               inferred_from: tuple[str, ...] = ()) -> None:
        if slot >= len(self._answer):
            grown = max(8, 2 * len(self._answer), slot + 1)
            self._answer = torch.cat([self._answer, torch.arange(len(self._answer), grown)])
        self._answer[slot] = slot
        self._live.add(slot)
        if self.keys.needs_subject:
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

    def nearest(self, prompt: EncodedPrompt) -> tuple[float, int] | None:
        """(distance, answering slot) of the prompt's nearest edit, under the threshold or not; None if none."""
        if self.keys.inside_model:
            dist, slot = self.table.nearest(self.queries([prompt]))
        else:
            dist, slot = self.nearest_texts([prompt.text])
        if int(slot[0]) < 0:
            return None  # key="subject": the prompt names no edited subject
        return float(dist[0]), int(self.answering(slot)[0])

    def nearest_texts(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(distance (B,), slot (B,)) of each text's nearest edit, for keys computed outside the model. With
        key="subject", the candidates are the edits whose subject the text names (by relation) and the edits made
        without a subject (by the whole text, the distance rescaled to the subject key's threshold); slot -1 and
        distance inf if there are none."""
        if not self.keys.needs_subject:
            return self.table.nearest(self.keys.encode(texts))
        if self.unnamed and len(self.unnamed) == len(self._live):  # no edit names a subject: key="encoder"
            dists, slots = self.table.nearest(self.keys.encode(texts))
            return self.on_subject_scale(dists), slots
        dists, slots = torch.full((len(texts),), float("inf")), torch.full((len(texts),), -1, dtype=torch.long)
        unnamed = sorted(self.unnamed)
        whole = self.keys.encode(texts) if unnamed else None  # the queries key="encoder" would route by
        for row, text in enumerate(texts):
            found = [self._nearest_by_relation(text, form, candidates)
                     for form, candidates in self.subjects.find(text).items()]
            if unnamed:
                distance, slot = self.table.nearest_among(whole[row], unnamed)
                found.append((float(self.on_subject_scale(torch.tensor([distance]))[0]), slot))
            for distance, slot in found:
                if distance < dists[row]:
                    dists[row], slots[row] = distance, slot
        return dists, slots

    def _nearest_by_relation(self, text: str, form: str, candidates: list[int]) -> tuple[float, int]:
        """(distance, slot) of the nearest of the edits `text` names by `form`, by relation. Edits whose subject was
        inferred are compared by the clauses masked over the words they share (`EditConfig.mask_shared_words`); the
        first (oldest) of equal distances wins, as in the key table."""
        query = self.keys.relation([text], [form])[0]
        shared = [c for c in candidates if c in self.inferred] if self.config.mask_shared_words else []
        plain = [c for c in candidates if c not in shared]
        found = [self.table.nearest_among(query, plain)] if plain else []
        found += [(self._shared_distance(text, form, slot, query), slot) for slot in shared]
        return min(found, key=lambda pair: (pair[0], pair[1]))

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
