"""How a run tells time (``execution.time``), chosen by name like the aggregation.

``emulated``: the clock advances by what the cost model charges (placement/cost.py) for the work
done, at the scenario's resources of the moment; two identical runs tell the same time to the bit,
and the resources are known exactly, so nothing is measured or smoothed. ``real``: the clock is
this machine's wall clock, and a device's speed is what its steps measured, smoothed.
"""

from __future__ import annotations

from typing import Protocol


class TimeMode(Protocol):
    name: str
    exact: bool  # the resources of every moment are known (not measured)

    def round_s(self, charged_s: float, wall_s: float) -> float:
        """How far the run's clock moves for a round charged ``charged_s`` that took ``wall_s``."""


class EmulatedTime:
    name = "emulated"
    exact = True

    def round_s(self, charged_s: float, wall_s: float) -> float:
        return charged_s


class RealTime:
    name = "real"
    exact = False

    def round_s(self, charged_s: float, wall_s: float) -> float:
        return wall_s


TIME_MODES: dict[str, type[TimeMode]] = {"emulated": EmulatedTime, "real": RealTime}
