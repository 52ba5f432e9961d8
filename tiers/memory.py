"""Peak resident memory of the process an actor runs in, so a run can say what each tier cost.

A Ray actor is a process of its own (a few hundred MB once torch is imported); at scale the
question is how many of them a machine holds, and that is answered by each one's peak.
"""

from __future__ import annotations

import resource
import sys


def peak_rss_bytes() -> int:
    """This process's peak resident set size in bytes (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


class ReportsPeakMemory:
    """Mixed into every tier host: ``peak_rss_bytes`` answered by the actor's own process."""

    def peak_rss_bytes(self) -> int:
        return peak_rss_bytes()
