"""How often the subject read from a prompt (`sola.routing.names.infer_subject`, what an edit made without a subject
gets) names the dataset's subject: one of its full forms, or a part of it (which still gates, more loosely).

Run: .venv/bin/python benchmarks/subject_inference.py --records 1000 --out docs/runs/experiments/subject-inference.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--datasets", default="zsre,counterfact")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    from sola.data import load_dataset
    from sola.routing.names import folded_words, forms, infer_subject

    results = {}
    for name in args.datasets.split(","):
        records = load_dataset(name).records[:args.records]
        counts = {"same": 0, "part": 0, "other": 0, "none": 0}
        misses = []
        for record in records:
            guess = infer_subject(record.prompt)
            if guess is None:
                kind = "none"
            elif forms(guess) & forms(record.subject):
                kind = "same"
            elif " ".join(folded_words(guess)) in " ".join(folded_words(record.subject)):
                kind = "part"
            else:
                kind = "other"
            counts[kind] += 1
            if kind != "same" and len(misses) < 30:
                misses.append({"prompt": record.prompt, "subject": record.subject, "inferred": guess, "kind": kind})
        results[name] = {"records": len(records), **{k: v / len(records) for k, v in counts.items()},
                         "examples_of_misses": misses}
        print(name, {k: round(v / len(records), 3) for k, v in counts.items()})
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
