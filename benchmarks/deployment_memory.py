"""Memory and disk per edit, computed from the shapes (no model is loaded): the figures in docs/deployment.md.

    python benchmarks/deployment_memory.py [--out docs/runs/experiments/deployment-memory.json]

An edit is one rank-r LoRA on each edited layer (default: three MLP down projections, in = intermediate size,
out = hidden size, r = 4) and one routing key per prompt (all-MiniLM-L6-v2: 384 float32). In the editor the factors are
float32 buffers; a store keeps them as factor_dtype (bfloat16 by default); a PEFT export writes float32.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

MODELS = {  # public config.json values
    "SmolLM2-135M-Instruct": {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                              "params": 134.5e6},
    "Llama-3-8B": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "params": 8.03e9},
}
KEY_DIM, LAYERS, RANK, EDITS = 384, 3, 4, 100_000


def per_edit(shape: dict, layers: int = LAYERS, rank: int = RANK, prompts: int = 1) -> dict[str, float]:
    factors = layers * rank * (shape["intermediate_size"] + shape["hidden_size"])  # A (r, in) + B (out, r)
    return {"factor_parameters": factors, "memory_bytes_float32": factors * 4, "store_bytes_bfloat16": factors * 2,
            "peft_adapter_bytes_float32": factors * 4, "key_bytes": prompts * KEY_DIM * 4}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="also write the figures as JSON here")
    parser.add_argument("--resident", type=int, default=1024, help="edits whose factors the editor keeps in memory")
    args = parser.parse_args()
    report = {"layers": LAYERS, "rank": RANK, "key_dim": KEY_DIM, "edits": EDITS, "resident_edits": args.resident,
              "models": {}}
    for name, shape in MODELS.items():
        one = per_edit(shape)
        weights_bf16 = shape["params"] * 2
        total = {"base_weights_bfloat16": weights_bf16,
                 "resident_factors": args.resident * one["memory_bytes_float32"],
                 "all_keys": EDITS * one["key_bytes"],
                 "store": EDITS * (one["store_bytes_bfloat16"] + one["key_bytes"])}
        report["models"][name] = {"per_edit": one, f"for_{EDITS}_edits": total}
        print(f"{name}: per edit {one['factor_parameters']:,} LoRA parameters = {one['memory_bytes_float32'] / 1e6:.2f}"
              f" MB in memory (float32), {one['store_bytes_bfloat16'] / 1e6:.2f} MB stored (bfloat16), key "
              f"{one['key_bytes'] / 1e3:.1f} kB; {EDITS:,} edits: store {total['store'] / 1e9:.1f} GB, keys "
              f"{total['all_keys'] / 1e6:.0f} MB in memory, {args.resident} resident edits' factors "
              f"{total['resident_factors'] / 1e9:.2f} GB, base weights {weights_bf16 / 1e9:.1f} GB (bfloat16)")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
