"""Reading a large store in bulk: the cyclic garbage collector paused while millions of small objects are made.

Opening a store of 10^6 edits makes a few million dicts, lists and strings (the journal's records, the ids). Each time
enough objects are made the collector runs, and its older generations walk every object made so far: on this
project's 2-core machine that was 5.1 s of the 6.7 s `json.loads` took on a journal of 10^6 records, and as much again
in the loops after it. None of these objects can form a reference cycle that needs collecting, so the open pauses the
collector and lets it resume after (docs/performance.md). The pause is process-wide: other threads also run without
cyclic collection for those seconds (reference counting still frees everything that is not in a cycle).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector inside the block; it runs again after, if it was running before (nested
    blocks and callers that paused it themselves are left as they were)."""
    running = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if running:
            gc.enable()
