"""One writer at a time across processes: an OS file lock on a store directory.

Every change of a store (an edit, a rollback, a threshold, an index file, a repair) happens while its writer holds an
exclusive `flock` on `STORE/lock`. The operating system releases the lock when the holder's process ends, however it
ends (kill -9 included), so a crashed writer never leaves the store locked. The lock file also holds who took it
(pid, command, time), only so that a writer that gives up waiting can say whom it waited for. Readers never take it:
they read the journal's complete lines, and a line is written only after the tensors it names are durable.

`flock` locks belong to an open file: two `StoreLock`s on one store exclude each other also inside one process (two
editors on one store in one program behave like two processes).
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from .errors import StoreBusyError, StoreError

LOCK, QUEUE = "lock", "lock.queue"
# How long a writer waits for another process's change to finish before it gives up (seconds). A change holds the lock
# for one batch of training and its commit: about a second for one edit on the embedded model on 2 CPU cores, under a
# minute for a batch of 16 long targets. `sola ... --wait SECONDS` and `Editor(lock_wait=...)` change it.
DEFAULT_WAIT = 120.0
_POLL = 0.05  # seconds between attempts while waiting


class StoreLock:
    """A re-entrant exclusive lock on one store directory, held with `with lock.held(): ...`."""

    def __init__(self, directory: Path, wait: float = DEFAULT_WAIT) -> None:
        self.path = Path(directory) / LOCK
        self.wait = wait
        self._fd: int | None = None
        self._depth = 0

    @property
    def nested(self) -> bool:
        """Held more than once by this process (an inner `with` of a re-entrant use)."""
        return self._depth > 1

    @property
    def locked(self) -> bool:
        """Whether this object holds the lock now."""
        return self._depth > 0

    def acquire(self) -> None:
        if self._depth:
            self._depth += 1
            return
        deadline = time.monotonic() + self.wait
        # The turnstile: a writer first takes `lock.queue`, then the lock, then lets the queue go. A writer that has
        # just released the lock and wants it again (the next edit of a long file) must pass the queue too, which a
        # waiting writer holds, so the waiting writer always gets the lock next: no writer can starve another.
        queue = self._open(self.path.with_name(QUEUE))
        try:
            if not _take(queue, deadline):
                raise StoreBusyError(_busy_message(self.path.parent, self._holder(), self.wait))
            fd = self._open(self.path)
            if not _take(fd, deadline):
                holder = _holder(fd)
                os.close(fd)
                raise StoreBusyError(_busy_message(self.path.parent, holder, self.wait))
        finally:
            os.close(queue)  # closing releases the queue
        try:  # who holds it, for the message of a writer that gives up waiting
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(_me()).encode(), 0)
        except OSError:
            pass  # the lock is held; only the courtesy note could not be written
        self._fd, self._depth = fd, 1

    def _open(self, path: Path) -> int:
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise StoreError(f"cannot lock the store {self.path.parent} for writing ({err.strerror}); a store that is "
                             "only read needs no lock, but every change needs write access to its directory") from None

    def _holder(self) -> dict:
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return {}
        try:
            return _holder(fd)
        finally:
            os.close(fd)

    def release(self) -> None:
        assert self._depth > 0, "release without acquire"
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def __enter__(self) -> StoreLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _take(fd: int, deadline: float) -> bool:
    """An exclusive flock on `fd`, polling until `deadline`; False if it stayed taken."""
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(_POLL, left))


def _me() -> dict:
    command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv and sys.argv[0] else "python"
    return {"pid": os.getpid(), "command": command[:200],
            "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def _holder(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode())
    except (OSError, ValueError):
        return {}


def _busy_message(store: Path, holder: dict, waited: float) -> str:
    who = f"process {holder['pid']}" if "pid" in holder else "another process"
    if holder.get("command"):
        who += f" (`{holder['command']}`)"
    since = f" since {holder['since']}" if holder.get("since") else ""
    return (f"the store {store} is being changed by {who}{since}; gave up after waiting {waited:.0f} s. Wait for it "
            "to finish and try again, or wait longer with --wait SECONDS (Editor.from_pretrained(..., "
            "lock_wait=SECONDS))")
