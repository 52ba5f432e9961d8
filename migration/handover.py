"""Which edge serves each device: the nearest covering edge, with hysteresis against flapping."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tierflow.migration.errors import MobilityInputError


@dataclass(frozen=True)
class EdgeSite:
    name: str
    x: float
    y: float
    radius_m: float

    def distance(self, p: tuple[float, float]) -> float:
        return math.dist((self.x, self.y), p)


@dataclass(frozen=True)
class Handover:
    t_s: float
    device: str
    from_edge: str | None  # None: the device was out of every edge's coverage
    to_edge: str | None


def covering_edges(edges: Sequence[EdgeSite], p: tuple[float, float]) -> list[tuple[float, str]]:
    """(distance, name) of every edge covering ``p``, nearest first (ties by name)."""
    return sorted((e.distance(p), e.name) for e in edges if e.distance(p) <= e.radius_m)


def nearest_covering(edges: Sequence[EdgeSite], p: tuple[float, float]) -> str | None:
    covering = covering_edges(edges, p)
    return covering[0][1] if covering else None


class HandoverDetector:
    """A device keeps its edge while that edge covers it, unless a covering edge is nearer by more
    than ``hysteresis_m``; out of its edge's coverage it goes to the nearest covering edge, or to
    None (disconnected) until some edge covers it again."""

    def __init__(self, edges: Sequence[EdgeSite], hysteresis_m: float,
                 initial: Mapping[str, str | None] | None = None):
        self.edges = list(edges)
        self.hysteresis_m = float(hysteresis_m)
        if not (math.isfinite(self.hysteresis_m) and self.hysteresis_m >= 0):
            raise MobilityInputError(f"mobility.hysteresis_m: expected a finite number >= 0, got {hysteresis_m}")
        if len({e.name for e in self.edges}) != len(self.edges):
            raise MobilityInputError("edges: names must be unique")
        names = {e.name for e in self.edges}
        self.current: dict[str, str | None] = {d: (e if e in names else None) for d, e in (initial or {}).items()}

    def choose(self, device: str, p: tuple[float, float]) -> str | None:
        covering = covering_edges(self.edges, p)
        if not covering:
            return None
        best_d, best = covering[0]
        cur = self.current.get(device)
        for dist, name in covering:
            if name == cur and dist - best_d <= self.hysteresis_m:
                return cur
        return best

    def update(self, t_s: float, positions: Mapping[str, tuple[float, float]]) -> list[Handover]:
        events = []
        for device in sorted(positions):  # a device seen for the first time attaches without an event
            new = self.choose(device, positions[device])
            old = self.current.get(device)
            if device not in self.current:
                self.current[device] = new  # first sight: an attachment, not a handover
                continue
            if new != old:
                self.current[device] = new
                events.append(Handover(t_s, device, old, new))
        return events


def handovers_between(mobility, detector: HandoverDetector, t0_s: float, t1_s: float, dt_s: float) -> list[Handover]:
    """Sample positions every ``dt_s`` from t0 to t1 inclusive and collect the handovers."""
    if not dt_s > 0:
        raise ValueError(f"dt_s: expected a positive step, got {dt_s}")
    events = []
    steps = int(math.floor((t1_s - t0_s) / dt_s + 1e-9))
    for i in range(steps + 1):
        t = t0_s + i * dt_s
        events.extend(detector.update(t, mobility.positions(t)))
    return events
