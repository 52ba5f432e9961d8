"""Mobility models: where each device is at time t (metres, seconds).

Every model is a pure function of t, so a run, its replay and a test computing positions by hand
agree exactly.
"""

from __future__ import annotations

import bisect
import csv
import io
import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import NamedTuple

import numpy as np

from tierflow.migration.errors import MobilityInputError

Point = tuple[float, float]


class StaticMobility:
    def __init__(self, positions: Mapping[str, Point]):
        self._positions = {d: (float(p[0]), float(p[1])) for d, p in positions.items()}
        self.ids = list(self._positions)
        self._xy = np.array([self._positions[d] for d in self.ids], dtype=np.float64).reshape(len(self.ids), 2)

    def positions(self, t_s: float) -> dict[str, Point]:
        return dict(self._positions)

    def positions_array(self, t_s: float) -> np.ndarray:
        """[N, 2] positions in the order of ``ids``."""
        return self._xy.copy()


class _Path:
    """Piecewise-linear motion through (time, point) knots; holds before the first, after the last."""

    def __init__(self, times: list[float], points: list[Point]):
        self.times, self.points = times, points

    def at(self, t: float) -> Point:
        i = bisect.bisect_right(self.times, t)
        if i == 0:
            return self.points[0]
        if i == len(self.times):
            return self.points[-1]
        t0, t1 = self.times[i - 1], self.times[i]
        (x0, y0), (x1, y1) = self.points[i - 1], self.points[i]
        f = 0.0 if t1 == t0 else (t - t0) / (t1 - t0)
        return (x0 + f * (x1 - x0), y0 + f * (y1 - y0))


class _Cursor:
    """Every device's current segment of its path as arrays, so positions at a time are a few array
    operations: only a device whose segment does not hold ``t`` is looked up (and its path extended),
    one at a time as :meth:`_Path.at` would. Same floats as ``_Path.at``: the same operations in the
    same order, elementwise."""

    def __init__(self, paths: Sequence[_Path], extend=None):
        n = len(paths)
        self.paths, self.extend = list(paths), extend
        self.t0, self.t1 = np.full(n, np.inf), np.full(n, -np.inf)  # empty: every device is looked up first
        self.p0, self.p1 = np.zeros((n, 2)), np.zeros((n, 2))
        self.hold = np.zeros(n, dtype=bool)

    def _locate(self, i: int, t: float) -> None:
        path = self.paths[i]
        if self.extend is not None:
            self.extend(i, t)
        j = bisect.bisect_right(path.times, t)
        if j == 0:
            self.t0[i], self.t1[i], self.hold[i] = -np.inf, path.times[0], True
            self.p0[i] = self.p1[i] = path.points[0]
        elif j == len(path.times):
            self.t0[i], self.t1[i], self.hold[i] = path.times[-1], np.inf, True
            self.p0[i] = self.p1[i] = path.points[-1]
        else:
            self.t0[i], self.t1[i], self.hold[i] = path.times[j - 1], path.times[j], False
            self.p0[i], self.p1[i] = path.points[j - 1], path.points[j]

    def at(self, t: float) -> np.ndarray:
        """[N, 2] float64: every path at ``t``."""
        for i in np.flatnonzero(~((self.t0 <= t) & (t < self.t1))):
            self._locate(int(i), t)
        still = self.hold | (self.t1 == self.t0)
        with np.errstate(invalid="ignore", divide="ignore"):
            f = np.where(still, 0.0, (t - self.t0) / np.where(still, 1.0, self.t1 - self.t0))
        return self.p0 + f[:, None] * (self.p1 - self.p0)


def as_dict(ids: Sequence[str], xy: np.ndarray) -> dict[str, Point]:
    return dict(zip(ids, map(tuple, xy.tolist()), strict=True))


class RandomWaypoint:
    """Each device picks a uniform point in the area, walks to it at a uniform speed, pauses, repeats.

    Device i (its index in ``device_ids``) draws from ``np.random.default_rng([seed, i])``: its start
    x, y (unless ``start`` gives it), then per leg target x, target y and speed. Legs are drawn
    lazily from each device's own RNG, so positions(t) is the same whatever order or times it is
    asked at.
    """

    def __init__(self, device_ids: Sequence[str], area_m: Point, speed_mps: Point, pause_s: float, seed: int,
                 start: Mapping[str, Point] | None = None):
        if not (area_m[0] > 0 and area_m[1] > 0):
            raise MobilityInputError(f"mobility.area_m: expected two positive sizes, got {area_m}")
        if not (0 < speed_mps[0] <= speed_mps[1]):
            raise MobilityInputError(f"mobility.speed_mps: expected 0 < low <= high, got {speed_mps}")
        if not (math.isfinite(pause_s) and pause_s >= 0):
            raise MobilityInputError(f"mobility.pause_s: expected a finite number >= 0, got {pause_s}")
        if len(set(device_ids)) != len(device_ids):
            raise MobilityInputError("mobility: device ids must be unique")
        self.area, self.speed, self.pause = area_m, speed_mps, float(pause_s)
        self._rngs, self._paths = {}, {}
        for i, d in enumerate(device_ids):
            rng = np.random.default_rng([seed, i])
            p = start[d] if start and d in start else (rng.uniform(0, area_m[0]), rng.uniform(0, area_m[1]))
            self._rngs[d] = rng
            self._paths[d] = _Path([0.0], [(float(p[0]), float(p[1]))])
        self.ids = list(self._paths)
        self._cursor = _Cursor([self._paths[d] for d in self.ids], lambda i, t: self._extend(self.ids[i], t))

    def _extend(self, device: str, t: float) -> None:
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

    def positions(self, t_s: float) -> dict[str, Point]:
        return as_dict(self.ids, self.positions_array(t_s))

    def positions_array(self, t_s: float) -> np.ndarray:
        """[N, 2] positions in the order of ``ids`` (the arrays behind :meth:`positions`)."""
        if not math.isfinite(t_s):
            raise ValueError(f"t_s: expected a finite time, got {t_s}")
        return self._cursor.at(float(t_s))


