"""The vectorized mobility and handover paths against the per-device implementations they replaced.

``LoopedWaypoint``, ``LoopedTrace`` and ``LoopedDetector`` are the loops as they were before positions
became arrays (one Python loop per device, over the per-device rules ``_Path.at`` and
``HandoverDetector.choose``, which the arrays did not change); the new code must give the same floats
and the same handovers in the same order, exactly, on the same inputs.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from tierflow.migration.handover import EdgeSite, Handover, HandoverDetector, handovers_between
from tierflow.migration.mobility import RandomWaypoint, TraceMobility, TraceSample
from tierflow.migration.mobility import _Path as LoopedPath  # the per-device rule, unchanged


class LoopedWaypoint:
    def __init__(self, device_ids, area_m, speed_mps, pause_s, seed, start=None):
        self.area, self.speed, self.pause = area_m, speed_mps, float(pause_s)
        self._rngs, self._paths = {}, {}
        for i, d in enumerate(device_ids):
            rng = np.random.default_rng([seed, i])
            p = start[d] if start and d in start else (rng.uniform(0, area_m[0]), rng.uniform(0, area_m[1]))
            self._rngs[d] = rng
            self._paths[d] = LoopedPath([0.0], [(float(p[0]), float(p[1]))])

    def _extend(self, device, t):
        path, rng = self._paths[device], self._rngs[device]
        while path.times[-1] <= t:
            here = path.points[-1]
            target = (float(rng.uniform(0, self.area[0])), float(rng.uniform(0, self.area[1])))
            speed = float(rng.uniform(*self.speed))
            arrive = path.times[-1] + math.dist(here, target) / speed
            path.times.append(arrive)
            path.points.append(target)
            if self.pause > 0:
                path.times.append(arrive + self.pause)
                path.points.append(target)

    def positions(self, t_s):
        out = {}
        for d in self._paths:
            self._extend(d, t_s)
            out[d] = self._paths[d].at(t_s)
        return out


class LoopedDetector(HandoverDetector):
    """The detector's per-device rule (``choose``, unchanged) applied one device at a time, as before."""

    def update(self, t_s, positions):
        events = []
        for device in sorted(positions):
            new = self.choose(device, positions[device])
            old = self.current.get(device)
            if device not in self.current:
                self.current[device] = new
                continue
            if new != old:
                self.current[device] = new
                events.append(Handover(t_s, device, old, new))
        return events


def waypoint_args(seed: int, n: int = 60):
    rng = np.random.default_rng(seed)
    ids = [f"d{i}" for i in rng.permutation(n)]  # not in name order: the order of ids is the index
    area = (float(rng.uniform(100, 5000)), float(rng.uniform(100, 5000)))
    lo = float(rng.uniform(0.5, 20))
    speed = (lo, lo * float(rng.uniform(1, 3)))
    pause = float(rng.choice([0.0, rng.uniform(0, 30)]))
    start = {d: (float(rng.uniform(0, area[0])), float(rng.uniform(0, area[1]))) for d in ids[::3]}
    return dict(device_ids=ids, area_m=area, speed_mps=speed, pause_s=pause, seed=seed, start=start)


@pytest.mark.parametrize("seed", range(12))
def test_waypoint_positions_equal_the_looped_ones_at_every_time_in_any_order(seed):
    kw = waypoint_args(seed)
    new, old = RandomWaypoint(**kw), LoopedWaypoint(**kw)
    rng = np.random.default_rng(1000 + seed)
    forward = np.cumsum(rng.exponential(7.0, 150))
    times = [0.0, *forward.tolist(), *rng.uniform(0, forward[-1], 30).tolist(), float(forward[-1]), 0.0]
    for t in times:
        got, want = new.positions(t), old.positions(t)
        assert list(got) == list(want) and got == want, t  # same floats, same order
        assert new.positions_array(t).tolist() == [list(want[d]) for d in kw["device_ids"]]


