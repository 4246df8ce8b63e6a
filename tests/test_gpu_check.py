"""benchmarks/gpu_check.py on a tiny shape on the CPU: the script a GPU machine runs must not rot between loans."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_gpu_check_runs_tiny_on_the_cpu_and_writes_its_figures(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "SOLA_HOME": str(tmp_path / "home")}
    done = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--tiny", "--out", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads((tmp_path / "gpu_check.json").read_text())
    assert figures["tiny"] and figures["device"] == "cpu" and figures["random_weights"]
    assert figures["rollback_bit_exact"] is True
    assert figures["seconds_per_edit"]["median"] > 0 and set(figures["edit_many"]) == {"4", "8"}
    assert [row["stored_edits"] for row in figures["inference"].values()] == [0, 10, 30]
    assert figures["contract_on_device"]["returncode"] == 0 and "passed" in figures["contract_on_device"]["summary"]
