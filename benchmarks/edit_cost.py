"""Seconds per edit and inference overhead of SoLA on the embedded model (or --model DIR).

Makes N sequential zsRE edits (first N records with distinct subjects), then times greedy generation of a fixed
number of new tokens on unrelated NQ questions with: the bare model, the editor with no edits, the editor with N
edits (the questions route to no edit, so they measure the routing and wrapper overhead). Prints the figures and writes
JSON. Run: .venv/bin/python benchmarks/edit_cost.py --edits 20 [--prompt-format auto] --out results/edit_cost.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import torch


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def time_generation(generate, prompts: list[str], tokens: int, repeats: int) -> float:
    """Median over repeats of the seconds to answer every prompt with exactly `tokens` new tokens."""
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        for prompt in prompts:
            generate(prompt, tokens)
        runs.append(time.perf_counter() - started)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--edits", type=int, default=20)
    parser.add_argument("--key", default="subject", help="key strategy (default: the library's, subject)")
    parser.add_argument("--prompt-format", default="raw",
                        help="raw (the benchmarks'), or auto/chat (what Editor.from_pretrained() gives an instruct "
                        "model); edits are made without a subject, as a user who passes none")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--data", default=None)
    parser.add_argument("--out", default="results/edit_cost.json")
    args = parser.parse_args()

    from sola import EditConfig, Editor
    from sola.data import load_zsre

    torch.manual_seed(0)
    editor = Editor.from_pretrained(args.model, config=EditConfig(key=args.key, prompt_format=args.prompt_format))
    records = load_zsre(args.data).records
    questions = [r.locality[0].prompt.removeprefix("nq question: ") for r in records[-8:]]
    seen, facts = set(), []
    for record in records:
        if record.subject not in seen:
            seen.add(record.subject)
            facts.append(record)
    facts = facts[: args.edits]

    tokenizer, model = editor.tokenizer, editor.model

    def generate(prompt: str, tokens: int, routed: bool) -> None:
        """Exactly `tokens` new tokens; routed: what Editor.generate does, else the unwrapped computation."""
        encoded = editor.format.encode(prompt)
        context = editor._routed([encoded], editor.task.batch([encoded], None)) if routed else nullcontext()
        ids = torch.tensor([encoded.ids])
        with context, torch.no_grad():
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens,
                           min_new_tokens=tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id)

    bare = partial(generate, routed=False)
    edited = partial(generate, routed=True)

    time_generation(bare, questions[:2], args.tokens, 1)  # warm-up
    bare_s = time_generation(bare, questions, args.tokens, args.repeats)
    zero_s = time_generation(edited, questions, args.tokens, args.repeats)

    edit_seconds, steps, converged = [], [], 0
    for fact in facts:
        edit = editor.edit(fact.prompt, fact.target)
        edit_seconds.append(edit.seconds)
        steps.append(edit.steps)
        converged += edit.converged
    routed_none = sum(editor.route(q) is None for q in questions)
    full_s = time_generation(edited, questions, args.tokens, args.repeats)
    bare_again_s = time_generation(bare, questions, args.tokens, args.repeats)  # drift check of the machine

    generated = len(questions) * args.tokens
    result = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "threads": torch.get_num_threads(), "torch": torch.__version__},
        "model": editor.info()["model"], "model_note": editor.info()["model_note"],
        "config": editor.config.to_dict(),
        "edits": len(facts), "converged": converged,
        "seconds_per_edit": {"median": statistics.median(edit_seconds), "p90": percentile(edit_seconds, 0.9),
                             "mean": statistics.mean(edit_seconds)},
        "steps_per_edit": {"median": statistics.median(steps), "p90": percentile(steps, 0.9)},
        "generation": {
            "new_tokens_per_prompt": args.tokens, "prompts": len(questions), "unrouted_prompts": routed_none,
            "bare_tokens_per_s": generated / bare_s, "bare_again_tokens_per_s": generated / bare_again_s,
            "editor_0_edits_tokens_per_s": generated / zero_s,
            f"editor_{len(facts)}_edits_tokens_per_s": generated / full_s,
            "overhead_0_edits": zero_s / bare_s - 1,
            f"overhead_{len(facts)}_edits": full_s / ((bare_s + bare_again_s) / 2) - 1,
        },
        "memory_bytes": editor.info()["memory_bytes"],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
