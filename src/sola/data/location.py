"""Where the benchmark data lives: `--data`, $SOLA_DATA, or `shared/data` beside the project (never copied into it)."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import DataError


def data_dir(explicit: str | os.PathLike | None = None) -> Path:
    candidates = [Path(explicit)] if explicit else []
    if os.environ.get("SOLA_DATA"):
        candidates.append(Path(os.environ["SOLA_DATA"]))
    candidates += [Path.cwd().parent / "shared" / "data", Path(__file__).resolve().parents[4] / "shared" / "data"]
    for candidate in candidates:
        if any((candidate / sub).is_dir() for sub in ("zsre", "counterfact", "nq", "hallucination", "scotus")):
            return candidate
    raise DataError(f"benchmark data not found (looked in {', '.join(map(str, candidates))}); pass --data DIR or set "
                    "SOLA_DATA to the directory holding zsre/, counterfact/, nq/ and hallucination/")
