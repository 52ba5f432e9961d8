"""Memory of the process an actor runs in: its peak, so a run can say what each tier cost, and
how often Python's cyclic collector walks what it holds.

A Ray actor is a process of its own (a few hundred MB once torch is imported); at scale the
question is how many of them a machine holds, and that is answered by each one's peak.
"""

from __future__ import annotations

import contextlib
import gc
import resource
import sys
from collections.abc import Iterator


def peak_rss_bytes() -> int:
    """This process's peak resident set size in bytes (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


class ReportsPeakMemory:
    """Mixed into every tier host: ``peak_rss_bytes`` answered by the actor's own process."""

    def peak_rss_bytes(self) -> int:
        return peak_rss_bytes()


# Allocations between two young-generation collections (CPython's default is 700).
GC_YOUNG_THRESHOLD = 50_000


def relax_gc() -> None:
    """Collect this process's young objects every ``GC_YOUNG_THRESHOLD`` allocations instead of
    every 700. A host holds thousands of sessions, each a few hundred small objects, and builds
    more with every migration: the cyclic collector's passes over them were half of the cost of
    opening or receiving a session (226 -> 133 us at 5,000 sessions). Sessions hold no reference
    cycles (closing 5,000 leaves nothing for the collector), so refcounting frees them; the collector
    still runs, only less often, and what it holds back is at most that many young objects."""
    young, *older = gc.get_threshold()
    if young < GC_YOUNG_THRESHOLD:
        gc.set_threshold(GC_YOUNG_THRESHOLD, *older)


@contextlib.contextmanager
def relaxed_gc() -> Iterator[None]:
    """:func:`relax_gc` for the duration of a block (the orchestrator's run, in a process that may
    be someone else's program), then the thresholds as they were."""
    before = gc.get_threshold()
    relax_gc()
    try:
        yield
    finally:
        gc.set_threshold(*before)
