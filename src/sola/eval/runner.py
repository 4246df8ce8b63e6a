"""Sequential lifelong editing: T edits one after another, each checked right after it is made (ES), and every edit
re-checked at checkpoints (after 10, 100, ... edits) and at the end, teacher-forced and by greedy generation.

Locality is measured three ways (see `sola.data.probes`): unrelated questions, the same relation about other subjects,
and other relations about the same subject. "Unchanged" always means "as the base model answers", computed by the same
method with its edits switched off, on exactly the same batches (so an input no edit touches compares bit for bit).
"""

from __future__ import annotations

import json
import math
import os
import platform
import random
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..data import Dataset, Probe, Record, load_dataset
from ..data.probes import (collisions, conflicts, latest_targets, normalise, relation_groups, relation_probes,
                           rephrase_form, subject_probes)
from ..config import STORED_DEFAULTS
from ..errors import ConfigError, DataError
from . import metrics as M

PROBE_KINDS = ("unrelated", "relation", "subject")
SCHEMA = 1


@dataclass
class BenchSpec:
    """What `sola bench` runs. Every field is written to results.json."""

    method: str = "sola"
    dataset: str = "zsre"
    edits: int = 1000
    data: str | None = None  # a data directory or a file of the dataset's format
    model: str | None = None  # None: the embedded SmolLM2-135M-Instruct
    key: str | None = None  # None: the method's default
    layers: list[str] | None = None
    threshold: float | str | None = None  # a number, "calibrate" (1 % of held-out NQ questions), or None (default)
    checkpoints: list[int] = field(default_factory=lambda: [10, 100])
    seed: int = 0
    batch_size: int = 16
    max_new_tokens: int = 16
    subject_probes: int = 1  # same-subject other-relation probes per record
    locality: bool = True  # False: no locality probes at all (a run that measures only the edits)
    reuse_adapters: str | None = None  # a previous run's directory whose trained LoRAs are imported, not retrained
    # False: a locality probe that no edit is routed to is read from the base run instead of being run again, for
    # methods whose unrouted inputs compute exactly the base model (SoLA; `EditingMethod.unrouted_is_base`)
    full_locality: bool = False
    prompt_format: str = "raw"
    config: dict[str, Any] = field(default_factory=dict)  # further EditConfig fields (e.g. {"rank": 8})


@dataclass
class _Item:
    record: Record
    probes: dict[str, list[Probe]]


# -- building the evaluation set ----------------------------------------------------------------------------------


def _nq_pool(spec: BenchSpec) -> list[Record]:
    try:
        source = spec.data if spec.data and not Path(spec.data).is_file() else None
        return load_dataset("nq", source).records
    except DataError:
        return []


def build_items(dataset: Dataset, nq: list[Record], seed: int, subject_count: int) -> list[_Item]:
    """The probes of every record. QA sets (zsRE) carry unrelated NQ questions as their locality; CounterFact carries
    same-relation prompts. The other faces are built from the records' own templates (and NQ questions)."""
    records = dataset.records
    groups = relation_groups(records) if dataset.kind in ("qa", "completion") else {}
    used = {_question(p.prompt) for r in records for p in r.locality}
    spare = [q for q in nq if normalise(q.prompt) not in used]
    rng = random.Random(f"{seed}:unrelated")
    unrelated_for_completion = rng.sample(spare, min(len(spare), len(records))) if dataset.kind == "completion" else []
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
        items.append(_Item(record, probes))
    return items


def _question(prompt: str) -> str:
    """An NQ question as it can be compared across files (zsRE prefixes its copies with "nq question: ")."""
    return normalise(prompt.removeprefix("nq question: "))


def calibration_questions(items: list[_Item], nq: list[Record], count: int = 500) -> list[str]:
    """Held-out NQ questions: none of them is a probe of this run."""
    used = {_question(p.prompt) for item in items for ps in item.probes.values() for p in ps}
    return [q.prompt for q in nq if normalise(q.prompt) not in used][:count]


# -- the method ---------------------------------------------------------------------------------------------------


