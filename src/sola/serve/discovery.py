"""How `sola ask` finds a `sola serve` already running on the same store, so that it asks there in a fraction of a
second instead of loading the model (seconds). The server writes `$SOLA_HOME/serving/<store key>.json` (its URL, pid,
whether reads need the token, and the token file) when it starts and removes it when it stops; a file whose process
is gone is ignored. Standard library only: the CLI reads it before importing torch."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..home import sola_home


def serving_file(store: str | os.PathLike) -> Path:
    key = hashlib.sha1(str(Path(store).resolve()).encode()).hexdigest()[:16]
    return sola_home() / "serving" / f"{key}.json"


@contextmanager
def announced(store: str | os.PathLike, url: str, *, read_token: bool, token_file: Path) -> Iterator[Path]:
    """While inside, the server on `store` is findable (`find`)."""
    path = serving_file(store)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"store": str(Path(store).resolve()), "url": url, "pid": os.getpid(), "read_token": read_token,
              "token_file": str(token_file)}
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    temporary.write_text(json.dumps(record))
    os.replace(temporary, path)
    try:
        yield path
    finally:
        try:
            if json.loads(path.read_text()).get("pid") == os.getpid():  # not another server's, started since
                path.unlink()
        except (OSError, ValueError):
            pass


def find(store: str | os.PathLike) -> dict | None:
    """The running server on `store` (its record), or None."""
    try:
        record = json.loads(serving_file(store).read_text())
        os.kill(int(record["pid"]), 0)  # raises if the process is gone
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return record if record.get("store") == str(Path(store).resolve()) else None
