"""Evaluating a method on the evaluation set: the base model's answers to every probe once, then after some edits
every metric of every record (teacher-forced and generated), locality compared on the base run's grid of batches."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.probes import normalise
from . import metrics as M
from .items import PROBE_KINDS, Item
from .spec import BenchSpec

WINDOW_BATCHES = 16  # evaluation inputs are sorted by length within windows of this many batches
BATCH_ORDER = f"longest first within windows of {WINDOW_BATCHES} batches"  # recorded in base.json: older caches
# (batched in list order) are remade. "generated" there lists which probes were generated.


def _grid(count: int, window: int, total: int) -> int:
    """How many of the `total` probes to run for the first `count`: whole windows of the fixed grid
    (`_longest_first`), so base and edited runs see identical batches; the probes past `count` are run and not read."""
    return min(total, math.ceil(count / window) * window) if count else 0


def answer_room(kind: str, cap: int, scores) -> int:
    """The length cap of the edits' generated answers (ES, Rel, Gen). The hallucination task's targets are whole
    sentences (up to ~100 tokens), so there each gets room for the longest target read (`scores`) plus 8 tokens;
    elsewhere the spec's cap (answers are short, and the archived runs used it)."""
    if kind != "hallucination":
        return cap
    return max([cap, *(len(s.tokens) + 8 for s in scores if s is not None)])