def build_method(spec: BenchSpec, store_path: Path):
    from ..methods import BASELINES, METHODS

    if spec.method not in METHODS:
        raise ConfigError(f"unknown method {spec.method!r}; available: {', '.join(METHODS)}")
    if spec.method in BASELINES:
        return _build_baseline(spec, store_path, BASELINES[spec.method])
    from ..config import EditConfig
    from ..editor import Editor
    from ..methods import SolaMethod
    from ..store import Store

    # every record a new fact, as the papers evaluate; {"supersede": "auto"} in spec.config reads updates as updates.
    # Every edit of the stream is stored, converged or not: a failed edit counts against the method, as in the papers.
    config = EditConfig(prompt_format=spec.prompt_format, seed=spec.seed, supersede="never", on_no_converge="commit")
    if spec.key:
        config = config.replace(key=spec.key)
    if spec.layers:
        config = config.replace(layers=list(spec.layers))
    if isinstance(spec.threshold, (int, float)):
        config = config.replace(threshold=float(spec.threshold))
    if spec.config:
        config = EditConfig.from_dict({**config.to_dict(), **spec.config})
    resuming = Store.exists(store_path)
    editor = Editor.from_pretrained(spec.model, config=None if resuming else config, store=store_path)
    reuse = Store.open(Path(spec.reuse_adapters) / "store") if spec.reuse_adapters else None
    if reuse is not None:
        _check_reusable(reuse.manifest, editor)
    return SolaMethod(editor, reuse=reuse)


def _build_baseline(spec: BenchSpec, store_path: Path, editor_class):
    from ..methods import SnapshotMethod

    if spec.key or spec.reuse_adapters:
        raise ConfigError(f"--key and --reuse-adapters are SoLA options; {spec.method} has its own routing")
    if Path(store_path, "snapshot.json").is_file():
        return SnapshotMethod(editor_class.load(store_path, spec.model), store_path)
    fields: dict[str, Any] = {"prompt_format": spec.prompt_format, "seed": spec.seed}
    known = {f for f in editor_class.config_class.__dataclass_fields__}
    if spec.layers:
        fields.update({"layers": list(spec.layers)} if "layers" in known else {"layer": spec.layers[0]})
    if isinstance(spec.threshold, (int, float)):
        if "radius" in known:
            fields["radius"] = float(spec.threshold)
        elif "epsilon" in known:  # ELDER: a Hamming distance
            fields["epsilon"] = int(spec.threshold)
        else:
            raise ConfigError(f"--threshold: {spec.method} does not route")
    config = editor_class.config_class.from_dict({**fields, **spec.config})
    return SnapshotMethod(editor_class.from_pretrained(spec.model, config=config), store_path)


_TRAINING_FIELDS = ("layers", "rank", "lora_alpha", "prompt_format", "optimizer", "learning_rate", "max_steps",
                    "loss_bound", "factor_dtype", "seed")


def _check_reusable(manifest: dict, editor) -> None:
    theirs, ours = {**STORED_DEFAULTS, **manifest["config"]}, editor.config.to_dict()
    differing = [f for f in _TRAINING_FIELDS if theirs.get(f) != ours.get(f)]
    if ours.get("supersede") == "auto":
        differing.append("supersede=auto here: an update also trains on the wordings of the edit it replaces")
    for part in ("config_hash", "weights_hash"):
        if manifest["model"].get(part) != editor.fingerprint.get(part):
            differing.append(f"model {part}")
    if differing:
        raise ConfigError(f"--reuse-adapters: that run trained its LoRAs differently ({', '.join(differing)}); only "
                          "the key strategy and threshold may differ")


# -- evaluation ---------------------------------------------------------------------------------------------------


def _grid(count: int, batch: int) -> int:
    """Evaluate whole batches of the fixed grid, so base and edited runs see identical batches."""
    return min(count, math.ceil(count / batch) * batch) if count else 0


@dataclass(frozen=True)
class _FromBase:
    """A locality probe's teacher-forced reading taken from the base run: what the probe reads when no edit is
    routed to it (the fields of a `TargetScore` that locality uses)."""

    predicted: list[int]
    nll: float | None

    @property
    def tokens(self) -> list[int]:  # only their number is read; the base model's argmax has as many
        return self.predicted


