"""Can one edit learn a whole sentence? Edits the hallucination task's longest corrections (WISE's
`target_new`, up to ~100 tokens of the embedded model's tokenizer) one at a time with the default training, with the
target limit (`sola.prompts.MAX_TARGET_TOKENS`) lifted for the run, and reports per target length: converged,
steps, seconds, and whether greedy generation reproduces the sentence. Settles what the limit should be for the
sentence-level task (issue 25).

Run: .venv/bin/python benchmarks/long_targets.py --edits 20 --out results/long_targets.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="data directory (default: ../shared/data)")
    parser.add_argument("--edits", type=int, default=20, help="how many of the longest targets (and as many short)")
    parser.add_argument("--limit", type=int, default=160, help="the target limit lifted to this for the run")
    parser.add_argument("--max-steps", type=int, default=None, help="EditConfig.max_steps (default: the library's)")
    parser.add_argument("--out", default="results/long_targets.json")
    args = parser.parse_args()

    import sola.prompts
    from sola import EditConfig, Editor
    from sola.data import load_dataset
    from sola.data.probes import normalise

    sola.prompts.MAX_TARGET_TOKENS = args.limit
    records = load_dataset("hallucination", args.data).records
    torch.manual_seed(0)
    config = EditConfig(prompt_format="raw", key="encoder", on_no_converge="commit")
    if args.max_steps:
        config = config.replace(max_steps=args.max_steps)
    editor = Editor.from_pretrained(config=config)
    length = {r.id: len(editor.tokenizer(r.target, add_special_tokens=False)["input_ids"]) for r in records}
    ordered = sorted(records, key=lambda r: length[r.id])
    chosen = ordered[-args.edits:] + ordered[: args.edits]
    rows = []
    for record in chosen:
        edit = editor.edit(record.prompt, record.target)
        answer = editor.generate(record.prompt, length[record.id] + 8)
        rows.append({"record": record.id, "target_tokens": length[record.id], "converged": edit.converged,
                     "steps": edit.steps, "loss": edit.loss, "seconds": edit.seconds,
                     "generated_exactly": normalise(answer) == normalise(record.target)})
        print(json.dumps(rows[-1]))

    def group(selected):
        return {"edits": len(selected), "target_tokens_median": statistics.median(r["target_tokens"] for r in selected),
                "converged": sum(r["converged"] for r in selected),
                "generated_exactly": sum(r["generated_exactly"] for r in selected),
                "steps_median": statistics.median(r["steps"] for r in selected),
                "seconds_median": statistics.median(r["seconds"] for r in selected)}

    result = {"machine": {"platform": platform.platform(), "threads": torch.get_num_threads(),
                          "torch": torch.__version__},
              "config": editor.config.to_dict(), "limit_for_the_run": args.limit,
              "longest": group(rows[: args.edits]), "shortest": group(rows[args.edits:]), "rows": rows}
    print(json.dumps({k: result[k] for k in ("longest", "shortest")}, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
