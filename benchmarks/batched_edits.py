"""Throughput of batched editing (Editor.edit_many) against editing one by one, on the embedded model.

Edits the same K zsRE facts (first records with distinct subjects) twice on fresh editors: one `edit` call each, then
one `edit_many(batch_size=K)` call; reports edits per second of both, their ratio, and how far the batched LoRA
factors are from the one-by-one ones (they should agree up to the rounding of batched matrix products).
Run: .venv/bin/python benchmarks/batched_edits.py --edits 16 --out results/batched_edits.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--edits", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2, help="repeat both ways; report the best round of each")
    parser.add_argument("--data", default=None)
    parser.add_argument("--out", default="results/batched_edits.json")
    args = parser.parse_args()

    from sola import EditConfig, Editor
    from sola.data import load_zsre

    seen, facts = set(), []
    for record in load_zsre(args.data).records:
        if record.subject not in seen:
            seen.add(record.subject)
            facts.append(record)
        if len(facts) == args.edits:
            break
    requests = [{"prompt": r.prompt, "target": r.target, "subject": r.subject} for r in facts]
    config = EditConfig(prompt_format="raw")

    def fresh() -> Editor:  # edit ids seed each LoRA's initialisation, so both ways start from the same numbers
        return Editor.from_pretrained(args.model, config=config)

    one_by_one, batched = [], []
    for _ in range(args.rounds):
        editor = fresh()
        started = time.perf_counter()
        singles = [editor.edit(r["prompt"], r["target"], subject=r["subject"]) for r in requests]
        one_by_one.append(time.perf_counter() - started)
        single_factors = [layer.read_slot(editor.slots.of(e.id)) for e in singles for layer in editor.layers]
        single_answers = editor.generate([r["prompt"] for r in requests], batch_size=16, stop_at_newline=True)
        editor = fresh()
        started = time.perf_counter()
        many = editor.edit_many(requests, batch_size=args.edits)
        batched.append(time.perf_counter() - started)
        many_factors = [layer.read_slot(editor.slots.of(e.id)) for e in many for layer in editor.layers]
        many_answers = editor.generate([r["prompt"] for r in requests], batch_size=16, stop_at_newline=True)
    difference = max(float((a - b).abs().max()) for (a, _), (b, _) in zip(single_factors, many_factors))
    difference_b = max(float((a - b).abs().max()) for (_, a), (_, b) in zip(single_factors, many_factors))
    result = {
        "machine": {"platform": platform.platform(), "threads": torch.get_num_threads(), "torch": torch.__version__},
        "model": editor.source, "edits": args.edits, "rounds": args.rounds,
        "one_by_one_s": one_by_one, "batched_s": batched,
        "one_by_one_edits_per_s": args.edits / min(one_by_one), "batched_edits_per_s": args.edits / min(batched),
        "speedup": min(one_by_one) / min(batched),
        "max_abs_difference": {"lora_A": difference, "lora_B": difference_b},
        "converged": {"one_by_one": sum(e.converged for e in singles), "batched": sum(e.converged for e in many)},
        "steps": {"one_by_one": [e.steps for e in singles], "batched": [e.steps for e in many]},
        "targets_generated": {
            "one_by_one": sum(a == r["target"].strip() for a, r in zip(single_answers, requests)),
            "batched": sum(a == r["target"].strip() for a, r in zip(many_answers, requests))},
    }
    print(json.dumps(result, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