class _Evaluator:
    def __init__(self, method, items: list[_Item], spec: BenchSpec, kind: str) -> None:
        self.method, self.items, self.spec, self.kind = method, items, spec, kind
        self.flat = [(i, k, p) for i, item in enumerate(items) for k in PROBE_KINDS for p in item.probes[k]]
        self.base_answers: list[str] = []
        self.base_tf_targets: list[str | None] = []
        self.base_tf: list[list[int] | None] = []
        self.base_nll: list[float | None] = []
        self.locality_work: dict[str, int] = {}  # of the last evaluation: probes run, and read from the base run

    def _generate(self, prompts: list[str]) -> list[str]:
        return self.method.generate(prompts, self.spec.max_new_tokens, self.spec.batch_size)

    def _score(self, prompts: list[str], targets: list[str | None]):
        """Scores of (prompt, target) pairs, None where there is no target. Batches depend only on positions."""
        present = [(i, p, t) for i, (p, t) in enumerate(zip(prompts, targets)) if t]
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
            if saved.get("prompts") == prompts and saved.get("batch_size") == self.spec.batch_size:
                self.base_answers, self.base_tf_targets = saved["answers"], saved["tf_targets"]
                self.base_tf, self.base_nll = saved["tf"], saved["nll"]
                return
        with self.method.base():
            self.base_answers = self._generate(prompts)
            self.base_tf_targets = [p.answer or a or None for (_, _, p), a in zip(self.flat, self.base_answers)]
            scores = self._score(prompts, self.base_tf_targets)
        self.base_tf = [s.predicted if s else None for s in scores]
        self.base_nll = [s.nll if s else None for s in scores]
        if cache is not None:
            cache.write_text(json.dumps({"prompts": prompts, "batch_size": self.spec.batch_size,
                                         "answers": self.base_answers, "tf_targets": self.base_tf_targets,
                                         "tf": self.base_tf, "nll": self.base_nll}))

    def evaluate(self, upto: int, edit_of: dict[str, str], with_routes: bool) -> list[dict[str, Any]]:
        """One row per record of items[:upto] with every metric; routes of rephrases and probes if asked."""
        items = self.items[:upto]
        rows = [{"record": it.record.id, "edit": edit_of.get(it.record.id)} for it in items]
        prompts = [it.record.prompt for it in items]
        targets = [it.record.target for it in items]
        rel_scores = self._score(prompts, targets)
        rel_answers = self._generate(prompts)
        gen_pairs = [(i, r) for i, it in enumerate(items) for r in it.record.rephrases]
        gen_scores = self._score([r for _, r in gen_pairs], [items[i].record.target for i, _ in gen_pairs])
        gen_answers = self._generate([r for _, r in gen_pairs])
        for row, item, score, answer in zip(rows, items, rel_scores, rel_answers):
            row.update(rel_tf=score.accuracy, rel_em=M.exact_match(answer, item.record.target),
                       rel_f1=M.token_f1(answer, item.record.target), rel_nll=score.nll, rel_tokens=len(score.tokens),
                       rel_answer=answer)
        per_record: dict[int, list] = {}
        for (i, rephrase), score, answer in zip(gen_pairs, gen_scores, gen_answers):
            per_record.setdefault(i, []).append((rephrase, score, answer))
        for i, row in enumerate(rows):
            found = per_record.get(i, [])
            target = items[i].record.target
            row.update(gen_tf=M.mean(s.accuracy for _, s, _ in found), gen_em=M.mean(
                M.exact_match(a, target) for _, _, a in found), gen_f1=M.mean(M.token_f1(a, target) for _, _, a in found),
                gen_answers=[a for _, _, a in found])
        # locality, on the same grid of batches as the base run
        count = sum(1 for i, _, _ in self.flat if i < upto)
        span = _grid(count, self.spec.batch_size)
        flat = self.flat[:span]
        probe_routes = self.method.routes([p.prompt for i, _, p in flat if i < upto]) \
            if with_routes or self._unrouted_from_base else None
        answers, scores = self._locality_outputs(flat, span, probe_routes)
        collected: dict[tuple[int, str], list] = {}
        for n, ((i, kind, probe), answer, score) in enumerate(zip(flat, answers, scores)):
            if i >= upto:
                continue
            tf = M.agreement(score.predicted, self.base_tf[n]) if score is not None else None
            collected.setdefault((i, kind), []).append({
                "tf": tf, "ar": float(answer == self.base_answers[n]), "answer": answer, "base": self.base_answers[n],
                "f1": M.token_f1(answer, probe.answer) if probe.answer else None,
                "base_f1": M.token_f1(self.base_answers[n], probe.answer) if probe.answer else None,
                "nll": score.nll if score is not None else None, "base_nll": self.base_nll[n],
                "tokens": len(score.tokens) if score is not None else None})
        for i, row in enumerate(rows):
            for kind in PROBE_KINDS:
                found = collected.get((i, kind), [])
                row[f"loc_{kind}_tf"] = M.mean(f["tf"] for f in found)
                row[f"loc_{kind}_ar"] = M.mean(f["ar"] for f in found)
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

    @property
    def _unrouted_from_base(self) -> bool:
        return not self.spec.full_locality and getattr(self.method, "unrouted_is_base", False)

    def _locality_outputs(self, flat, span: int, routes) -> tuple[list[str], list]:
        """Answers and scores of the locality probes `flat` (the first `span` of the base run's grid).

        A method whose unrouted inputs run the untouched base model (`unrouted_is_base`: SoLA's contract, pinned bit
        for bit by tests/test_contract.py) needs to run only the probes some edit is routed to: the others are read
        from the base run, which is what running them would give. `--full-locality` runs every probe anyway."""
        prompts, targets = [p.prompt for _, _, p in flat], self.base_tf_targets[:span]
        if not self._unrouted_from_base or routes is None:  # None: the method reported no routes (no edits yet)
            return self._generate(prompts), self._score(prompts, targets)
        routed = [n for n, route in enumerate(routes) if route.routed]  # routes cover the probes inside `upto`
        answers = list(self.base_answers[:span])
        scores: list = [None if tf is None else _FromBase(tf, nll)
                        for tf, nll in zip(self.base_tf[:span], self.base_nll[:span])]
        for n, answer in zip(routed, self._generate([prompts[n] for n in routed])):
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
                   if normalise(latest.get(row["record"], "")) not in ("", normalise(index[row["record"]].record.target))]
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
        inside = [f for f in flat if f[0] < upto]
        for (i, kind, _), route in zip(inside, probe_routes):
            rows[i].setdefault("probe_routes", {}).setdefault(kind, []).append(
                {"nearest": owner.get(route.edit_id), "distance": route.distance, "routed": route.routed})


