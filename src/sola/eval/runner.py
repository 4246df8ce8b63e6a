"""Lifelong editing: T edits one after another (or, with `edit_batch_size` B, B at a time, as MELO's and ELDER's
authors ran them), each checked right after it (or its batch) is made (ES), and every edit re-checked at checkpoints
(after 10, 100, ... edits) and at the end, teacher-forced and by greedy generation.

Locality is measured three ways (see `sola.data.probes`): unrelated questions, the same relation about other subjects,
and other relations about the same subject. "Unchanged" always means "as the base model answers", computed by the same
method with its edits switched off, on exactly the same batches (so an input no edit touches compares bit for bit).

`run` wires the parts, each its own module: the spec (spec.py), the evaluation set (items.py), the method
(factory.py), evaluation (evaluator.py), aggregation (summary.py), the run directory and resuming (rundir.py), cost
and provenance (provenance.py), and the report (report.py).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..data import Dataset, Record, load_dataset
from ..data.probes import collisions, conflicts, latest_targets, rephrase_form
from ..errors import ConfigError, DataError
from . import metrics as M
from .evaluator import Evaluator, answer_room
from .factory import build_method
from .items import PROBE_KINDS, Item, build_items, calibration_questions, nq_pool
from .provenance import code_version, cost, machine
from .rundir import RunDir
from .spec import BenchSpec
from .summary import method_state, summarise

SCHEMA = 1


def run(spec: BenchSpec, out: str | os.PathLike, progress: bool = True, rescore: bool = False) -> dict[str, Any]:
    """Run the benchmark and write results.json, results.md and plots into `out`. Re-running into the same `out`
    resumes after the last edit it committed; a run that finished (its results.json written) returns its results as
    they are, unless `rescore`: then its edits, as made, are evaluated again with the code that runs now."""
    from .report import write_report

    started = time.perf_counter()
    version = code_version()  # the code that runs, read before it runs (the checkout may move meanwhile)
    rundir = RunDir(out)
    rundir.claim(spec)
    finished = None if rescore else rundir.results(spec)
    if finished is not None:
        if progress:
            print(f"{rundir.path} holds a finished run: its results are shown as they were written (pass --rescore "
                  "to evaluate its edits again with the current code)", file=sys.stderr)
        return finished
    dataset = load_dataset(spec.dataset, spec.data)
    if spec.edit_batch_size < 1:
        raise ConfigError(f"--batch-size {spec.edit_batch_size}: give a positive number of edits per batch (1: one "
                          "edit at a time)")
    if spec.edits < 1 or spec.edits > len(dataset):
        raise ConfigError(f"--edits {spec.edits}: {dataset.name} has {len(dataset)} records ({dataset.path})")
    dataset = dataset.head(spec.edits)
    nq = nq_pool(spec)
    probed = build_items(dataset, nq, spec.seed, spec.subject_probes, _other_passages(dataset, spec))
    # without locality the probes are dropped, but kept out of calibration as they would be: the same threshold
    items = probed if spec.locality else [Item(it.record, {kind: [] for kind in PROBE_KINDS}) for it in probed]
    method = build_method(spec, rundir.store)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    threshold_note = _set_threshold(method, spec, probed, nq, dataset)
    timings["calibrate_s"] = time.perf_counter() - t
    evaluator = Evaluator(method, items, spec, dataset.kind)
    t = time.perf_counter()
    evaluator.measure_base(rundir.base_cache)
    timings["base_s"] = time.perf_counter() - t

    done = _resume(method, rundir, dataset, spec)
    # wall time over sessions: a resumed run starts from the time its last committed edit was made at
    earlier = done[-1].get("wall_s") if done else 0.0
    if earlier is None:  # progress written before rows carried it
        timings["earlier_sessions_unrecorded"] = True
    earlier = earlier or 0.0
    if done:
        timings["resumed_after_edits"] = len(done)
    t = time.perf_counter()
    final_rows, checkpoints = _edit_stream(method, evaluator, rundir, dataset, spec, done,
                                           lambda: round(earlier + time.perf_counter() - started, 3), version, progress)
    timings["edit_and_checkpoints_s"] = time.perf_counter() - t
    method.finish()
    for r, d in zip(final_rows, done):
        r.update(seconds=d["seconds"], steps=d.get("steps"), converged=d.get("converged"), reused=d.get("reused"))

    conflicting = conflicts(dataset.records)
    subsets = _subsets(final_rows, dataset, evaluator, conflicting)
    metrics = {name: summarise(rows, dataset.kind) for name, rows in subsets.items()}
    described = method.describe()
    t = time.perf_counter()
    costs = cost(method, described, done, items, spec)
    timings["cost_s"] = time.perf_counter() - t
    timings["total_s"] = earlier + time.perf_counter() - started
    results = {
        "schema": SCHEMA, "spec": asdict(spec), "method": spec.method, "dataset": dataset.name,
        "protocol": protocol(spec.edit_batch_size),
        "data": {"path": dataset.path, "records": len(dataset), "kind": dataset.kind},
        "edits": spec.edits, "config": described["config"], "model": described["model"],
        "threshold": {"value": described["config"].get("threshold") or described["info"].get("threshold"),
                      "how": threshold_note},
        "code_version": version, "code_versions": code_versions(done), "machine": machine(),
        "subsets": {name: len(rows) for name, rows in subsets.items()},
        "metrics": metrics, "checkpoints": checkpoints, "state": method_state(described),
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
        "cost": costs, "timings": timings, "rows": final_rows,
    }
    write_report(results, rundir.path)
    return results


def protocol(batch_size: int) -> dict[str, Any]:
    """How the edits arrived, as results.json records it (runs written before batches existed read as sequential)."""
    if batch_size == 1:
        return {"batch_size": 1, "name": "sequential", "description": "one edit at a time, each checked after it"}
    return {"batch_size": batch_size, "name": f"batches of {batch_size}",
            "description": f"edits arrive {batch_size} at a time; each batch is trained the method's own way, then "
                           "its edits are checked"}


def _other_passages(dataset: Dataset, spec: BenchSpec) -> list[Record]:
    """For the hallucination task: biographies never edited (WISE's other file beside the edit file; none when the
    data is a single file or lacks it, and the report then has no ARR)."""
    if dataset.kind != "hallucination" or (spec.data and Path(spec.data).is_file()):
        return []
    try:
        return load_dataset("hallucination-extra", spec.data).records
    except DataError:
        return []


def _set_threshold(method, spec: BenchSpec, probed: list[Item], nq: list[Record], dataset: Dataset) -> str:
    """Calibrate the method's threshold if the spec asks (1 % of held-out NQ questions, none of them a probe of
    `probed`); -> how it was chosen."""
    if spec.threshold != "calibrate":
        return "given" if spec.threshold is not None else "default"
    questions = calibration_questions(probed, nq)
    if len(questions) < 50:
        raise DataError("--threshold calibrate needs NQ questions (nq/NQ-open.dev.jsonl in the data directory)")
    threshold = method.calibrate(questions, 0.01, [r.prompt for r in dataset.records])
    note = f"calibrated: 1 % of {len(questions)} held-out NQ questions within it of the edit prompts" \
        if threshold is not None else "not calibrated: the method keeps its own threshold, if it routes"
    if method.describe()["config"].get("key") == "subject":
        note = f"the subject key's own threshold is its default; unnamed_threshold (edits without a subject) {note}"
    return note


def _resume(method, rundir: RunDir, dataset: Dataset, spec: BenchSpec) -> list[dict[str, Any]]:
    """The rows of the edits the method's state holds, from progress.jsonl: a snapshot method continues from its
    last save (the rows after it are dropped and made again); edits committed before their rows were written get
    their rows now (the model is in the state right after those edits, so their ES can be measured)."""
    done = rundir.rows()
    made = method.edits_made()
    if method.resumes_from_snapshot and made < len(done):
        done = done[:made]
        rundir.keep_rows(done)
    if made > len(done):
        missing = method.edits_after(len(done))
        if len(missing) == made - len(done):
            wall = (done[-1].get("wall_s") or 0.0) if done else 0.0  # their own time was not recorded
            records = dataset.records[len(done):made]
            for row in _edited_rows(method, records, missing, spec, dataset.kind):
                row["wall_s"] = wall
                done.append(row)
                rundir.add_row(row)
    if made != len(done):
        raise ConfigError(f"{rundir.path}: the store holds {made} edits but progress.jsonl {len(done)}; start a new "
                          "--out")
    return done


def _edit_stream(method, evaluator: Evaluator, rundir: RunDir, dataset: Dataset, spec: BenchSpec,
                 done: list[dict[str, Any]], wall, version: str, progress: bool
                 ) -> tuple[list[dict[str, Any]], list[dict]]:
    """Make the edits after `done` (appending to `done`), `spec.edit_batch_size` at a time (batches start at
    multiples of it, so a resumed run finishes the batch it stopped in), measuring each checkpoint not yet measured
    after the batch that reaches it; -> the final evaluation's rows and every checkpoint."""
    edit_of = {row["record"]: row["edit"] for row in done}
    wanted = sorted({c for c in spec.checkpoints if 0 < c < spec.edits} | {spec.edits})
    measured = rundir.checkpoints(len(done))
    size = spec.edit_batch_size
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=spec.edits, initial=len(done), unit="edit", desc=f"{spec.method} {spec.dataset}")
    final_rows: list[dict[str, Any]] = []
    try:
        start = len(done)
        while start < spec.edits:
            end = min(spec.edits, (start // size + 1) * size)
            records = dataset.records[start:end]
            given = [dataclasses.replace(r, subject=None) if spec.withhold_subject else r for r in records]
            infos = method.edit_batch(given) if size > 1 else [method.edit(given[0])]
            for record, row in zip(records, _edited_rows(method, records, infos, spec, dataset.kind)):
                edit_of[record.id] = row["edit"]
                row["wall_s"], row["code"] = wall(), version
                done.append(row)
                rundir.add_row(row)
            if bar is not None:
                bar.update(len(records))
            reached = [c for c in wanted if start < c <= end]
            if reached and end not in {c["edits"] for c in measured}:
                rows = _evaluate(evaluator, end, edit_of, done, with_routes=end == spec.edits)
                measured.append({"edits": end, "metrics": summarise(rows, dataset.kind),
                                 "state": method_state(method.describe())})
                rundir.add_checkpoint(measured[-1])
                if end == spec.edits:
                    final_rows = rows
            start = end
    finally:
        if bar is not None:
            bar.close()
    if not final_rows:  # resumed after the last edit: evaluate again
        final_rows = _evaluate(evaluator, spec.edits, edit_of, done, with_routes=True)
    return final_rows, measured


def code_versions(done: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Which code made the edits of a run, in the order it ran: [{"code", "edits"}], one entry per run of rows made by
    the same code (a resumed run may span commits; rows from before rows carried it: code None)."""
    spans: list[dict[str, Any]] = []
    for row in done:
        code = row.get("code")
        if spans and spans[-1]["code"] == code:
            spans[-1]["edits"] += 1
        else:
            spans.append({"code": code, "edits": 1})
    return spans


def _evaluate(evaluator: Evaluator, upto: int, edit_of: dict[str, str], done: list[dict[str, Any]],
              with_routes: bool) -> list[dict[str, Any]]:
    rows = evaluator.evaluate(upto, edit_of, with_routes=with_routes)
    for r, d in zip(rows, done):
        r.update(es_tf=d["es_tf"], es_em=d["es_em"])
    return rows


def _subsets(rows: list[dict[str, Any]], dataset: Dataset, evaluator: Evaluator,
             conflicting: dict[str, list[str]]) -> dict[str, list[dict[str, Any]]]:
    """The rows every reading scores: all, the records without a conflicting target (`conflicting`: by record id),
    "latest wins", and on CounterFact each kind of rephrase alone."""
    subsets = {"all": rows, "conflict_free": [r for r in rows if r["record"] not in conflicting],
               "latest_wins": evaluator.read_latest(rows, latest_targets(dataset.records))}
    forms = {r.id: rephrase_form(r) for r in dataset.records}
    if dataset.kind == "completion" and len(set(forms.values()) - {None}) > 1:
        for form in ("prefixed", "plain"):
            subsets[f"{form}_rephrases"] = [r for r in rows if forms[r["record"]] == form]
    return subsets


def _edited_rows(method, records: list[Record], infos: list[dict[str, Any]], spec: BenchSpec,
                 kind: str) -> list[dict]:
    """progress.jsonl's rows of the edits of a batch just made (without their wall time): what the method said of
    each, and its ES on its prompt, read after the whole batch (right after the edit when batches are of one)."""
    prompts, targets = [r.prompt for r in records], [r.target for r in records]
    scores = method.score(prompts, targets, spec.batch_size)
    answers = method.generate(prompts, answer_room(kind, spec.max_new_tokens, scores), spec.batch_size)
    return [{"record": record.id, **info, "edit": info["id"], "es_tf": score.accuracy,
             "es_em": M.exact_match(answer, record.target), "es_answer": answer}
            for record, info, score, answer in zip(records, infos, scores, answers)]