TRACE_HEADER = ("time_s", "device", "x", "y")


class TraceSample(NamedTuple):
    time_s: float
    device: str
    x: float
    y: float


def parse_trace(text: str, source: str, devices: Collection[str] | None = None) -> tuple[TraceSample, ...]:
    """Check a mobility trace, CSV ``time_s,device,x,y``; errors name ``source``, the line and the field.

    Times are seconds since the run began (>= 0) and go forward per device. ``devices``: the names
    a row may use (None: any), so a typo in a name fails instead of leaving that device still.
    The caller reads the file (bounded, regular files only); this sees only its text.
    """
    known = None if devices is None else set(devices)
    samples: list[TraceSample] = []
    last: dict[str, float] = {}
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None or tuple(h.strip() for h in header) != TRACE_HEADER:
            shown = header if header is None else ",".join(header)[:80]
            raise MobilityInputError(f"{source}:1: expected the header 'time_s,device,x,y', got {shown!r}")
        for row in reader:
            if not row or all(not c.strip() for c in row):
                continue
            samples.append(_sample(f"{source}:{reader.line_num}", row, known, last))
    except csv.Error as exc:
        raise MobilityInputError(f"{source}:{reader.line_num}: expected CSV text ({exc})") from None
    if not samples:
        raise MobilityInputError(f"{source}: no samples (expected rows time_s,device,x,y after the header)")
    return tuple(samples)


def _sample(where: str, row: list[str], known: set[str] | None, last: dict[str, float]) -> TraceSample:
    if len(row) != 4:
        raise MobilityInputError(f"{where}: expected 4 fields time_s,device,x,y, got {len(row)}")
    try:
        t, x, y = float(row[0]), float(row[2]), float(row[3])
    except ValueError as exc:
        raise MobilityInputError(f"{where}: expected numbers for time_s, x, y ({str(exc)[:80]})") from None
    if not all(math.isfinite(v) for v in (t, x, y)):
        raise MobilityInputError(f"{where}: expected finite numbers")
    if t < 0:
        raise MobilityInputError(f"{where}: time_s: expected a time >= 0 (seconds since the run began), got {t:g}")
    device = row[1].strip()
    if not device:
        raise MobilityInputError(f"{where}: device: expected a name")
    if known is not None and device not in known:
        some = ", ".join(sorted(known)[:5]) + (", ..." if len(known) > 5 else "")
        raise MobilityInputError(f"{where}: device: expected a device of the scenario ({some}), got {device[:40]!r}")
    if t < last.get(device, 0.0):
        raise MobilityInputError(f"{where}: time_s {t} goes back for device {device!r}")
    last[device] = t
    return TraceSample(t, device, x, y)


class TraceMobility:
    """Positions from checked trace samples (:func:`parse_trace`), linearly interpolated per device."""

    def __init__(self, paths: Mapping[str, _Path]):
        self._paths = dict(paths)
        self.ids = list(self._paths)
        self._cursor = _Cursor([self._paths[d] for d in self.ids])

    @classmethod
    def from_samples(cls, samples: Iterable[TraceSample]) -> TraceMobility:
        knots: dict[str, tuple[list[float], list[Point]]] = {}
        for t, device, x, y in samples:
            times, points = knots.setdefault(device, ([], []))
            times.append(t)
            points.append((x, y))
        return cls({d: _Path(ts, ps) for d, (ts, ps) in knots.items()})

    @classmethod
    def from_text(cls, text: str, source: str, devices: Collection[str] | None = None) -> TraceMobility:
        return cls.from_samples(parse_trace(text, source, devices))

    def positions(self, t_s: float) -> dict[str, Point]:
        return as_dict(self.ids, self.positions_array(t_s))

    def positions_array(self, t_s: float) -> np.ndarray:
        """[N, 2] positions in the order of ``ids``."""
        if not math.isfinite(t_s):
            raise ValueError(f"t_s: expected a finite time, got {t_s}")
        return self._cursor.at(float(t_s))