# -- aggregation --------------------------------------------------------------------------------------------------


def summarise(rows: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """Means over records of every metric, in the field's and the SoLA paper's names."""
    def avg(name):
        return M.mean(r.get(name) for r in rows)

    out: dict[str, Any] = {"records": len(rows)}
    out["teacher_forced"] = {"rel": avg("rel_tf"), "gen": avg("gen_tf"),
                             **{f"loc_{k}": avg(f"loc_{k}_tf") for k in PROBE_KINDS}}
    out["autoregressive"] = {"rel_em": avg("rel_em"), "rel_f1": avg("rel_f1"), "gen_em": avg("gen_em"),
                             "gen_f1": avg("gen_f1"), **{f"loc_{k}": avg(f"loc_{k}_ar") for k in PROBE_KINDS}}
    out["paper"] = {"ES": avg("es_em"), "ES_tf": avg("es_tf"), "ERR": avg("rel_f1"), "TRR": avg("trr_f1"),
                    "TRR_base": avg("trr_f1_base")}
    if kind == "hallucination":
        out["paper"].update(
            ERR_ppl=M.perplexity([r["rel_nll"] for r in rows], [r["rel_tokens"] for r in rows]),
            TRR_ppl=M.perplexity([r["loc_nll"] for r in rows if r.get("loc_nll") is not None]),
            TRR_ppl_base=M.perplexity([r["loc_nll_base"] for r in rows if r.get("loc_nll_base") is not None]))
    routed = [x for r in rows for x in r.get("routes", [])]
    if routed:
        own = [r for r in rows if r.get("routes")]
        given_right = [r["gen_em"] for r in own if all(x["right_target"] for x in r["routes"])]
        out["routing"] = {
            "rephrase_routed": M.mean(float(x["routed"]) for x in routed),
            "rephrase_own_edit": M.mean(float(x["own"]) for x in routed),
            "rephrase_right_target": M.mean(float(x["right_target"]) for x in routed),
            "gen_em_given_right_route": M.mean(given_right), "records_with_right_route": len(given_right),
            "rephrase_distance": M.quantiles([x["distance"] for x in routed if x["distance"] is not None]),
        }
        for k in PROBE_KINDS:
            probes = [x for r in rows for x in r.get("probe_routes", {}).get(k, [])]
            if probes:
                out["routing"][f"{k}_activated"] = M.mean(float(x["routed"]) for x in probes)
                out["routing"][f"{k}_distance"] = M.quantiles([x["distance"] for x in probes
                                                               if x["distance"] is not None])
    return out


# -- the run ------------------------------------------------------------------------------------------------------


def _code_version() -> str:
    from .. import __version__

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).parent).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=5, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", ""
    return f"{__version__}+{commit}{'.dirty' if dirty else ''}" if commit else __version__


