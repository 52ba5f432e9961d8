"""Where a run's start-up goes: seconds per phase, from the moment the OS started this process.

A run's wall time (``wall_time_s``) starts when the fleet does; what came before it (the
interpreter, imports, the world, Ray) is a user's wait too. ``summary.json``'s ``startup`` says
how long each phase took, so benchmarks/startup.py can tell start-up from the round loop.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict, dataclass, field


def process_age_s() -> float | None:
    """Seconds since the OS started this process (Linux: /proc, 10 ms ticks), None where unknown."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        with open("/proc/self/stat", "rb") as fh:
            stat = fh.read().decode()
        # Fields after the command name (which may hold spaces); starttime is field 22 overall.
        start_ticks = int(stat.rsplit(")", 1)[1].split()[19])
        return time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


@dataclass
class StartupTimes:
    """Seconds per start-up phase, in the order they run; ``before_s`` is the process's life before the
    orchestrator was built (interpreter, imports, reading the scenario), None where it cannot be known."""

    before_s: float | None = None
    world_s: float = 0.0  # data, model, cost model and placement (orchestrator.world, clock)
    ray_s: float = 0.0  # joining or starting Ray
    actors_s: float = 0.0  # Fleet.start: actor processes up, data planes wired, devices given
    open_s: float = 0.0  # every device's stages and sessions built from the initial model
    first_eval_s: float = 0.0  # the initial model's evaluation
    _t: float = field(default=0.0, repr=False)

    def begin(self) -> None:
        self.before_s = process_age_s()
        self._t = time.perf_counter()

    def lap(self, phase: str) -> None:
        """Charge the time since the previous lap (or ``begin``) to ``phase``: laps are contiguous, so
        the phases add up to everything since ``begin``."""
        now = time.perf_counter()
        setattr(self, phase, getattr(self, phase) + now - self._t)
        self._t = now

    @property
    def total_s(self) -> float | None:
        phases = self.world_s + self.ray_s + self.actors_s + self.open_s + self.first_eval_s
        return None if self.before_s is None else self.before_s + phases

    def to_json(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if not k.startswith("_")}
        out["total_s"] = self.total_s
        return out