def _longest_first(texts: list[str], window: int, positions: list[int] | None = None) -> list[int]:
    """The order in which `texts` are batched: within each window of `window` consecutive positions, longest first
    (by characters, ties in list order). A batch pads to its longest input, so batching inputs of like length saves
    most of the padding where inputs vary (the hallucination task's passages run from one sentence to many). Windows
    are fixed by position (`positions`: each text's position in the full list, default its index), so the first
    whole windows of a list are batched exactly as in any longer list that starts with them: a base run and an edited
    run of the same probes see identical batches (see `_grid`)."""
    where = positions if positions is not None else range(len(texts))
    return sorted(range(len(texts)), key=lambda n: (where[n] // window, -len(texts[n])))


def _unsorted(order: list[int], outputs: list) -> list:
    restored: list = [None] * len(order)
    for n, output in zip(order, outputs):
        restored[n] = output
    return restored


@dataclass(frozen=True)
class _FromBase:
    """A locality probe's teacher-forced reading taken from the base run: what the probe reads when no edit is
    routed to it (the fields of a `TargetScore` that locality uses)."""

    predicted: list[int]
    nll: float | None

    @property
    def tokens(self) -> list[int]:  # only their number is read; the base model's argmax has as many
        return self.predicted


class Evaluator:
    def __init__(self, method, items: list[Item], spec: BenchSpec, kind: str) -> None:
        self.method, self.items, self.spec, self.kind = method, items, spec, kind
        self.flat = [(i, k, p) for i, item in enumerate(items) for k in PROBE_KINDS for p in item.probes[k]]
        self.base_answers: list[str] = []
        self.base_tf_targets: list[str | None] = []
        self.base_tf: list[list[int] | None] = []
        self.base_nll: list[float | None] = []
        self.edit_nll_base: list[float] = []  # hallucination: the base model's nll of each edit's correct sentence
        self.locality_work: dict[str, int] = {}  # of the last evaluation: probes run, and read from the base run
        self.window = max(1, spec.batch_size) * WINDOW_BATCHES
        # Which locality probes get a generated answer, compared with the base model's (the "AR" locality). On the
        # hallucination task perplexity is the locality metric and every probe carries its sentence, so only probes
        # without one are generated (their base answer is their teacher-forced target): generating a 16-token
        # continuation of every passage cost about as much as reading it.
        self.generated = [kind != "hallucination" or not p.answer for _, _, p in self.flat]

    def _generate(self, prompts: list[str], max_new_tokens: int | None = None,
                  positions: list[int] | None = None) -> list[str]:
        """Answers, batched by `_longest_first` (`positions`: each prompt's place in the full list, as for `_score`)."""
        order = _longest_first(prompts, self.window, positions)
        answers = self.method.generate([prompts[n] for n in order], max_new_tokens or self.spec.max_new_tokens,
                                       self.spec.batch_size)
        return _unsorted(order, answers)

    def _generate_where(self, prompts: list[str], wanted: list[bool]) -> list[str]:
        """Answers to the prompts that are `wanted`, "" for the others."""
        answers = [""] * len(prompts)
        chosen = [n for n, w in enumerate(wanted) if w]
        for n, answer in zip(chosen, self._generate([prompts[n] for n in chosen], positions=chosen)):
            answers[n] = answer
        return answers

    def _room_for(self, scores) -> int:
        return answer_room(self.kind, self.spec.max_new_tokens, scores)

    def _score(self, prompts: list[str], targets: list[str | None]):
        """Scores of (prompt, target) pairs, None where there is no target. Batches depend only on the pairs."""
        present = [(i, p, t) for i, (p, t) in enumerate(zip(prompts, targets)) if t]
        present = [present[n] for n in _longest_first([p + t for _, p, t in present], self.window,
                                                      [i for i, _, _ in present])]
        scores = self.method.score([p for _, p, _ in present], [t for _, _, t in present], self.spec.batch_size)
        out: list = [None] * len(prompts)
        for (i, _, _), score in zip(present, scores):
            out[i] = score
        return out

    def measure_base(self, cache: Path | None = None) -> None:
        """The base model's answers to every probe; cached in `cache` (keyed by the probes) for resumed runs."""
        prompts = [p.prompt for _, _, p in self.flat]
        if cache is not None and cache.exists():
            saved = json.loads(cache.read_text())
            if saved.get("prompts") == prompts and saved.get("batch_size") == self.spec.batch_size \
                    and saved.get("batches") == BATCH_ORDER and saved.get("generated") == self.generated \
                    and (self.kind != "hallucination" or "edit_nll" in saved):
                self.base_answers, self.base_tf_targets = saved["answers"], saved["tf_targets"]
                self.base_tf, self.base_nll = saved["tf"], saved["nll"]
                self.edit_nll_base = saved.get("edit_nll", [])
                return
        with self.method.base():
            self.base_answers = self._generate_where(prompts, self.generated)
            self.base_tf_targets = [p.answer or a or None for (_, _, p), a in zip(self.flat, self.base_answers)]
            scores = self._score(prompts, self.base_tf_targets)
            if self.kind == "hallucination":  # ERR beside the base model's perplexity of the same sentences
                edits = self._score([it.record.prompt for it in self.items], [it.record.target for it in self.items])
                self.edit_nll_base = [s.nll for s in edits]
        self.base_tf = [s.predicted if s else None for s in scores]
        self.base_nll = [s.nll if s else None for s in scores]
        if cache is not None:
            cache.write_text(json.dumps({"prompts": prompts, "batch_size": self.spec.batch_size, "batches": BATCH_ORDER,
                                         "generated": self.generated,
                                         "answers": self.base_answers, "tf_targets": self.base_tf_targets,
                                         "tf": self.base_tf, "nll": self.base_nll,
                                         **({"edit_nll": self.edit_nll_base} if self.edit_nll_base else {})}))

    def evaluate(self, upto: int, edit_of: dict[str, str], with_routes: bool) -> list[dict[str, Any]]:
        """One row per record of items[:upto] with every metric; routes of rephrases and probes if asked."""
        items = self.items[:upto]
        rows = [{"record": it.record.id, "edit": edit_of.get(it.record.id)} for it in items]
        prompts = [it.record.prompt for it in items]
        targets = [it.record.target for it in items]
        rel_scores = self._score(prompts, targets)
        rel_answers = self._generate(prompts, self._room_for(rel_scores))
        gen_pairs = [(i, r) for i, it in enumerate(items) for r in it.record.rephrases]
        gen_scores = self._score([r for _, r in gen_pairs], [items[i].record.target for i, _ in gen_pairs])
        gen_answers = self._generate([r for _, r in gen_pairs], self._room_for(gen_scores))
        for n, (row, item, score, answer) in enumerate(zip(rows, items, rel_scores, rel_answers)):
            row.update(rel_tf=score.accuracy, rel_em=M.exact_match(answer, item.record.target),
                       rel_f1=M.token_f1(answer, item.record.target), rel_nll=score.nll, rel_tokens=len(score.tokens),
                       rel_answer=answer)
            if self.edit_nll_base:
                row["rel_nll_base"] = self.edit_nll_base[n]
        per_record: dict[int, list] = {}
        for (i, rephrase), score, answer in zip(gen_pairs, gen_scores, gen_answers):
            per_record.setdefault(i, []).append((rephrase, score, answer))
        for i, row in enumerate(rows):
            found = per_record.get(i, [])
            target = items[i].record.target
            row.update(gen_tf=M.mean(s.accuracy for _, s, _ in found), gen_em=M.mean(
                M.exact_match(a, target) for _, _, a in found),
                gen_f1=M.mean(M.token_f1(a, target) for _, _, a in found),
                gen_answers=[a for _, _, a in found])
        alias_pairs = [(i, a) for i, it in enumerate(items) for a in it.aliases]
        if alias_pairs:
            self._add_aliases(rows, items, alias_pairs, with_routes)
        # locality, on the same grid of batches as the base run
        count = sum(1 for i, _, _ in self.flat if i < upto)
        span = _grid(count, self.window, len(self.flat))
        flat = self.flat[:span]
        probe_routes = self.method.routes([p.prompt for i, _, p in flat if i < upto]) \
            if with_routes or self._unrouted_from_base else None
        answers, scores = self._locality_outputs(flat, span, probe_routes)
        collected: dict[tuple[int, str], list] = {}
        for n, ((i, kind, probe), answer, score) in enumerate(zip(flat, answers, scores)):
            if i >= upto:
                continue
            tf = M.agreement(score.predicted, self.base_tf[n]) if score is not None else None
            generated = self.generated[n]
            collected.setdefault((i, kind), []).append({
                "tf": tf, "ar": float(answer == self.base_answers[n]) if generated else None,
                "answer": answer, "base": self.base_answers[n],
                "f1": M.token_f1(answer, probe.answer) if probe.answer and generated else None,
                "base_f1": M.token_f1(self.base_answers[n], probe.answer) if probe.answer and generated else None,
                "nll": score.nll if score is not None else None, "base_nll": self.base_nll[n],
                "tokens": len(score.tokens) if score is not None else None})
        for i, row in enumerate(rows):
            for kind in PROBE_KINDS:
                found = collected.get((i, kind), [])
                row[f"loc_{kind}_tf"] = M.mean(f["tf"] for f in found)
                row[f"loc_{kind}_ar"] = M.mean(f["ar"] for f in found)
                if self.kind == "hallucination" and kind in ("relation", "subject"):  # accurate sentences: ARR
                    for f in found:
                        if f["nll"] is not None:
                            row.setdefault("arr", []).append([f["nll"], f["base_nll"], f["tokens"]])
                if kind == "unrelated":
                    row["trr_f1"] = M.mean(f["f1"] for f in found)
                    row["trr_f1_base"] = M.mean(f["base_f1"] for f in found)
                    row["loc_nll"] = M.mean(f["nll"] for f in found)
                    row["loc_nll_base"] = M.mean(f["base_nll"] for f in found)
                changed = [{"probe": self.flat_prompt(i, kind, j), "base": f["base"], "now": f["answer"]}
                           for j, f in enumerate(found) if f["ar"] == 0.0]
                if changed:
                    row.setdefault("loc_changed", {})[kind] = changed
        if with_routes:
            self._add_routes(rows, items, gen_pairs, flat, upto, probe_routes)
        return rows

    def _add_aliases(self, rows, items, pairs, with_routes: bool) -> None:
        """The subject-alias prompts: answered like the prompt (teacher-forced and generated), and routed to the
        record's own edit."""
        scores = self._score([a for _, a in pairs], [items[i].record.target for i, _ in pairs])
        answers = self._generate([a for _, a in pairs])
        routes = self.method.routes([a for _, a in pairs]) if with_routes else None
        found: dict[int, list] = {}
        for n, ((i, _), score, answer) in enumerate(zip(pairs, scores, answers)):
            found.setdefault(i, []).append((score, answer, routes[n] if routes else None))
        for i, parts in found.items():
            target, row = items[i].record.target, rows[i]
            row.update(alias_tf=M.mean(s.accuracy for s, _, _ in parts),
                       alias_em=M.mean(M.exact_match(a, target) for _, a, _ in parts),
                       alias_answers=[a for _, a, _ in parts])
            if routes is not None:
                row["alias_routes"] = [{"distance": r.distance, "routed": r.routed,
                                        "own": bool(r.routed and r.edit_id == row["edit"])} for _, _, r in parts]

    @property
    def _unrouted_from_base(self) -> bool:
        return not self.spec.full_locality and self.method.unrouted_is_base

    def _locality_outputs(self, flat, span: int, routes) -> tuple[list[str], list]:
        """Answers and scores of the locality probes `flat` (the first `span` of the base run's grid).

        A method whose unrouted inputs run the untouched base model (`unrouted_is_base`: SoLA's contract, pinned bit
        for bit by tests/test_contract.py) needs to run only the probes some edit is routed to: the others are read
        from the base run, which is what running them would give. `--full-locality` runs every probe anyway."""
        prompts, targets = [p.prompt for _, _, p in flat], self.base_tf_targets[:span]
        if not self._unrouted_from_base or routes is None:  # None: the method reported no routes (no edits yet)
            return self._generate_where(prompts, self.generated[:span]), self._score(prompts, targets)
        routed = [n for n, route in enumerate(routes) if route.routed]  # routes cover the probes inside `upto`
        answers = list(self.base_answers[:span])
        scores: list = [None if tf is None else _FromBase(tf, nll)
                        for tf, nll in zip(self.base_tf[:span], self.base_nll[:span])]
        routed_generated = [n for n in routed if self.generated[n]]
        for n, answer in zip(routed_generated, self._generate([prompts[n] for n in routed_generated])):
            answers[n] = answer
        for n, score in zip(routed, self._score([prompts[n] for n in routed], [targets[n] for n in routed])):
            scores[n] = score
        self.locality_work = {"probes_run": len(routed), "probes_read_from_base": len(routes) - len(routed)}
        return answers, scores

    def read_latest(self, rows: list[dict[str, Any]], latest: dict[str, str]) -> list[dict[str, Any]]:
        """The rows as the "latest wins" reading scores them: each record of a conflicting group against the group's
        last target (its prompt and rephrases; the generated answers are the same, only the expected one changes)."""
        index = {it.record.id: it for it in self.items}
        changed = [(n, latest[row["record"]]) for n, row in enumerate(rows)
                   if normalise(latest.get(row["record"], ""))
                   not in ("", normalise(index[row["record"]].record.target))]
        out = [dict(row) for row in rows]
        if not changed:
            return out
        pairs = [(n, p, t) for n, t in changed for p in (index[rows[n]["record"]].record.prompt,
                                                      *index[rows[n]["record"]].record.rephrases)]
        scores = iter(self._score([p for _, p, _ in pairs], [t for _, _, t in pairs]))
        for n, target in changed:
            record, row = index[rows[n]["record"]].record, out[n]
            rel, gen = next(scores), [next(scores) for _ in record.rephrases]
            row.update(rel_tf=rel.accuracy, rel_em=M.exact_match(row["rel_answer"], target),
                       rel_f1=M.token_f1(row["rel_answer"], target), read_against=target,
                       gen_tf=M.mean(s.accuracy for s in gen),
                       gen_em=M.mean(M.exact_match(a, target) for a in row["gen_answers"]),
                       gen_f1=M.mean(M.token_f1(a, target) for a in row["gen_answers"]))
            if "routes" in row:  # a route is right if the edit it reached answers the target this reading expects
                row["routes"] = [{**r, "right_target": bool(r["routed"] and r["nearest"] in index and normalise(
                    index[r["nearest"]].record.target) == normalise(target))} for r in row["routes"]]
        return out

    def flat_prompt(self, i: int, kind: str, j: int) -> str:
        return self.items[i].probes[kind][j].prompt

    def _add_routes(self, rows, items, gen_pairs, flat, upto, probe_routes) -> None:
        routes = self.method.routes([r for _, r in gen_pairs])
        if routes is None:
            return
        owner = {row["edit"]: row["record"] for row in rows}
        target_of = {it.record.id: normalise(it.record.target) for it in items}
        for (i, _), route in zip(gen_pairs, routes):
            row = rows[i]
            nearest = owner.get(route.edit_id)
            right = route.routed and nearest is not None and target_of.get(nearest) == target_of[row["record"]]
            row.setdefault("routes", []).append({
                "nearest": nearest, "distance": route.distance, "routed": route.routed,
                "own": route.routed and nearest == row["record"], "right_target": bool(right)})
        for row, route in zip(rows, self.method.routes([it.record.prompt for it in items])):
            row["prompt_route"] = {"distance": route.distance, "routed": route.routed,
                                   "own": bool(route.routed and route.edit_id == row["edit"])}
        inside = [f for f in flat if f[0] < upto]
        for (i, kind, _), route in zip(inside, probe_routes):
            rows[i].setdefault("probe_routes", {}).setdefault(kind, []).append(
                {"nearest": owner.get(route.edit_id), "distance": route.distance, "routed": route.routed})
