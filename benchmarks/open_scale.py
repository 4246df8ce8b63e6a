"""Opening a store of up to a million edits: `Editor.load` timed in a fresh process, then its first whole-table route
(which computes the key table's sign codes above `EditConfig.approximate_search_from` keys) and routes after it.

SYNTHETIC EDITS: the embedded model with one edited layer at rank 1 (so a million edits take ~8 GB, not the ~52 GB of
the default three layers at rank 4), key="encoder" keys that are random unit vectors of the encoder's dimension, zero
factors. They are committed through the real store (`Store.commit_edit`: tensor file, journal line, key index every
1,000 edits) with fsync turned off while building, which changes nothing that is read back. Opening reads what any
store of that many edits holds: the manifest, the journal, the key index and the factors of the resident edits.

    .venv/bin/python benchmarks/open_scale.py --edits 1000000 --store /tmp/sola-open-1m --out results/open_scale.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

LAYER = "model.layers.15.mlp.down_proj"
QUERIES = ["who wrote the origin of species", "what is the capital of peru", "synthetic edit 17",
           "when did the berlin wall fall", "how many moons does mars have"]


def build(path: Path, edits: int) -> float:
    """Commit synthetic edits into the store at `path` (made if missing) until it holds `edits`; -> seconds taken."""
    from sola import EditConfig, Editor
    from sola.edit import Edit

    config = EditConfig(prompt_format="raw", key="encoder", layers=[LAYER], rank=1)
    editor = Editor.from_pretrained(None, config=config, store=path, create=True)
    layer, store = editor.layers[0], editor.store
    have = len(store.journal())
    generator = torch.Generator().manual_seed(have)
    fsync, os.fsync = os.fsync, lambda fd: None  # durability is not what is measured; what is written is the same
    started = time.perf_counter()
    try:
        for number in range(have + 1, edits + 1):
            record = Edit(id=f"e{number}", prompts=(f"synthetic edit {number}",), target="x").to_dict()
            store.commit_edit(record, {
                "keys": torch.nn.functional.normalize(torch.randn(1, 384, generator=generator), dim=-1),
                f"{LAYER}.lora_A": torch.zeros(1, layer.in_features, dtype=torch.bfloat16),
                f"{LAYER}.lora_B": torch.zeros(layer.out_features, 1, dtype=torch.bfloat16)})
            if number % 50000 == 0:
                print(f"built {number} edits", flush=True)
    finally:
        os.fsync = fsync
    return time.perf_counter() - started


def measure_open(path: Path) -> dict:
    """In this process (run fresh): open, the first whole-table route, then the median of later routes."""
    started = time.perf_counter()
    from sola import Editor

    imported = time.perf_counter() - started
    editor = Editor.load(path)
    opened = time.perf_counter() - started
    editor.route(QUERIES[0])
    first = time.perf_counter() - started - opened
    times = []
    for _ in range(20):
        for query in QUERIES:
            begun = time.perf_counter()
            editor.route(query)
            times.append(time.perf_counter() - begun)
    times.sort()
    info = editor.info()
    begun = time.perf_counter()
    editor.store.next_id()  # the first writer's call works out the highest id ever used (a reader never needs it)
    next_id = time.perf_counter() - begun
    held = []
    for _ in range(100):  # what every commit pays before writing: the lock, the journal's new lines, the index files
        begun = time.perf_counter()
        with editor.store.writing():
            pass
        held.append(time.perf_counter() - begun)
    held.sort()
    begun = time.perf_counter()
    gc.collect()  # what a full pass of the garbage collector costs a process holding this store
    collected = time.perf_counter() - begun
    return {"edits": info["edits"], "keys": info["keys"], "key_search": info["key_search"],
            "import_s": round(imported, 2), "open_s": round(opened, 2), "first_route_s": round(first, 2),
            "route_ms_median": round(times[len(times) // 2] * 1e3, 2), "first_next_id_s": round(next_id, 2),
            "writing_overhead_ms_median": round(held[len(held) // 2] * 1e3, 2),
            "full_gc_pass_s": round(collected, 2), "gc_tracked_objects": len(gc.get_objects()),
            "rss_bytes": _resident_bytes(), "memory_bytes": info["memory_bytes"]}


def _resident_bytes() -> int | None:
    """This process's resident memory now (Linux), None elsewhere."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edits", type=int, default=1000000)
    parser.add_argument("--store", required=True, help="the store to build (kept, and reused by a later run)")
    parser.add_argument("--opens", type=int, default=2, help="fresh processes that open it, one after another")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)  # the child process
    parser.add_argument("--out", default="results/open_scale.json")
    args = parser.parse_args()
    path = Path(args.store)
    if args.measure:
        print(json.dumps(measure_open(path)))
        return
    built = build(path, args.edits)
    gc.collect()  # the editor that built it (its model, a million keys) is gone before the opens are timed
    result = {"synthetic": True, "edits": args.edits, "build_s": round(built, 1),
              "store_bytes": sum(p.stat().st_size for p in path.rglob("*") if p.is_file()),
              "machine": {"platform": platform.platform(), "threads": torch.get_num_threads(),
                          "torch": torch.__version__}, "opens": []}
    for _ in range(args.opens):
        child = subprocess.run([sys.executable, __file__, "--store", str(path), "--measure"], check=True,
                               capture_output=True, text=True)
        result["opens"].append(json.loads(child.stdout.strip().splitlines()[-1]))
        print(json.dumps(result["opens"][-1]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
