"""Cost of many stored edits: route lookup, memory, store size and open time, inference overhead.

SYNTHETIC EDITS: this measures storage, lookup, memory and overhead, not editing quality. Keys are random unit vectors
of the key encoder's dimension and LoRA factors are random numbers of the real shapes (the embedded model's default
layers and rank), so no query routes to them; the queries are real NQ questions.

    .venv/bin/python benchmarks/scale.py --sizes 1000,10000 --lookup-sizes 1000,10000,100000 --out results/scale.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch


def rss_bytes() -> int:
    """Current resident set size of this process (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def synthetic_tensors(editor, generator: torch.Generator, dim: int) -> dict[str, torch.Tensor]:
    tensors = {"keys": torch.randn(1, dim, generator=generator)}
    for name, layer in zip(editor.config.layers, editor.layers):
        tensors[f"{name}.lora_A"] = torch.randn(layer.rank, layer.in_features, generator=generator) * 0.01
        tensors[f"{name}.lora_B"] = torch.randn(layer.out_features, layer.rank, generator=generator) * 0.01
    return tensors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--sizes", default="1000,10000", help="stored edits for store/open/memory/overhead figures")
    parser.add_argument("--lookup-sizes", default="1000,10000,100000", help="keys for the route-lookup figure")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5, help="alternating runs of bare and edited generation")
    parser.add_argument("--data", default=None)
    parser.add_argument("--no-generation", action="store_true", help="skip the inference-overhead figures")
    parser.add_argument("--resident-edits", type=int, default=1024, help="edits whose factors stay in memory")
    parser.add_argument("--out", default="results/scale.json")
    args = parser.parse_args()

    from sola import EditConfig, Editor, batching
    from sola.data import load_dataset
    from sola.edit import Edit
    from sola.routing import KeyTable

    config = EditConfig(prompt_format="raw")
    questions = [r.prompt for r in load_dataset("nq", args.data).records[:8]]
    probe = Editor.from_pretrained(args.model, config=config)
    dim = probe.router.keys.encode(["probe"]).shape[1]
    result = {"synthetic": True, "note": __doc__.splitlines()[2].strip(),
              "machine": {"platform": platform.platform(), "threads": torch.get_num_threads(),
                          "torch": torch.__version__},
              "model": probe.source, "key_dim": dim, "lookup": {}, "stores": {}}

    # route lookup: one query against N keys, exact (one matrix product), median of 200
    query = probe.router.keys.encode(questions[:1])
    for n in [int(x) for x in args.lookup_sizes.split(",") if x]:
        table = KeyTable(dim, "cosine")
        table.add(torch.randn(n, dim, generator=torch.Generator().manual_seed(n)), slot=0)
        times = []
        for _ in range(200):
            started = time.perf_counter()
            table.nearest(query)
            times.append(time.perf_counter() - started)
        result["lookup"][n] = {"median_ms": statistics.median(times) * 1e3, "keys_bytes": table.keys.nbytes}
        print(f"lookup over {n} keys: {statistics.median(times) * 1e3:.3f} ms", flush=True)

    from sola.loading import load_model

    _, plain, _ = load_model(args.model)  # the bare model: a second copy, never wrapped by an Editor
    plain.eval()

    def generation_seconds(editor) -> float:
        """Seconds for one greedy generation of `--tokens` tokens for each question: through the editor (routing
        once from the prompt, as `Editor.generate` does), or on the plain model if `editor` is None."""
        started = time.perf_counter()
        for q in questions:
            encoded = probe.format.encode(q)
            ids = torch.tensor([encoded.ids])
            routed = contextlib.nullcontext() if editor is None else \
                editor._routed([encoded], editor.task.batch([encoded], None))
            with routed, torch.no_grad():
                (plain if editor is None else editor.model).generate(
                    input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.tokens,
                    min_new_tokens=args.tokens, do_sample=False, pad_token_id=probe.tokenizer.eos_token_id)
        return time.perf_counter() - started

    def interleaved(bare_editor, edited_editor) -> tuple[float, float]:
        """Median seconds of the generation loop on both editors, measured alternately, so that drift in the
        machine's speed (±5-8 % between runs here) falls on both alike."""
        bare_runs, edited_runs = [], []
        for _ in range(args.repeats):
            bare_runs.append(generation_seconds(bare_editor))
            edited_runs.append(generation_seconds(edited_editor))
        return statistics.median(bare_runs), statistics.median(edited_runs)

    result["bare_generation_s"] = {}
    if not args.no_generation:  # an editor without edits: its wrapped layers, no routing
        bare, edited = interleaved(None, probe)
        result["bare_generation_s"][0] = bare
        result["stores"][0] = {"generation_s": edited, "overhead": edited / bare - 1}
        print(f"0 edits: overhead {edited / bare - 1:+.2%}", flush=True)
    for n in [int(x) for x in args.sizes.split(",") if x]:
        root = Path(tempfile.mkdtemp(prefix="sola-scale-"))
        try:
            editor = Editor.from_pretrained(args.model, config=config, store=root / "store",
                                            resident_edits=args.resident_edits)
            generator = torch.Generator().manual_seed(0)
            started = time.perf_counter()
            for i in range(n):
                record = Edit(id=f"e{i + 1}", prompts=(f"synthetic edit {i}",), target="x")
                batching.commit(editor, record, *_split(synthetic_tensors(editor, generator, dim)))
            write_s = time.perf_counter() - started
            store_bytes = sum(p.stat().st_size for p in (root / "store").rglob("*") if p.is_file())
            bare, edited = (None, None) if args.no_generation else interleaved(None, editor)
            result["bare_generation_s"][n] = bare
            memory = editor.info()["memory_bytes"]
            del editor
            before = rss_bytes()
            started = time.perf_counter()
            reopened = Editor.load(root / "store", resident_edits=args.resident_edits)
            open_s = time.perf_counter() - started
            assert len(reopened.edits()) == n
            reopened_memory = reopened.info()["memory_bytes"]
            # one query routed to an edit whose factors are not in memory: read back from the store
            evicted = reopened.edits()[0]
            slot = reopened.slots.of(evicted.id)
            started = time.perf_counter()
            reopened.residency.rows(torch.tensor([slot]), reopened.parts.load)
            load_ms = (time.perf_counter() - started) * 1e3
            result["stores"][n] = {
                "commit_s_per_edit": write_s / n, "store_bytes_per_edit": store_bytes / n, "open_s": open_s,
                "memory_bytes": memory, "memory_bytes_per_edit": sum(memory.values()) / n,
                "reopened_memory_bytes": reopened_memory, "resident_edits": args.resident_edits,
                "rss_growth_on_open_bytes": rss_bytes() - before, "read_back_one_edit_ms": load_ms,
                "generation_s": edited, "overhead": edited / bare - 1 if bare else None}
            print(f"{n} edits: {result['stores'][n]}", flush=True)
            del reopened
        finally:
            shutil.rmtree(root, ignore_errors=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print("wrote", args.out)


def _split(tensors: dict[str, torch.Tensor]):
    keys = tensors.pop("keys")
    return keys, [(tensors[k], tensors[k.replace("lora_A", "lora_B")]) for k in tensors if k.endswith("lora_A")]


if __name__ == "__main__":
    main()