def test_trace_positions_equal_the_looped_ones_before_between_and_after_the_samples():
    rng = np.random.default_rng(5)
    samples, paths = [], {}
    for d in [f"t{i}" for i in range(40)]:
        times = np.sort(rng.uniform(0, 500, int(rng.integers(1, 8))))
        if len(times) > 2:
            times[1] = times[2]  # a jump: two samples at one time
        for t in times:
            samples.append(TraceSample(float(t), d, float(rng.uniform(-50, 50)), float(rng.uniform(-50, 50))))
    for t, d, x, y in samples:
        ts, ps = paths.setdefault(d, ([], []))
        ts.append(t)
        ps.append((x, y))
    new = TraceMobility.from_samples(samples)
    old = {d: LoopedPath(ts, ps) for d, (ts, ps) in paths.items()}
    for t in [*rng.uniform(-10, 600, 200).tolist(), *[s.time_s for s in samples], 0.0, 499.0, 1e9]:
        assert new.positions(t) == {d: p.at(t) for d, p in old.items()}, t


def random_edges(rng, k: int) -> list[EdgeSite]:
    return [EdgeSite(f"e{int(i)}", float(rng.uniform(0, 2000)), float(rng.uniform(0, 2000)),
                     float(rng.uniform(200, 900))) for i in rng.permutation(k)]


@pytest.mark.parametrize("seed", range(10))
def test_the_detector_makes_the_looped_handovers_in_the_same_order(seed):
    rng = np.random.default_rng(seed)
    edges = random_edges(rng, int(rng.integers(1, 9)))
    if seed % 3 == 0:  # two edges at one place: a tie in distance, broken by name
        edges.append(EdgeSite("zz", edges[0].x, edges[0].y, edges[0].radius_m))
    h = float(rng.choice([0.0, 25.0, 300.0]))
    kw = waypoint_args(seed, 80)
    kw["area_m"] = (2000.0, 2000.0)
    names = [e.name for e in edges]
    initial = {d: (names[int(rng.integers(len(names)))] if rng.random() < 0.7 else None)
               for d in kw["device_ids"][: 60]}  # the rest are first seen by the detector
    initial["gone"] = "not-an-edge"
    a, b = HandoverDetector(edges, h, dict(initial)), LoopedDetector(edges, h, dict(initial))
    mob = LoopedWaypoint(**kw)
    total = 0
    for t in np.arange(0.0, 400.0, 2.5):
        pos = mob.positions(float(t))
        got, want = a.update(float(t), pos), b.update(float(t), pos)
        assert got == want, t
        assert a.current == b.current
        total += len(got)
    assert total > 0


def test_the_detector_decides_exactly_on_the_border_and_at_the_hysteresis_margin():
    # Positions exactly on a coverage circle and exactly h nearer another edge: the array filter must
    # leave these to the exact comparison, which decides as the looped code does.
    a, b = EdgeSite("a", 0.0, 0.0, 500.0), EdgeSite("b", 1000.0, 0.0, 500.0)
    h = 100.0
    points = {"on_a": (500.0, 0.0), "on_b": (500.0, 0.0), "margin": (450.0, 0.0), "past": (449.999999, 0.0),
              "just_in": (499.9999999999, 0.0), "far": (3000.0, 0.0), "pythag": (300.0, 400.0)}
    initial = {"on_a": "a", "on_b": "b", "margin": "b", "past": "b", "just_in": "b", "far": "a", "pythag": "a"}
    for edges in ([a, b], [b, a]):
        new, old = HandoverDetector(edges, h, dict(initial)), LoopedDetector(edges, h, dict(initial))
        assert new.update(1.0, points) == old.update(1.0, points)
        assert new.current == old.current


def test_handovers_between_uses_the_arrays_and_finds_the_same():
    rng = np.random.default_rng(3)
    edges = random_edges(rng, 5)
    kw = waypoint_args(3, 50)
    kw["area_m"] = (2000.0, 2000.0)
    initial = dict.fromkeys(kw["device_ids"], edges[0].name)
    got = handovers_between(RandomWaypoint(**kw), HandoverDetector(edges, 20, dict(initial)), 0, 300, 1.5)
    old_det, mob = LoopedDetector(edges, 20, dict(initial)), LoopedWaypoint(**kw)
    want = [h for i in range(201) for h in old_det.update(0 + i * 1.5, mob.positions(0 + i * 1.5))]
    assert got == want and len(got) > 10