def _machine() -> dict[str, Any]:
    import torch

    return {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpus": os.cpu_count(), "threads": torch.get_num_threads()}


def run(spec: BenchSpec, out: str | os.PathLike, progress: bool = True) -> dict[str, Any]:
    """Run the benchmark and write results.json, results.md and plots into `out`. Re-running into the same `out`
    resumes after the last edit it committed."""
    from .report import write_report

    started = time.perf_counter()
    code_version = _code_version()  # the code that runs, read before it runs (the checkout may move meanwhile)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    spec_file = out / "spec.json"
    # a field added since the run started reads as its default
    if spec_file.exists() and {**asdict(BenchSpec()), **json.loads(spec_file.read_text())} != asdict(spec):
        raise ConfigError(f"{out} holds a run with another spec ({spec_file}); use a new --out directory")
    spec_file.write_text(json.dumps(asdict(spec), indent=1))
    dataset = load_dataset(spec.dataset, spec.data)
    if spec.edits < 1 or spec.edits > len(dataset):
        raise ConfigError(f"--edits {spec.edits}: {dataset.name} has {len(dataset)} records ({dataset.path})")
    held_out = dataset.records[spec.edits:]
    dataset = dataset.head(spec.edits)
    nq = _nq_pool(spec)
    probed = build_items(dataset, nq, spec.seed, spec.subject_probes)
    # without locality the probes are dropped, but kept out of calibration as they would be: the same threshold
    items = probed if spec.locality else [_Item(it.record, {kind: [] for kind in PROBE_KINDS}) for it in probed]
    method = build_method(spec, out / "store")
    timings: dict[str, float] = {}

    t = time.perf_counter()
    threshold_note = "default"
    if spec.threshold == "calibrate":
        questions = calibration_questions(probed, nq)
        if len(questions) < 50:
            raise DataError("--threshold calibrate needs NQ questions (nq/NQ-open.dev.jsonl in the data directory)")
        threshold = method.editor.calibrate_threshold(questions, 0.01, against=[r.prompt for r in dataset.records])
        threshold_note = f"calibrated: 1 % of {len(questions)} held-out NQ questions within it of the edit prompts" \
            if threshold is not None else "not calibrated: the method keeps its own threshold, if it routes"
        if getattr(method.editor.config, "key", None) == "subject":
            threshold_note = (f"the subject key's own threshold is its default; unnamed_threshold (edits without a "
                              f"subject) {threshold_note}")
    elif spec.threshold is not None:
        threshold_note = "given"
    timings["calibrate_s"] = time.perf_counter() - t

    evaluator = _Evaluator(method, items, spec, dataset.kind)
    t = time.perf_counter()
    evaluator.measure_base(out / "base.json")
    timings["base_s"] = time.perf_counter() - t

    progress_file = out / "progress.jsonl"
    done = [json.loads(line) for line in progress_file.read_text().splitlines()] if progress_file.exists() else []
    edits_made = len(method.editor.edits(include_rolled_back=True)) if hasattr(method, "editor") else len(done)
    if hasattr(method, "finish") and edits_made < len(done):  # a snapshot method resumes from its last save
        done = done[:edits_made]
        progress_file.write_text("".join(json.dumps(row) + "\n" for row in done))
    if edits_made == len(done) + 1 and hasattr(method, "last_edit"):
        # stopped after an edit was committed but before its row was written: the model is in the state right after
        # that edit, so its ES can be measured now
        row = _edited_row(method, dataset.records[len(done)], method.last_edit(), spec)
        row["wall_s"] = (done[-1].get("wall_s") or 0.0) if done else 0.0  # its own time was not recorded
        done.append(row)
        with progress_file.open("a") as handle:
            handle.write(json.dumps(done[-1]) + "\n")
    if edits_made != len(done):
        raise ConfigError(f"{out}: the store holds {edits_made} edits but progress.jsonl {len(done)}; start a new --out")
    edit_of = {row["record"]: row["edit"] for row in done}
    # wall time over sessions: a resumed run starts from the time its last committed edit was made at
    earlier = done[-1].get("wall_s") if done else 0.0
    if earlier is None:  # progress written before rows carried it
        timings["earlier_sessions_unrecorded"] = True
    earlier = earlier or 0.0
    if done:
        timings["resumed_after_edits"] = len(done)
    checkpoints = sorted({c for c in spec.checkpoints if 0 < c < spec.edits} | {spec.edits})
    checkpoint_file = out / "checkpoints.jsonl"
    results_at = [json.loads(line) for line in checkpoint_file.read_text().splitlines()] \
        if checkpoint_file.exists() else []
    if any(c["edits"] > len(done) for c in results_at):  # measured after edits a snapshot method lost: again
        results_at = [c for c in results_at if c["edits"] <= len(done)]
        checkpoint_file.write_text("".join(json.dumps(c) + "\n" for c in results_at))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=spec.edits, initial=len(done), unit="edit", desc=f"{spec.method} {spec.dataset}")
    t = time.perf_counter()
    final_rows: list[dict[str, Any]] = []
    try:
        for index in range(len(done), spec.edits):
            record = dataset.records[index]
            info = method.edit(record)
            edit_of[record.id] = info["id"]
            row = _edited_row(method, record, info, spec)
            row["wall_s"] = round(earlier + time.perf_counter() - started, 3)
            done.append(row)
            with progress_file.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
            if bar is not None:
                bar.update(1)
            if index + 1 in checkpoints and index + 1 not in {c["edits"] for c in results_at}:
                rows = evaluator.evaluate(index + 1, edit_of, with_routes=index + 1 == spec.edits)
                for r, d in zip(rows, done):
                    r.update(es_tf=d["es_tf"], es_em=d["es_em"])
                results_at.append({"edits": index + 1, "metrics": summarise(rows, dataset.kind),
                                   "state": method_state(method.describe())})
                with checkpoint_file.open("a") as handle:
                    handle.write(json.dumps(results_at[-1]) + "\n")
                if index + 1 == spec.edits:
                    final_rows = rows
    finally:
        if bar is not None:
            bar.close()
    timings["edit_and_checkpoints_s"] = time.perf_counter() - t
    if hasattr(method, "finish"):
        method.finish()
    if not final_rows:  # resumed after the last edit: evaluate again
        final_rows = evaluator.evaluate(spec.edits, edit_of, with_routes=True)
        for r, d in zip(final_rows, done):
            r.update(es_tf=d["es_tf"], es_em=d["es_em"])
    for r, d in zip(final_rows, done):
        r.update(seconds=d["seconds"], steps=d.get("steps"), converged=d.get("converged"), reused=d.get("reused"))

    conflicting = conflicts(dataset.records)
    latest = latest_targets(dataset.records)
    subsets = {"all": final_rows, "conflict_free": [r for r in final_rows if r["record"] not in conflicting],
               "latest_wins": evaluator.read_latest(final_rows, latest)}
    forms = {r.id: rephrase_form(r) for r in dataset.records}
    if dataset.kind == "completion" and len(set(forms.values()) - {None}) > 1:  # CounterFact: each kind alone too
        for form in ("prefixed", "plain"):
            subsets[f"{form}_rephrases"] = [r for r in final_rows if forms[r["record"]] == form]
    metrics = {name: summarise(rows, dataset.kind) for name, rows in subsets.items()}
    if dataset.kind == "hallucination" and held_out:
        metrics["all"]["paper"]["ARR_ppl"] = _held_out_perplexity(method, held_out[:100], spec.batch_size)
    described = method.describe()
    t = time.perf_counter()
    cost = _cost(method, described, done, items, spec)
    timings["cost_s"] = time.perf_counter() - t
    timings["total_s"] = earlier + time.perf_counter() - started
    results = {
        "schema": SCHEMA, "spec": asdict(spec), "method": spec.method, "dataset": dataset.name,
        "data": {"path": dataset.path, "records": len(dataset), "kind": dataset.kind},
        "edits": spec.edits, "config": described["config"], "model": described["model"],
        "threshold": {"value": described["config"].get("threshold") or described["info"].get("threshold"),
                      "how": threshold_note},
        "code_version": code_version, "machine": _machine(),
        "subsets": {name: len(rows) for name, rows in subsets.items()},
        "metrics": metrics, "checkpoints": results_at, "state": method_state(described),
        "findings": {
            "conflicting_records": len(conflicting),
            "read_against_a_later_target": sum("read_against" in r for r in subsets["latest_wins"]),
            "edits_that_superseded": sum(1 for d in done if d.get("supersedes")),
            "conflicts": {k: v for k, v in list(conflicting.items())[:50]},
            "collisions": [c.to_dict() for c in collisions(dataset.records)],
            "probe_counts": {k: sum(len(it.probes[k]) for it in items) for k in PROBE_KINDS},
        },
        "evaluation": {"locality": "every probe run" if spec.full_locality or not evaluator.locality_work else
                       "probes routed to an edit run; the others read from the base run (unrouted inputs compute "
                       "the base model exactly)", **evaluator.locality_work},
        "cost": cost, "timings": timings, "rows": final_rows,
    }
    write_report(results, out)
    return results


