"""The user-like set (tests/data/made_up_facts.json: 42 made-up facts over 42 relations) on the embedded model, as a
new user makes them: `Editor.from_pretrained()` (chat format, subject key, subjects never given), `edit(prompt,
target)`, then `route` and `generate` (greedy) on every rewording, every other question about an edited subject and
ten unrelated questions, against the base model's answers taken first; then the second edits (updates and other
facts). See `sola.eval.user_facts.run` for the figures.

Run: .venv/bin/python benchmarks/made_up_facts.py --out docs/runs/experiments/made-up-facts-bank.json
     .venv/bin/python benchmarks/made_up_facts.py --config '{"relation_check": "none"}' --out ...   (the check off)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--every", type=int, default=1, help="every N-th fact only (default: all)")
    parser.add_argument("--config", default="{}", help="EditConfig fields as JSON")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    from sola import EditConfig, Editor
    from sola.eval.provenance import code_version, machine
    from sola.eval.user_facts import FactSet, run

    started = time.perf_counter()
    config = EditConfig(**json.loads(args.config)) if json.loads(args.config) else None
    editor = Editor.from_pretrained(config=config)
    facts = FactSet.read() if args.every == 1 else FactSet.read().share(args.every)
    result = run(editor, facts, generate=True, max_new_tokens=args.max_new_tokens)
    summary = {"model": "embedded SmolLM2-135M-Instruct", "prompt_format": editor.config.prompt_format,
               "config": json.loads(args.config), "code_version": code_version(), "machine": machine(),
               "seconds": round(time.perf_counter() - started, 1), **result}
    print(json.dumps(result["figures"], indent=1))
    for case in result["cases"]:
        wrong = (case["kind"] == "rewording" and not case["reached"]) or case.get("changed") \
            or (case["kind"] == "second" and not case["right"])
        if wrong:
            print("miss:", json.dumps(case))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
