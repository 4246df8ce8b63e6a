"""A run's directory, which is also what a resumed run continues from:

    OUT/spec.json          the spec (a run resumes only with the same spec)
    OUT/base.json          the base model's answers to every probe (keyed by the probes)
    OUT/progress.jsonl     one row per edit made: what the method said of it and its ES, in order
    OUT/checkpoints.jsonl  the metrics measured after 10, 100, ... edits
    OUT/store/             the method's durable state
    OUT/results.md, plots, results.json   written at the end (`sola.eval.report`), results.json last: a run with
                                          it finished
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .spec import BenchSpec


class RunDir:
    def __init__(self, out: str | os.PathLike) -> None:
        self.path = Path(out)
        self.path.mkdir(parents=True, exist_ok=True)
        self.store = self.path / "store"
        self.base_cache = self.path / "base.json"
        self._progress = self.path / "progress.jsonl"
        self._checkpoints = self.path / "checkpoints.jsonl"

    def claim(self, spec: BenchSpec) -> None:
        """Write the spec, or check it is the one this directory's run started with (a field added since then reads
        as its default)."""
        spec_file = self.path / "spec.json"
        if spec_file.exists() and not _same_spec(json.loads(spec_file.read_text()), spec):
            raise ConfigError(f"{self.path} holds a run with another spec ({spec_file}); use a new --out directory")
        spec_file.write_text(json.dumps(asdict(spec), indent=1))

    def results(self, spec: BenchSpec) -> dict[str, Any] | None:
        """The results of this run if it finished: results.json, written once at its end, if it holds this spec
        (None if absent, cut short while being written, or of another spec)."""
        path = self.path / "results.json"
        try:
            results = json.loads(path.read_text()) if path.is_file() else None
        except json.JSONDecodeError:
            return None
        if not isinstance(results, dict) or not _same_spec(results.get("spec", {}), spec):
            return None
        return results

    # -- rows of edits made ------------------------------------------------------------------------------------------
    def rows(self) -> list[dict[str, Any]]:
        return _read_lines(self._progress)

    def keep_rows(self, rows: list[dict[str, Any]]) -> None:
        """Rewrite progress.jsonl with these rows only (a snapshot method lost the edits after its last save)."""
        self._progress.write_text("".join(json.dumps(row) + "\n" for row in rows))

    def add_row(self, row: dict[str, Any]) -> None:
        with self._progress.open("a") as handle:
            handle.write(json.dumps(row) + "\n")

    # -- checkpoints -------------------------------------------------------------------------------------------------
    def checkpoints(self, edits: int) -> list[dict[str, Any]]:
        """The checkpoints measured so far, dropping (from the file too) any measured after more than `edits` edits:
        those edits were lost, so they are measured again."""
        found = _read_lines(self._checkpoints)
        if any(c["edits"] > edits for c in found):
            found = [c for c in found if c["edits"] <= edits]
            self._checkpoints.write_text("".join(json.dumps(c) + "\n" for c in found))
        return found

    def add_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        with self._checkpoints.open("a") as handle:
            handle.write(json.dumps(checkpoint) + "\n")


def _same_spec(stored: dict[str, Any], spec: BenchSpec) -> bool:
    """Whether a spec written to disk is `spec` (a field added since it was written reads as its default)."""
    return {**asdict(BenchSpec()), **stored} == asdict(spec)


def _read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
