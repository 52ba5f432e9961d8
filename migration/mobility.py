"""Mobility models: where each device is at time t (metres, seconds).

Every model is a pure function of t, so a run, its replay and a test computing positions by hand
agree exactly.
"""

from __future__ import annotations

import bisect
import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from tierflow.migration.errors import MobilityInputError

Point = tuple[float, float]


class StaticMobility:
    def __init__(self, positions: Mapping[str, Point]):
        self._positions = {d: (float(p[0]), float(p[1])) for d, p in positions.items()}

    def positions(self, t_s: float) -> dict[str, Point]:
        return dict(self._positions)


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
        if not math.isfinite(t_s):
            raise ValueError(f"t_s: expected a finite time, got {t_s}")
        out = {}
        for d in self._paths:
            self._extend(d, t_s)
            out[d] = self._paths[d].at(t_s)
        return out


class TraceMobility:
    """Positions from a CSV ``time_s,device,x,y``, linearly interpolated per device."""

    def __init__(self, paths: Mapping[str, _Path]):
        self._paths = dict(paths)

    @classmethod
    def from_csv(cls, path: str | Path) -> TraceMobility:
        path = Path(path)
        knots: dict[str, tuple[list[float], list[Point]]] = {}
        with open(path, newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None or [h.strip() for h in header] != ["time_s", "device", "x", "y"]:
                raise MobilityInputError(f"{path}:1: expected the header 'time_s,device,x,y', got {header}")
            for line_no, row in enumerate(reader, start=2):
                if not row or all(not c.strip() for c in row):
                    continue
                if len(row) != 4:
                    raise MobilityInputError(f"{path}:{line_no}: expected 4 fields time_s,device,x,y, got {len(row)}")
                try:
                    t, x, y = float(row[0]), float(row[2]), float(row[3])
                except ValueError as exc:
                    raise MobilityInputError(f"{path}:{line_no}: expected numbers for time_s, x, y ({exc})") from exc
                if not all(math.isfinite(v) for v in (t, x, y)):
                    raise MobilityInputError(f"{path}:{line_no}: expected finite numbers")
                device = row[1].strip()
                if not device:
                    raise MobilityInputError(f"{path}:{line_no}: device: expected a name")
                times, points = knots.setdefault(device, ([], []))
                if times and t < times[-1]:
                    raise MobilityInputError(f"{path}:{line_no}: time_s {t} goes back for device {device!r}")
                times.append(t)
                points.append((x, y))
        if not knots:
            raise MobilityInputError(f"{path}: no samples")
        return cls({d: _Path(ts, ps) for d, (ts, ps) in knots.items()})

    def positions(self, t_s: float) -> dict[str, Point]:
        return {d: p.at(t_s) for d, p in self._paths.items()}
