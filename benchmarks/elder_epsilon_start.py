"""Why ELDER defers its first batches when epsilon is calibrated: epsilon read back after each of the first batches.

With `--threshold calibrate`, ELDER's epsilon is re-chosen after every training so that at most 1 % of held-out NQ
questions reach a stored code (Hamming distance below epsilon). This replays the first batches of a stream the way
`sola bench --method elder --batch-size B --threshold calibrate` makes them (the same calibration questions, in a
scratch store) and prints, after each batch: epsilon, the share of calibration questions whose nearest code is at
distance 0 (if more than the rate, epsilon must be 0 and every input defers, the batch's own prompts included), and
the nearest distance and deferral of each prompt of the batch. Public API only.

With `--store RUN/store` (a finished or resumed run's ELDER store) it trains nothing and reports the same for the
store as it is: its epsilon, and the nearest stored code of the calibration questions and of the first `--edits`
edit prompts of the dataset (how far, and whether they reach the mixture).

Run: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/elder_epsilon_start.py --dataset hallucination --batches 3 \
    --batch-size 4 --out results/elder_epsilon_start.json
     OMP_NUM_THREADS=1 .venv/bin/python benchmarks/elder_epsilon_start.py --store RUN/store --edits 600 \
    --out results/elder_epsilon_end.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from sola.eval.provenance import machine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="hallucination")
    parser.add_argument("--data", default=None, help="the data directory (default: the bench's)")
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--rate", type=float, default=0.01, help="the share of calibration questions that may reach")
    parser.add_argument("--store", help="report on this ELDER store as it is instead of replaying batches")
    parser.add_argument("--edits", type=int, default=600, help="with --store: how many of the dataset's edits it holds")
    parser.add_argument("--out", default="results/elder_epsilon_start.json")
    args = parser.parse_args()

    from sola.data import load_dataset
    from sola.eval.items import build_items, calibration_questions, nq_pool
    from sola.eval.spec import BenchSpec
    from sola.methods.elder import ElderConfig, ElderEditor

    edits = args.edits if args.store else args.batches * args.batch_size
    spec = BenchSpec(method="elder", dataset=args.dataset, data=args.data, edits=edits,
                     edit_batch_size=args.batch_size, threshold="calibrate")
    dataset = load_dataset(spec.dataset, spec.data).head(spec.edits)
    nq = nq_pool(spec)
    questions = calibration_questions(build_items(dataset, nq, spec.seed, spec.subject_probes), nq)
    if len(questions) < 50:
        raise SystemExit("needs NQ questions (nq/NQ-open.dev.jsonl in the data directory)")
    if args.store:
        return report_store(ElderEditor.load(args.store), dataset, questions, args.out)
    editor = ElderEditor.from_pretrained(spec.model, config=ElderConfig(prompt_format=spec.prompt_format,
                                                                        seed=spec.seed))
    before = editor.calibrate_threshold(questions, args.rate, against=[r.prompt for r in dataset.records])
    print(f"{len(questions)} calibration questions; epsilon before any code is stored: {before}")
    rows = []
    for b in range(args.batches):
        batch = dataset.records[b * args.batch_size:(b + 1) * args.batch_size]
        started = time.perf_counter()
        edits = editor.edit_many([{"prompt": r.prompt, "target": r.target, "subject": r.subject} for r in batch])
        calibration = calibration_summary(editor.deferral(questions), len(questions))
        at_zero = calibration["calibration_at_distance_0"]
        own = [editor.locate(r.prompt) for r in batch]
        row = {"batch": b + 1, "epsilon": editor.config.epsilon, **calibration,
               "batch_prompts": [{"edit": e.id, "own_edit_nearest": r[0] == e.id, "distance": r[1],
                                  "uses_mixture": r[2], "loss": e.loss} for e, r in zip(edits, own)],
               "seconds": round(time.perf_counter() - started, 1)}
        rows.append(row)
        print(f"batch {b + 1}: epsilon {row['epsilon']}; calibration questions at distance 0: {at_zero:.3f} "
              f"(rate {args.rate}); the batch's prompts at distances {[p['distance'] for p in row['batch_prompts']]}, "
              f"using the mixture: {[p['uses_mixture'] for p in row['batch_prompts']]}")
    result = {"dataset": dataset.name, "batch_size": args.batch_size, "rate": args.rate,
              "calibration_questions": len(questions), "epsilon_before_codes": before, "batches": rows,
              "config": editor.config.to_dict(), "machine": machine()}
    write(result, args.out)


def report_store(editor, dataset, questions: list[str], out: str) -> None:
    """The deferral of a stored ELDER run as it is: epsilon, and the nearest stored code of the calibration questions
    and of the edit prompts (which must reach the mixture). What decides an edit prompt's fate is its distance to
    the nearest stored code (of any edit), compared with the questions'."""
    calibration = calibration_summary(editor.deferral(questions), len(questions))
    prompts = []
    for record in dataset.records:
        nearest, distance, within = editor.locate(record.prompt)
        prompts.append({"nearest": nearest, "distance": distance, "uses_mixture": within})
    distances = [int(p["distance"]) for p in prompts]
    result = {"store": {"config": editor.config.to_dict(), "edits": len(editor.edits()), "machine": machine()},
              "calibration_questions": len(questions), **calibration, "edit_prompts": len(prompts),
              "edit_prompts_nearest_histogram": {str(d): distances.count(d) for d in sorted(set(distances))},
              "edit_prompts_reaching_the_mixture": sum(p["uses_mixture"] for p in prompts) / len(prompts),
              "prompts": prompts}
    print(f"epsilon {editor.config.epsilon}; calibration questions: nearest code at "
          f"{calibration['calibration_nearest_histogram']}, reaching the mixture "
          f"{calibration['calibration_reached']:.3f} (at the paper's 12: "
          f"{calibration['calibration_reached_at_paper_epsilon']:.3f}); the {len(prompts)} edit prompts: nearest "
          f"code at {result['edit_prompts_nearest_histogram']}, reaching the mixture "
          f"{result['edit_prompts_reaching_the_mixture']:.3f}")
    write(result, out)


def calibration_summary(report: dict, count: int) -> dict:
    """`ElderEditor.deferral` of the `count` calibration questions, as the JSON records it."""
    return {"calibration_at_distance_0": report["histogram"].get(0, 0) / count,
            "calibration_nearest_histogram": {str(d): n for d, n in sorted(report["histogram"].items())},
            "calibration_reached": report["reached"],
            "calibration_reached_at_paper_epsilon": report["reached_at_paper_epsilon"]}


def write(result: dict, out: str) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
