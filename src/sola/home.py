"""Where sola keeps what is not a store: `$SOLA_HOME` (default ~/.cache/sola). Standard library only, so that
commands which need no model start without importing torch."""

from __future__ import annotations

import os
from pathlib import Path


def sola_home() -> Path:
    return Path(os.environ.get("SOLA_HOME") or Path.home() / ".cache" / "sola")
