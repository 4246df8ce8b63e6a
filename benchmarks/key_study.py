"""The key-strategy study of issue 4: SoLA with each key strategy on zsRE and CounterFact, T sequential edits.

The LoRAs are trained once per dataset (key "encoder") and imported by the runs of the other key strategies
(`--reuse-adapters`): a SoLA edit's LoRA does not depend on routing, so this equals editing from scratch with that
strategy (tests/test_eval.py checks it). Writes each run to OUT/<dataset>-<key>-<T>/ and the tables to --doc.

    python benchmarks/key_study.py --edits 1000 --out results/study --doc docs/results.md
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

THRESHOLDS = {"encoder": "calibrate", "mean_pool": "calibrate", "last_token": "calibrate", "subject": None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--edits", type=int, default=1000)
    parser.add_argument("--datasets", default="zsre,counterfact")
    parser.add_argument("--keys", default="encoder,subject,mean_pool,last_token", help="the first one trains")
    parser.add_argument("--checkpoints", default="10,100")
    parser.add_argument("--data")
    parser.add_argument("--out", default="results/study")
    parser.add_argument("--doc", help="write the markdown tables here (e.g. docs/results.md)")
    args = parser.parse_args()

    from sola.eval import BenchSpec, run
    from sola.eval.study import write_study

    runs = []
    for dataset in args.datasets.split(","):
        keys = args.keys.split(",")
        trained = Path(args.out) / f"{dataset}-{keys[0]}-{args.edits}"
        for key in keys:
            out = Path(args.out) / f"{dataset}-{key}-{args.edits}"
            if (out / "results.json").exists():
                runs.append(out)
                continue
            reuse = str(trained) if key != keys[0] else None
            if reuse and (trained / "base.json").exists() and not (out / "base.json").exists():
                out.mkdir(parents=True, exist_ok=True)
                shutil.copy(trained / "base.json", out / "base.json")  # same probes, same base model answers
            spec = BenchSpec(dataset=dataset, edits=args.edits, data=args.data, key=key, threshold=THRESHOLDS[key],
                             checkpoints=[int(c) for c in args.checkpoints.split(",") if c], reuse_adapters=reuse)
            started = time.perf_counter()
            run(spec, out)
            print(f"{out}: {(time.perf_counter() - started) / 60:.1f} min", flush=True)
            runs.append(out)
    if args.doc:
        write_study(runs, args.doc)
        print("wrote", args.doc)


if __name__ == "__main__":
    main()
