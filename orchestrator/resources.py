"""Time-varying resources: each device's speed and link, and each edge's speed and uplink, at time t.

This is simulation, and says so: t is the run's virtual time (seconds since the run began). A
resource is piecewise constant in t, from up to three sources, combined:

- the scenario's base values (``flops_per_s``, ``bandwidth_mbps``, ``cloud_bandwidth_mbps``);
- a trace file, CSV ``time_s,entity,flops_per_s,bandwidth_bps``: a row sets an entity's value from
  its time until the entity's next row (an empty cell leaves that value as it was; before its first
  row an entity has its base value). For an edge, ``bandwidth_bps`` is its edge-cloud link;
- random processes on a grid of ``dt_s`` seconds, multiplying a device's value:
  ``availability``, a Markov chain over states (e.g. idle 1.0, busy 0.25) whose dwell times are
  geometric with the given means (a discretised continuous-time chain), starting from its
  stationary distribution; and ``bandwidth_walk``, a geometric random walk of the link's multiplier
  (``sigma`` per square-root second) clipped to ``[min, max]``.

Every process draws from its own stream ``default_rng([seed, kind, device index])`` and is
extended lazily in step order, so a value is a pure function of (scenario, t): queries in any
order, a resumed run, and a test recomputing by hand all see the same values.
:meth:`ResourceModel.transfer_time_s` integrates a piecewise-constant bandwidth exactly.
"""

from __future__ import annotations

import bisect
import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from orchestrator.errors import TierflowError

TRACE_HEADER = ["time_s", "entity", "flops_per_s", "bandwidth_bps"]


@dataclass(frozen=True)
class TraceRow:
    time_s: float
    entity: str
    flops_per_s: float | None
    bandwidth_bps: float | None


@dataclass(frozen=True)
class AvailabilityState:
    name: str
    multiplier: float
    mean_s: float


@dataclass(frozen=True)
class AvailabilitySpec:
    states: tuple[AvailabilityState, ...]
    dt_s: float = 10.0
    devices: tuple[str, ...] | None = None  # None: every device


@dataclass(frozen=True)
class BandwidthWalkSpec:
    sigma: float  # log-multiplier standard deviation per sqrt(second)
    dt_s: float = 10.0
    min_multiplier: float = 0.1
    max_multiplier: float = 2.0
    devices: tuple[str, ...] | None = None


@dataclass(frozen=True)
class ResourcesSpec:
    trace: tuple[TraceRow, ...] = ()
    trace_path: str | None = None
    availability: AvailabilitySpec | None = None
    bandwidth_walk: BandwidthWalkSpec | None = None

    @property
    def empty(self) -> bool:
        return not self.trace and self.availability is None and self.bandwidth_walk is None


def read_trace(path: str | Path, entities: Sequence[str]) -> tuple[TraceRow, ...]:
    """Read and check a resource trace; errors name the file and line and what was expected."""
    path = Path(path)
    known = set(entities)
    rows: list[TraceRow] = []
    last: dict[str, float] = {}
    try:
        fh = open(path, newline="")
    except OSError as exc:
        raise TierflowError(f"{path}: cannot read the resource trace ({exc.strerror})") from exc
    with fh:
        reader = csv.reader(fh)
        try:
            header = next(reader, None)
            if header is None or [h.strip() for h in header] != TRACE_HEADER:
                raise TierflowError(f"{path}:1: expected the header '{','.join(TRACE_HEADER)}', got {header}")
            for line_no, row in enumerate(reader, start=2):
                if not row or all(not c.strip() for c in row):
                    continue
                rows.append(_trace_row(path, line_no, row, known, last))
        except (csv.Error, UnicodeDecodeError) as exc:
            raise TierflowError(f"{path}: not a readable CSV file ({exc})") from exc
    if not rows:
        raise TierflowError(f"{path}: expected at least one row after the header")
    return tuple(rows)


def _trace_row(path: Path, line_no: int, row: list[str], known: set[str], last: dict[str, float]) -> TraceRow:
    where = f"{path}:{line_no}"
    if len(row) != 4:
        raise TierflowError(f"{where}: expected 4 fields {','.join(TRACE_HEADER)}, got {len(row)}")
    entity = row[1].strip()
    if entity not in known:
        some = ", ".join(sorted(known)[:5])
        raise TierflowError(f"{where}: entity: expected a device or edge of the scenario (e.g. {some}), "
                            f"got {entity!r}")
    values: list[float | None] = []
    for i, name in ((0, "time_s"), (2, "flops_per_s"), (3, "bandwidth_bps")):
        cell = row[i].strip()
        if not cell and i > 0:
            values.append(None)
            continue
        try:
            v = float(cell)
        except ValueError:
            raise TierflowError(f"{where}: {name}: expected a number, got {cell!r}") from None
        if not math.isfinite(v) or (v < 0 if i == 0 else v <= 0):
            expected = "a time >= 0" if i == 0 else "a positive number"
            raise TierflowError(f"{where}: {name}: expected {expected}, got {cell!r}")
        values.append(v)
    t = float(values[0])
    if t < last.get(entity, 0.0):
        raise TierflowError(f"{where}: time_s: expected times in order for {entity!r}, got {t:g} after "
                            f"{last[entity]:g}")
    last[entity] = t
    return TraceRow(t, entity, values[1], values[2])


