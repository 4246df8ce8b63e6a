"""Routing quality of each key strategy without any training: keys of N zsRE edit prompts, queries from their
rephrases (should find an edit with the same target) and from NQ questions (should find nothing).

For each strategy: how often a rephrase's nearest key is an edit with its target, the distance quantiles of both
kinds of query, and for a few thresholds the fraction of rephrases routed correctly and of NQ questions routed at all.
Run: .venv/bin/python benchmarks/routing_distances.py --records 300 --out results/routing.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def quantiles(values: torch.Tensor) -> dict[str, float]:
    qs = torch.tensor([0.01, 0.05, 0.5, 0.95, 0.99])
    return {f"q{int(q * 100):02d}": float(v) for q, v in zip(qs, torch.quantile(values, qs))}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=300)
    parser.add_argument("--data", default=None)
    parser.add_argument("--out", default="results/routing.json")
    parser.add_argument("--strategies", default="encoder:cosine,mean_pool:cosine,last_token:cosine,"
                                                "mean_pool:euclidean,last_token:euclidean")
    args = parser.parse_args()

    from sola import EditConfig, Editor
    from sola.data import load_zsre
    from sola.routing import KeyTable

    records = load_zsre(args.data).records[: args.records]
    nq = sorted({r.locality[0].prompt.removeprefix("nq question: ")
                 for r in load_zsre(args.data).records})[: args.records]
    results = {"records": len(records), "nq_questions": len(nq), "model": "embedded SmolLM2-135M-Instruct (Q4_1 "
               "GGUF dequantised)", "prompt_format": "raw", "strategies": {}}
    for spec in args.strategies.split(","):
        key, distance = spec.split(":")
        editor = Editor.from_pretrained(config=EditConfig(key=key, distance=distance, prompt_format="raw"))
        encode = lambda texts, editor=editor: editor.router.queries([editor.format.encode(t) for t in texts])  # noqa: E731
        keys, rephrases, questions = encode([r.prompt for r in records]), encode([r.rephrases[0] for r in records]), \
            encode(nq)
        table = KeyTable(keys.shape[1], distance)
        for slot, k in enumerate(keys):
            table.add(k, slot)
        targets = [r.target for r in records]
        r_dist, r_slot = torch.cat([torch.stack(table.nearest(q[None])) for q in rephrases], 1)
        r_slot = r_slot.long()
        right = torch.tensor([targets[int(s)] == targets[i] for i, s in enumerate(r_slot)])
        q_dist = torch.cat([table.nearest(q[None])[0] for q in questions])
        sweep = {}
        for threshold in torch.quantile(q_dist, torch.tensor([0.001, 0.002, 0.01, 0.02, 0.05])).tolist():
            sweep[f"{threshold:.4f}"] = {
                "rephrase_routed_right": float(((r_dist < threshold) & right).float().mean()),
                "nq_routed": float((q_dist < threshold).float().mean()),
            }
        default = editor.config.resolved_threshold()
        results["strategies"][spec] = {
            "rephrase_nearest_is_right": float(right.float().mean()),
            "rephrase_distance": quantiles(r_dist), "nq_distance": quantiles(q_dist),
            "default_threshold": default,
            "at_default": {"rephrase_routed_right": float(((r_dist < default) & right).float().mean()),
                           "nq_routed": float((q_dist < default).float().mean())},
            "threshold_sweep": sweep,
        }
        print(spec, json.dumps(results["strategies"][spec], indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
