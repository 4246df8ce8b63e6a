"""Durable file writes: a file replaced atomically (readers see the old file or the new one, never half of either)
and the directory entry made durable; and the size of a directory tree."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def tree_bytes(path: str | os.PathLike) -> int:
    """Bytes of the files under `path`, one stat a file (a store of 10^6 edits holds a million files; a glob with
    `is_file()` and `stat()` took 15.9 s there, this a fraction). Links to directories are not followed."""
    total = 0
    with os.scandir(path) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                total += tree_bytes(entry.path)
            elif entry.is_file():
                total += entry.stat().st_size
    return total


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write) -> None:
    """write(temp_path) then fsync and rename over `path`: readers see the old file or the new one, never half."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(temp))
        with open(temp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
