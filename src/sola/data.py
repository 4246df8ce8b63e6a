"""Where the benchmark data lives: `--data`, $SOLA_DATA, or `shared/data` beside the project (never copied into it)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import SolaError


def data_dir(explicit: str | os.PathLike | None = None) -> Path:
    candidates = [Path(explicit)] if explicit else []
    if os.environ.get("SOLA_DATA"):
        candidates.append(Path(os.environ["SOLA_DATA"]))
    candidates += [Path.cwd().parent / "shared" / "data", Path(__file__).resolve().parents[3] / "shared" / "data"]
    for candidate in candidates:
        if (candidate / "zsre").is_dir() or (candidate / "counterfact").is_dir():
            return candidate
    raise SolaError(f"benchmark data not found (looked in {', '.join(map(str, candidates))}); pass --data DIR or set "
                    "SOLA_DATA to the directory holding zsre/ and counterfact/")


def load_zsre(directory: str | os.PathLike | None = None) -> list[dict]:
    """The WISE/EasyEdit zsRE eval split as a list of its JSON records (src, alt, rephrase, loc, loc_ans, subject)."""
    path = data_dir(directory) / "zsre" / "zsre_mend_eval.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise SolaError(f"cannot read {path}: {err}") from None
