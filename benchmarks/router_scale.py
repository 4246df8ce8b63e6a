"""The routing table at 10^4, 10^5 and 10^6 keys: the whole-table search (key="encoder", and edits made without a
subject), exact and through sign codes (`sola.routing.signcodes`) side by side with the approximate search's recall
against the exact one; the default key's lookup among the few edits that name an input's subject; memory; and the
time to read a store's key index of that many rows into a table and answer the first search.

SYNTHETIC KEYS: random unit vectors of the key encoder's dimension (384), one key per edit. A query is a key moved to a
chosen cosine distance from it (in a random direction), so recall is measured at the distances that route: under the
default thresholds (0.40 for whole-prompt keys; 0.60 for subject keys) and beyond. Random keys have no structure for
an index to use: every other key is near cosine distance 1. `--real` adds encoded benchmark prompts (zsRE, CounterFact,
NQ) as keys, with their paraphrases as queries, searched with the approximate search forced on (real keys crowd each
other: the case random keys cannot show).

    .venv/bin/python benchmarks/router_scale.py --sizes 10000,100000,1000000 --real --out results/router_scale.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from sola.key_index import KeyIndex
from sola.routing.table import KeyTable

DISTANCES = (0.1, 0.25, 0.4, 0.5, 0.58)  # of a query from the key it was made from (cosine distance)
BEYOND = 0.65  # queries this far from their key: no route either way at the default thresholds


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


def moved(keys: torch.Tensor, distance: float, generator: torch.Generator) -> torch.Tensor:
    """Unit vectors at exactly `distance` (cosine) from each of `keys`, in random directions."""
    noise = torch.randn(keys.shape, generator=generator)
    noise = torch.nn.functional.normalize(noise - (noise * keys).sum(1, keepdim=True) * keys, dim=-1)
    similarity = 1.0 - distance
    return similarity * keys + (1.0 - similarity**2) ** 0.5 * noise


def compare(table: KeyTable, queries: torch.Tensor, thresholds: tuple[float, ...] = (0.4, 0.6)) -> dict:
    """Approximate against exact on the same table: recall@1 (the same edit), and inputs routed only by one of them."""
    exact, approximate = [], []
    for query in queries:
        table.approximate_from = None
        exact.append(table.nearest(query.reshape(1, -1)))
        table.approximate_from = 1
        approximate.append(table.nearest(query.reshape(1, -1)))
    same = sum(int(e[1][0] == a[1][0]) for e, a in zip(exact, approximate))
    row = {"queries": len(queries), "recall_at_1": round(same / len(queries), 4),
           "max_distance_gap": max(float(a[0][0] - e[0][0]) for e, a in zip(exact, approximate))}
    for threshold in thresholds:
        routed_exact = [float(e[0][0]) < threshold for e in exact]
        routed_approx = [float(a[0][0]) < threshold for a in approximate]
        row[f"routed_exact_at_{threshold}"] = sum(routed_exact)
        row[f"routed_only_by_approximate_at_{threshold}"] = sum(a and not e for e, a in zip(routed_exact,
                                                                                            routed_approx))
        row[f"refused_only_by_approximate_at_{threshold}"] = sum(e and not a for e, a in zip(routed_exact,
                                                                                            routed_approx))
    return row


def measure(size: int, dim: int, count: int, generator: torch.Generator) -> dict:
    keys = torch.nn.functional.normalize(torch.randn(size, dim, generator=generator), dim=-1)
    table = KeyTable(dim, "cosine", approximate_from=None)
    started = time.perf_counter()
    table.add_rows(keys, torch.arange(size))
    build = time.perf_counter() - started
    queries = [moved(keys[torch.randint(0, size, (1,), generator=generator)], 0.25, generator)[0]
               for _ in range(count)]
    started = time.perf_counter()
    table.nearest_of(queries[0], [0])  # the first lookup among a few edits builds their row index (if not yet)
    first = time.perf_counter() - started
    pairs = iter([torch.randint(0, size, (8,), generator=generator).tolist() for _ in range(count)] * 10)
    row = {"build_s": round(build, 2), "first_subject_lookup_s": round(first, 3),
           "whole_table_exact_ms": per_query_ms(lambda q: table.nearest(q.reshape(1, -1)), queries),
           "subject_lookup_ms": per_query_ms(lambda q: table.nearest_of(q, next(pairs)), queries),
           "keys_mb": round(table.keys.nbytes / 2**20, 1),
           "half_copy_mb": round(size * dim * 2 / 2**20, 1) if size >= 4096 else 0.0}
    table.approximate_from = 1
    started = time.perf_counter()
    table.nearest(queries[0].reshape(1, -1))  # the first approximate search computes the sign codes
    row["codes_build_s"] = round(time.perf_counter() - started, 2)
    row["codes_mb"] = round(table.codes_nbytes / 2**20, 1)
    row["whole_table_approximate_ms"] = per_query_ms(lambda q: table.nearest(q.reshape(1, -1)), queries)
    recall = {}
    for distance in (*DISTANCES, BEYOND):
        picked = keys[torch.randint(0, size, (count,), generator=generator)]
        recall[str(distance)] = compare(table, moved(picked, distance, generator))
    row["by_query_distance"] = recall
    return row


def open_figures(rows: int, dim: int, generator: torch.Generator) -> dict:
    """Seconds to read a key index of `rows` edits (one key each, 1,000 edits a file, as a store writes them) into a
    routing table and answer its first whole-table search. Not counted: the journal (whose edit ids are given)."""
    with tempfile.TemporaryDirectory() as tmp:
        index, ids = KeyIndex(Path(tmp)), []
        for start in range(0, rows, 1000):
            part = torch.nn.functional.normalize(torch.randn(min(1000, rows - start), dim, generator=generator), dim=-1)
            for n, key in enumerate(part):
                ids.append(f"e{start + n}")
                index.committed(ids[-1], key.reshape(1, -1))
            index.write(read_own=lambda edit_id: None)
        known = set(ids)
        started = time.perf_counter()
        opened = KeyIndex(Path(tmp))
        damage = opened.read(known)
        keys, counts = opened.gather(ids, read_own=lambda edit_id: None)
        read = time.perf_counter() - started
        table = KeyTable(dim, "cosine")
        table.add_rows(keys, torch.repeat_interleave(torch.arange(len(ids)), counts))
        added = time.perf_counter() - started
        table.nearest(keys[0].reshape(1, -1))
        total = time.perf_counter() - started
        return {"rows": rows, "damage": len(damage), "read_index_s": round(read, 2),
                "table_s": round(added - read, 2), "first_search_s": round(total - added, 2),
                "total_s": round(total, 2), "approximate": table.approximates}


def real_prompts(data: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """Benchmark prompts as keys, and (paraphrase, its key's prompt) pairs as queries."""
    zsre = json.loads((data / "zsre" / "zsre_mend_eval.json").read_text())
    counterfact = json.loads((data / "counterfact" / "counterfact-edit-5000.json").read_text())
    nq = [json.loads(line)["question"] for line in (data / "nq" / "NQ-open.dev.jsonl").read_text().splitlines()]
    keys = [r["src"] for r in zsre] + [r["prompt"] for r in counterfact] + nq
    pairs = [(r["rephrase"], r["src"]) for r in zsre] + [(r["rephrase_prompt"], r["prompt"]) for r in counterfact]
    return list(dict.fromkeys(keys)), pairs


def real_figures(data: Path) -> dict:
    from sola.routing.keys import SentenceEncoder

    encoder = SentenceEncoder()
    texts, pairs = real_prompts(data)
    keys = torch.cat([encoder.encode(texts[a:a + 256]) for a in range(0, len(texts), 256)])
    queries = torch.cat([encoder.encode([q for q, _ in pairs[a:a + 256]]) for a in range(0, len(pairs), 256)])
    table = KeyTable(keys.shape[1], "cosine")
    table.add_rows(keys, torch.arange(len(keys)))
    return {"keys": len(texts), "encoder": "all-MiniLM-L6-v2", "queries": "zsRE rephrase + CounterFact rephrase_prompt",
            **compare(table, queries)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--open-rows", type=int, default=1000000, help="rows of the key index opened (0: skip)")
    parser.add_argument("--real", action="store_true", help="also encoded benchmark prompts (needs ../shared/data)")
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    parser.add_argument("--out", default="results/router_scale.json")
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    result = {"synthetic": True, "dim": args.dim, "threads": torch.get_num_threads(),
              "machine": {"platform": platform.platform(), "torch": torch.__version__}, "sizes": {}}
    for size in [int(s) for s in args.sizes.split(",") if s]:
        row = measure(size, args.dim, args.queries, generator)
        result["sizes"][str(size)] = row
        print(size, json.dumps(row), flush=True)
    if args.open_rows:
        result["open"] = open_figures(args.open_rows, args.dim, generator)
        print("open", json.dumps(result["open"]), flush=True)
    if args.real:
        result["real"] = real_figures(Path(args.data))
        print("real", json.dumps(result["real"]), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