class _Series:
    """A piecewise-constant value: ``values[i]`` holds from ``times[i]`` on; ``base`` before."""

    def __init__(self, base: float):
        self.base = base
        self.times: list[float] = []
        self.values: list[float] = []

    def set(self, t: float, value: float) -> None:
        if self.times and self.times[-1] == t:
            self.values[-1] = value
        else:
            self.times.append(t)
            self.values.append(value)

    def at(self, t: float) -> float:
        i = bisect.bisect_right(self.times, t) - 1
        return self.base if i < 0 else self.values[i]

    def next_change(self, t: float) -> float:
        i = bisect.bisect_right(self.times, t)
        return self.times[i] if i < len(self.times) else math.inf


class _GridProcess:
    """A multiplier constant on [k dt, (k+1) dt), drawn step by step from its own stream."""

    def __init__(self, dt_s: float, rng: np.random.Generator, first: float, step, view=float):
        self.dt_s, self.rng, self.step, self.view = dt_s, rng, step, view
        self.values = [first]

    def at(self, t: float) -> float:
        k = max(0, int(math.floor(t / self.dt_s)))
        while len(self.values) <= k:
            self.values.append(self.step(self.values[-1], self.rng))
        return self.view(self.values[k])

    def next_change(self, t: float) -> float:
        return (math.floor(t / self.dt_s) + 1) * self.dt_s


def _availability(spec: AvailabilitySpec, rng: np.random.Generator) -> _GridProcess:
    multipliers = [s.multiplier for s in spec.states]
    means = np.array([s.mean_s for s in spec.states])
    leave = 1.0 - np.exp(-spec.dt_s / means)  # per step: geometric dwell with the given mean
    start = int(rng.choice(len(means), p=means / means.sum()))  # the chain's stationary distribution

    def step(state: float, rng: np.random.Generator) -> float:
        i = int(state)
        if rng.random() < leave[i]:
            others = [j for j in range(len(means)) if j != i]
            i = others[int(rng.integers(len(others)))]
        return float(i)

    # The chain's values are state indices; callers see the state's multiplier.
    return _GridProcess(spec.dt_s, rng, float(start), step, view=lambda i: multipliers[int(i)])


def _walk(spec: BandwidthWalkSpec, rng: np.random.Generator) -> _GridProcess:
    lo, hi = math.log(spec.min_multiplier), math.log(spec.max_multiplier)
    scale = spec.sigma * math.sqrt(spec.dt_s)

    def step(m: float, rng: np.random.Generator) -> float:
        return math.exp(min(hi, max(lo, math.log(m) + scale * float(rng.standard_normal()))))

    return _GridProcess(spec.dt_s, rng, min(max(1.0, spec.min_multiplier), spec.max_multiplier), step)


class ResourceModel:
    """What each entity can do at virtual time t; with no ``resources:`` section, the base values."""

    def __init__(self, scenario):
        from orchestrator.scenario import CLOUD_EDGE

        spec: ResourcesSpec = scenario.resources
        self._cloud_edge = scenario.edge(CLOUD_EDGE)
        self._series: dict[tuple[str, str], _Series] = {}
        for d in scenario.devices:
            self._series[(d.name, "flops")] = _Series(d.flops_per_s)
            self._series[(d.name, "bw")] = _Series(d.bandwidth_mbps * 1e6)
        for e in scenario.edges:
            self._series[(e.name, "flops")] = _Series(e.flops_per_s)
            self._series[(e.name, "bw")] = _Series(e.cloud_bandwidth_mbps * 1e6)
        for row in spec.trace:
            if row.flops_per_s is not None:
                self._series[(row.entity, "flops")].set(row.time_s, row.flops_per_s)
            if row.bandwidth_bps is not None:
                self._series[(row.entity, "bw")].set(row.time_s, row.bandwidth_bps)
        seed = scenario.training.seed
        index = {d.name: i for i, d in enumerate(scenario.devices)}
        self._avail: dict[str, _GridProcess] = {}
        self._walk: dict[str, _GridProcess] = {}
        if spec.availability is not None:
            for d in spec.availability.devices or index:
                self._avail[d] = _availability(spec.availability, np.random.default_rng([seed, 1, index[d]]))
        if spec.bandwidth_walk is not None:
            for d in spec.bandwidth_walk.devices or index:
                self._walk[d] = _walk(spec.bandwidth_walk, np.random.default_rng([seed, 2, index[d]]))

    def device_flops_per_s(self, device: str, t: float) -> float:
        p = self._avail.get(device)
        return self._series[(device, "flops")].at(t) * (p.at(t) if p else 1.0)

    def device_bandwidth_bps(self, device: str, t: float) -> float:
        p = self._walk.get(device)
        return self._series[(device, "bw")].at(t) * (p.at(t) if p else 1.0)

    def edge_flops_per_s(self, edge: str, t: float) -> float:
        if edge == self._cloud_edge.name:
            return self._cloud_edge.flops_per_s
        return self._series[(edge, "flops")].at(t)

    def edge_cloud_bandwidth_bps(self, edge: str, t: float) -> float:
        if edge == self._cloud_edge.name:
            return self._cloud_edge.cloud_bandwidth_mbps * 1e6
        return self._series[(edge, "bw")].at(t)

    def transfer_time_s(self, device: str, t0: float, bytes_: float) -> float:
        """Seconds to move ``bytes_`` over the device's link starting at t0, as bandwidth changes."""
        bits, t = 8.0 * bytes_, t0
        while bits > 0:
            bw = self.device_bandwidth_bps(device, t)
            nxt = self._series[(device, "bw")].next_change(t)
            if device in self._walk:
                nxt = min(nxt, self._walk[device].next_change(t))
            if bits <= bw * (nxt - t):
                return t + bits / bw - t0
            bits -= bw * (nxt - t)
            t = nxt
        return t - t0