def method_state(described: dict[str, Any]) -> dict[str, Any]:
    """The scalar facts a method reports of its state (`info()`: edits, codebook entries and splits, MELO's clusters,
    centre updates and mismatches, ...), recorded at every checkpoint so they can be followed as edits arrive."""
    info = described.get("info", {})
    return {k: v for k, v in info.items() if isinstance(v, (int, float, bool))}


def _edited_row(method, record: Record, info: dict[str, Any], spec: BenchSpec) -> dict:
    """progress.jsonl's row of an edit just made (without its wall time): what the method said of it, and ES on
    its prompt."""
    es_score = method.score([record.prompt], [record.target], 1)[0]
    es_answer = method.generate([record.prompt], spec.max_new_tokens, 1)[0]
    return {"record": record.id, **info, "edit": info["id"], "es_tf": es_score.accuracy,
            "es_em": M.exact_match(es_answer, record.target), "es_answer": es_answer}


def _held_out_perplexity(method, records: list[Record], batch_size: int) -> float:
    """ARR for hallucination: perplexity of correct sentences that were never edited (the records after the T
    edited ones), which the edits must leave as they were."""
    scores = method.score([r.prompt for r in records], [r.target for r in records], batch_size)
    return M.perplexity([s.nll for s in scores], [len(s.tokens) for s in scores])


