"""Rolling back a sample of a finished hallucination run's edits restores the base model's perplexity exactly (issue
25): on a copy of the run's store, the sample's corrected sentences are scored edited, with the editor disabled (the
base model) and after rolling each of them back; the edits left in place must still score as before.

Run: .venv/bin/python benchmarks/rollback_perplexity.py --run results/hall-sola-600 --sample 50 \
    --out results/rollback_perplexity.json
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import shutil
import tempfile
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a finished `sola bench --dataset hallucination` run directory")
    parser.add_argument("--data", default=None)
    parser.add_argument("--sample", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="results/rollback_perplexity.json")
    args = parser.parse_args()

    from sola import Editor
    from sola.data import load_dataset
    from sola.eval.metrics import perplexity

    records = {r.prompt: r for r in load_dataset("hallucination", args.data).records}
    with tempfile.TemporaryDirectory() as scratch:
        store = Path(scratch) / "store"
        shutil.copytree(Path(args.run) / "store", store)  # rollbacks write to the store: never the run's own
        editor = Editor.load(store)
        edits = editor.edits()
        rng = random.Random(args.seed)
        sample = rng.sample(edits, min(args.sample, len(edits)))
        kept = rng.sample([e for e in edits if e not in sample], min(args.sample, len(edits) - len(sample)))

        def nlls(chosen):
            scores = editor.score([e.prompts[0] for e in chosen], [records[e.prompts[0]].target for e in chosen])
            return [s.nll for s in scores], [len(s.tokens) for s in scores]

        edited, tokens = nlls(sample)
        kept_before, kept_tokens = nlls(kept)
        with editor.disabled():
            base, _ = nlls(sample)
        for e in sample:
            editor.rollback(e.id)
        after, _ = nlls(sample)
        kept_after, _ = nlls(kept)
        routed_after = sum(1 for e in sample if editor.route(e.prompts[0]) is not None)

    result = {
        "run": str(args.run), "machine": {"platform": platform.platform(), "threads": torch.get_num_threads()},
        "edits_in_store": len(edits), "rolled_back": len(sample), "kept": len(kept),
        "ppl_edited": perplexity(edited, tokens), "ppl_base": perplexity(base, tokens),
        "ppl_after_rollback": perplexity(after, tokens),
        "rolled_back_equal_to_base_bit_for_bit": after == base,
        "max_abs_nll_difference_to_base": max(abs(a - b) for a, b in zip(after, base)),
        "rolled_back_prompts_still_routed": routed_after,
        "kept_ppl_before": perplexity(kept_before, kept_tokens), "kept_ppl_after": perplexity(kept_after, kept_tokens),
        "kept_unchanged_bit_for_bit": kept_before == kept_after,
    }
    print(json.dumps(result, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    if not (result["rolled_back_equal_to_base_bit_for_bit"] and result["kept_unchanged_bit_for_bit"]
            and math.isfinite(result["ppl_base"])):
        raise SystemExit("rollback did not restore the base model exactly (see the figures above)")


if __name__ == "__main__":
    main()
