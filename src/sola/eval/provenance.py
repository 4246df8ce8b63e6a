"""What a run cost (time per edit, inference overhead and throughput, store and memory size) and what it ran on (the
code version and the machine), for results.json."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

from ..files import tree_bytes
from . import metrics as M
from .items import Item
from .spec import BenchSpec


def code_version() -> str:
    from .. import __version__

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).parent).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=5, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", ""
    return f"{__version__}+{commit}{'.dirty' if dirty else ''}" if commit else __version__


def machine() -> dict[str, Any]:
    import torch

    return {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpus": os.cpu_count(), "threads": torch.get_num_threads()}


def cost(method, described: dict[str, Any], done: list[dict], items: list[Item], spec: BenchSpec) -> dict[str, Any]:
    """Seconds per edit; inference time with and without the edits on up to 32 unrelated prompts (batch size 1) and
    its throughput; the size of the store and of the edits in memory."""
    seconds = [d["seconds"] for d in done if d.get("seconds") is not None]
    cost: dict[str, Any] = {"seconds_per_edit": M.median_p90(seconds),
                            "adapters_reused": any(d.get("reused") for d in done)}
    prompts = [p.prompt for it in items for p in it.probes["unrelated"]][:32]
    if prompts:
        timed = {}
        for label, context in (("base", method.base), ("edited", None)):
            t = time.perf_counter()
            if context is None:
                answers = method.generate(prompts, spec.max_new_tokens, 1)
            else:
                with context():
                    answers = method.generate(prompts, spec.max_new_tokens, 1)
            timed[label] = {"seconds": time.perf_counter() - t, "answers": answers}
        cost["inference"] = {
            "prompts": len(prompts), "batch_size": 1,
            "base_seconds": timed["base"]["seconds"], "edited_seconds": timed["edited"]["seconds"],
            "overhead": timed["edited"]["seconds"] / timed["base"]["seconds"] - 1,
        }
        for label in ("edited", "base"):  # answer tokens plus the end token of each
            counts = [method.count_tokens(a) for a in timed[label]["answers"]]
            if None not in counts:
                cost["inference"][f"{label}_tokens_per_s"] = sum(c + 1 for c in counts) / timed[label]["seconds"]
    store = method.store_path
    if store is not None and Path(store).is_dir():
        size = tree_bytes(store)
        cost["store_bytes"] = size
        cost["store_bytes_per_edit"] = size / max(1, len(done))
    memory = described["info"].get("memory_bytes") if "info" in described else None
    if memory:
        live = max(1, described["info"].get("edits", 1))
        cost["memory_bytes_per_edit"] = {k: v / live for k, v in memory.items()}
        cost["memory_bytes_total"] = memory
    return cost