def _cost(method, described: dict[str, Any], done: list[dict], items: list[_Item],
          spec: BenchSpec) -> dict[str, Any]:
    seconds = [d["seconds"] for d in done if d.get("seconds") is not None]
    cost: dict[str, Any] = {"seconds_per_edit": M.median_p90(seconds),
                            "adapters_reused": any(d.get("reused") for d in done)}
    prompts = [p.prompt for it in items for p in it.probes["unrelated"]][:32]
    if prompts:
        timed = {}
        for label, context in (("base", method.base), ("edited", None)):
            t = time.perf_counter()
            if context is None:
                answers = method.generate(prompts, spec.max_new_tokens, 1)
            else:
                with context():
                    answers = method.generate(prompts, spec.max_new_tokens, 1)
            timed[label] = {"seconds": time.perf_counter() - t, "answers": answers}
        cost["inference"] = {
            "prompts": len(prompts), "batch_size": 1,
            "base_seconds": timed["base"]["seconds"], "edited_seconds": timed["edited"]["seconds"],
            "overhead": timed["edited"]["seconds"] / timed["base"]["seconds"] - 1,
        }
        tokenizer = getattr(getattr(method, "editor", None), "tokenizer", None)
        if tokenizer is not None:
            for label in ("edited", "base"):  # answer tokens plus the end token of each
                tokens = sum(len(tokenizer(a, add_special_tokens=False)["input_ids"]) + 1
                             for a in timed[label]["answers"])
                cost["inference"][f"{label}_tokens_per_s"] = tokens / timed[label]["seconds"]
    store = Path(getattr(method, "store", None) or getattr(getattr(method.editor, "store", None), "path", "") or "")
    if str(store) and store.is_dir():
        size = sum(f.stat().st_size for f in store.rglob("*") if f.is_file())
        cost["store_bytes"] = size
        cost["store_bytes_per_edit"] = size / max(1, len(done))
    memory = described["info"].get("memory_bytes") if "info" in described else None
    if memory:
        live = max(1, described["info"].get("edits", 1))
        cost["memory_bytes_per_edit"] = {k: v / live for k, v in memory.items()}
        cost["memory_bytes_total"] = memory
    return cost
