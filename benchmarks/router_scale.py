"""The routing table at 10^4, 10^5 and 10^6 keys: a whole-table search (key="encoder", and edits made without a
subject) and the default key's lookup among the few edits that name an input's subject, with memory and build time.

SYNTHETIC KEYS: random unit vectors of the key encoder's dimension (384), one key per edit; queries are random too,
and the candidates of a subject lookup are 8 random edits. This measures the table's cost, not routing quality.

    .venv/bin/python benchmarks/router_scale.py --sizes 10000,100000,1000000 --out results/router_scale.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from sola.routing.table import KeyTable


def per_query_ms(fn, queries: list, repeats: int = 3) -> float:
    """Median over `repeats` rounds of the mean time per query, in ms."""
    fn(queries[0])  # warm: lazily built copies and indexes are not a query's cost
    rounds = []
    for _ in range(repeats):
        started = time.perf_counter()
        for query in queries:
            fn(query)
        rounds.append((time.perf_counter() - started) / len(queries) * 1e3)
    return round(statistics.median(rounds), 3)


def measure(size: int, dim: int, count: int, generator: torch.Generator) -> dict:
    keys = torch.randn(size, dim, generator=generator)
    table = KeyTable(dim, "cosine")
    started = time.perf_counter()
    table.add_rows(keys, torch.arange(size))
    build = time.perf_counter() - started
    queries = [torch.randn(dim, generator=generator) for _ in range(count)]
    started = time.perf_counter()
    table.nearest_of(queries[0], [0])  # the first lookup among a few edits builds their row index (if not yet)
    first = time.perf_counter() - started
    pairs = iter([torch.randint(0, size, (8,), generator=generator).tolist() for _ in range(count)] * 10)
    return {"build_s": round(build, 2), "first_subject_lookup_s": round(first, 3),
            "whole_table_ms": per_query_ms(lambda q: table.nearest(q.reshape(1, -1)), queries),
            "subject_lookup_ms": per_query_ms(lambda q: table.nearest_of(q, next(pairs)), queries),
            "keys_mb": round(table.keys.nbytes / 2**20, 1),
            "half_copy_mb": round(size * dim * 2 / 2**20, 1) if size >= 4096 else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--out", default="results/router_scale.json")
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    result = {"synthetic": True, "dim": args.dim, "threads": torch.get_num_threads(),
              "machine": {"platform": platform.platform(), "torch": torch.__version__}, "sizes": {}}
    for size in [int(s) for s in args.sizes.split(",")]:
        row = measure(size, args.dim, args.queries, generator)
        result["sizes"][str(size)] = row
        print(size, json.dumps(row), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
