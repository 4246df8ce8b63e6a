"""How often can ELDER's deferral fire at all? A model-free count.

ELDER defers an input when the Hamming distance from its allocation code to the nearest stored code is epsilon or more
(Algorithm 1: the mixture is used only below epsilon).
A code has L x N bits with k set per layer. This draws T stored codes and Q query codes uniformly at random (k of N
LoRAs per layer, as ELDER's allocation generator draws them) and reports the distribution of the queries' nearest
distance and the fraction that would defer. Uniform queries are the most favourable case for deferral: a real
unrelated input's code is whatever the trained routers give it, and they give most inputs the same few codes.

Run: .venv/bin/python benchmarks/elder_deferral.py --out results/elder_deferral.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from sola.methods.elder.deferral import hamming_distances, pack_codes


def random_codes(count: int, layers: int, loras: int, top_k: int, generator: torch.Generator) -> torch.Tensor:
    """`count` packed codes (ELDER's own packing), top_k of `loras` chosen at random per layer."""
    picks = torch.rand(count, layers, loras, generator=generator).argsort(-1)[..., :top_k]
    return pack_codes(picks, loras)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--loras", type=int, default=4)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--epsilon", type=int, default=12)
    parser.add_argument("--edits", default="1,10,100,1000")
    parser.add_argument("--queries", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="results/elder_deferral.json")
    args = parser.parse_args()

    generator = torch.Generator().manual_seed(args.seed)
    bits = args.layers * args.loras
    result = {"layers": args.layers, "loras": args.loras, "top_k": args.top_k, "epsilon": args.epsilon,
              "bits": bits, "queries": args.queries, "seed": args.seed, "by_edits": {}}
    print(f"L={args.layers} N={args.loras} k={args.top_k}: {bits}-bit codes; defer when nearest distance >= "
          f"{args.epsilon}")
    print(f"{'edits':>6} {'mean nearest':>13} {'max nearest':>12} {'defer':>7}  nearest-distance counts")
    for edits in (int(t) for t in args.edits.split(",")):
        stored = random_codes(edits, args.layers, args.loras, args.top_k, generator)
        queries = random_codes(args.queries, args.layers, args.loras, args.top_k, generator)
        nearest = hamming_distances(queries, stored).min(1).values.long()
        counts = torch.bincount(nearest, minlength=bits + 1)
        row = {"mean_nearest": float(nearest.float().mean()), "max_nearest": int(nearest.max()),
               "defer_fraction": float((nearest >= args.epsilon).float().mean()),
               "nearest_counts": {str(d): int(c) for d, c in enumerate(counts) if c}}
        result["by_edits"][str(edits)] = row
        print(f"{edits:>6} {row['mean_nearest']:>13.2f} {row['max_nearest']:>12} {row['defer_fraction']:>7.3f}  "
              f"{row['nearest_counts']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
