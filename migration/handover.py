"""Which edge serves each device: the nearest covering edge, with hysteresis against flapping."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from tierflow.migration.errors import MobilityInputError

_MARGIN = 1e-10  # of the scene's size: far above the rounding of an array distance, far below any decision


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
        self._index = {e.name: i for i, e in enumerate(self.edges)}
        self._xy = np.array([(e.x, e.y) for e in self.edges], dtype=np.float64).reshape(len(self.edges), 2)
        self._r = np.array([e.radius_m for e in self.edges], dtype=np.float64)
        self._orders: dict[tuple[str, ...], list[int]] = {}

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
        ids = list(positions)
        xy = np.array([positions[d] for d in ids], dtype=np.float64).reshape(len(ids), 2)
        return self.update_array(t_s, ids, xy)

    def update_array(self, t_s: float, ids: Sequence[str], xy: np.ndarray) -> list[Handover]:
        """:meth:`update` for positions as an [N, 2] array in the order of ``ids``.

        Array distances pick out the devices that surely keep their edge (covered with a margin, and
        not beaten by more than the hysteresis less the margin); every other device is decided by
        :meth:`choose`, exactly as a loop over all of them would, in name order.
        """
        order = self._orders.get(tuple(ids))
        if order is None:
            if len(self._orders) > 8:
                self._orders.clear()
            order = self._orders[tuple(ids)] = sorted(range(len(ids)), key=ids.__getitem__)
        undecided = self._undecided(ids, np.asarray(xy, dtype=np.float64))
        events = []
        for i in order:  # a device seen for the first time attaches without an event
            if not undecided[i]:
                continue
            device = ids[i]
            new = self.choose(device, (float(xy[i, 0]), float(xy[i, 1])))
            old = self.current.get(device)
            if device not in self.current:
                self.current[device] = new  # first sight: an attachment, not a handover
                continue
            if new != old:
                self.current[device] = new
                events.append(Handover(t_s, device, old, new))
        return events

    def _undecided(self, ids: Sequence[str], xy: np.ndarray) -> np.ndarray:
        """[N] bool: the devices :meth:`choose` must decide; the others keep their current edge."""
        n = len(ids)
        if not self.edges or n == 0:
            return np.ones(n, dtype=bool)
        cur = np.array([self._index.get(self.current.get(d, ""), -1) if d in self.current else -1 for d in ids],
                       dtype=np.intp)
        dx, dy = xy[:, None, 0] - self._xy[None, :, 0], xy[:, None, 1] - self._xy[None, :, 1]
        dist = np.sqrt(dx * dx + dy * dy)
        scale = 1.0 + float(np.max(np.abs(xy), initial=0.0)) + float(np.max(np.abs(self._xy))) + float(np.max(self._r))
        margin = _MARGIN * scale + 1e-12 * self.hysteresis_m
        maybe_covering = np.where(dist <= self._r + margin, dist, np.inf)
        nearest_lower = maybe_covering.min(axis=1)
        rows = np.arange(n)
        d_cur = dist[rows, np.maximum(cur, 0)]
        stays = (cur >= 0) & (d_cur <= self._r[np.maximum(cur, 0)] - margin) \
            & (d_cur - nearest_lower <= self.hysteresis_m - margin)
        return ~stays


def handovers_between(mobility, detector: HandoverDetector, t0_s: float, t1_s: float, dt_s: float) -> list[Handover]:
    """Sample positions every ``dt_s`` from t0 to t1 inclusive and collect the handovers."""
    if not dt_s > 0:
        raise ValueError(f"dt_s: expected a positive step, got {dt_s}")
    events = []
    steps = int(math.floor((t1_s - t0_s) / dt_s + 1e-9))
    for i in range(steps + 1):
        t = t0_s + i * dt_s
        if hasattr(mobility, "positions_array"):
            events.extend(detector.update_array(t, mobility.ids, mobility.positions_array(t)))
        else:
            events.extend(detector.update(t, mobility.positions(t)))
    return events
