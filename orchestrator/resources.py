"""Time-varying resources: each device's speed and link, and each edge's speed and uplink, at time t.

This is simulation, and says so. ``t`` is the run's virtual time (seconds since the run began);
every resource is piecewise constant in t and built from up to three sources:

1. The scenario's base values: a device's ``flops_per_s`` and ``bandwidth_mbps`` (its device-edge
   link), an edge's ``flops_per_s`` and ``cloud_bandwidth_mbps`` (its edge-cloud link).
2. A trace file, CSV with the header ``time_s,entity,flops_per_s,bandwidth_bps``. A row sets the
   entity's value from its time until that entity's next row; an empty cell leaves that value as
   it was; before its first row an entity has its base value. ``entity`` is a device or an edge;
   for an edge, ``bandwidth_bps`` is its edge-cloud link. Rows of one entity go forward in time.
3. Random processes on a grid of ``dt_s`` seconds (step k is ``[k dt_s, (k+1) dt_s)``), each a
   multiplier on a device's trace-or-base value (edges vary by trace only):

   - ``availability`` scales the device's FLOP/s by its state's ``multiplier``. The state is a
     discrete-time Markov chain: in state i it leaves with probability ``dt_s / mean_s[i]`` per
     step, to one of the other states chosen uniformly, so a stay lasts ``dt_s`` times a
     geometric number of steps with mean exactly ``mean_s[i]`` (the loader requires
     ``mean_s >= dt_s``), and the long-run share of time in state i is ``mean_s[i] / sum(mean_s)``.
     Step 0's state is drawn from that share (the chain starts stationary).
   - ``bandwidth_walk`` scales the device's link by ``m_k``: ``m_0 = 1`` (clipped into
     ``[min, max]``), ``log m_k = clip(log m_{k-1} + sigma * sqrt(dt_s) * z_k, log min, log max)``
     with ``z_k`` standard normal: a geometric random walk, ``sigma`` per square-root second.

Draw order, so a test can recompute any value by hand: device number ``i`` (its index in the
scenario's device list, after ``count:`` expansion) has the streams
``numpy.random.default_rng([seed, 1, i])`` for availability (first the start state by
``rng.choice(n, p=mean_s / sum(mean_s))``, then per stay ``rng.geometric(dt_s / mean_s[state])``
steps and the next state ``others[rng.integers(n - 1)]``) and ``default_rng([seed, 2, i])`` for the
walk (``z_1, z_2, ...`` in order, drawn in blocks). ``seed`` is ``training.seed``. Processes are
extended lazily and cached, so a value is a pure function of (scenario, t): queries in any order,
a resumed run and a fresh :class:`ResourceModel` all see the same values; nothing needs saving.

Transfers: :meth:`ResourceModel.transfer_time_s` integrates the piecewise-constant bandwidth from
``t0`` exactly: within one segment ``8 * bytes_ / bandwidth_bps``; across changes, each segment
carries ``bandwidth * length`` bits until the bytes are through. Latency, contention between
devices on a link, and protocol overhead are not simulated.
"""

from __future__ import annotations

import bisect
import csv
import io
import math
import sys
from array import array
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from tierflow.orchestrator.errors import TierflowError
from tierflow.orchestrator.files import read_text

TRACE_HEADER = ["time_s", "entity", "flops_per_s", "bandwidth_bps"]


@dataclass(frozen=True)
class TraceRow:
    time_s: float
    entity: str
    flops_per_s: float | None  # None: unchanged
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


class Resources(Protocol):
    """What the clock and the planner ask; :class:`ResourceModel` is the implementation."""

    def device_flops_per_s(self, device: str, t: float) -> float: ...
    def device_bandwidth_bps(self, device: str, t: float) -> float: ...
    def edge_flops_per_s(self, edge: str, t: float) -> float: ...
    def edge_cloud_bandwidth_bps(self, edge: str, t: float) -> float: ...
    def transfer_time_s(self, entity: str, t0: float, bytes_: float) -> float: ...


# ----- the trace file -----

def read_trace(path: str | Path, entities: Sequence[str], ambiguous: Collection[str] = ()) -> tuple[TraceRow, ...]:
    """Read and check a resource trace; errors name the file and line and what was expected.

    ``entities``: the names a row may use; ``ambiguous``: names that are both a device and an edge
    (a row naming one could mean either, so it is refused).
    """
    path = Path(path)
    known = set(entities)
    rows: list[TraceRow] = []
    last: dict[str, float] = {}
    reader = csv.reader(io.StringIO(read_text(path, "resource trace"), newline=""))
    try:
        header = next(reader, None)
        if header is None or [h.strip() for h in header] != TRACE_HEADER:
            shown = header if header is None else ",".join(header)[:80]
            raise TierflowError(f"{path}:1: expected the header '{','.join(TRACE_HEADER)}', got {shown!r}")
        for row in reader:
            if not row or all(not c.strip() for c in row):
                continue
            rows.append(_trace_row(path, reader.line_num, row, known, set(ambiguous), last))
    except csv.Error as exc:
        raise TierflowError(f"{path}:{reader.line_num}: expected CSV text ({exc})") from None
    if not rows:
        raise TierflowError(f"{path}: expected at least one row after the header")
    return tuple(rows)


def _trace_row(path: Path, line_no: int, row: list[str], known: set[str], ambiguous: set[str],
               last: dict[str, float]) -> TraceRow:
    where = f"{path}:{line_no}"
    if len(row) != 4:
        raise TierflowError(f"{where}: expected 4 fields {','.join(TRACE_HEADER)}, got {len(row)}")
    entity = row[1].strip()
    if entity not in known:
        some = ", ".join(sorted(known)[:5]) + (", ..." if len(known) > 5 else "")
        raise TierflowError(f"{where}: entity: expected a device or edge of the scenario ({some}), "
                            f"got {entity[:40]!r}")
    if entity in ambiguous:
        raise TierflowError(f"{where}: entity: {entity!r} names both a device and an edge; expected a name "
                            f"that is only one of them (rename one in the scenario)")
    values: list[float | None] = []
    for i, name in ((0, "time_s"), (2, "flops_per_s"), (3, "bandwidth_bps")):
        cell = row[i].strip()
        if not cell and i > 0:
            values.append(None)
            continue
        try:
            v = float(cell)
        except ValueError:
            raise TierflowError(f"{where}: {name}: expected a number, got {cell[:40]!r}") from None
        if not math.isfinite(v) or (v < 0 if i == 0 else v <= 0):
            expected = "a time >= 0" if i == 0 else "a positive number"
            raise TierflowError(f"{where}: {name}: expected {expected}, got {cell[:40]!r}")
        values.append(v)
    t = float(values[0])
    if t < last.get(entity, 0.0):
        raise TierflowError(f"{where}: time_s: expected times in order for {entity!r}, got {t:g} after "
                            f"{last[entity]:g}")
    last[entity] = t
    return TraceRow(t, entity, values[1], values[2])


# ----- piecewise-constant pieces -----

class _Series:
    """A traced value: ``values[i]`` holds from ``times[i]`` on; ``base`` before the first time."""

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


class _Grid:
    """Step k is ``[k*dt, (k+1)*dt)`` with the products as computed in floating point, so a
    boundary returned by :meth:`next_change` belongs to the step it starts (``floor(t / dt)``
    alone puts some boundaries one step early: ``3 * 0.7 / 0.7 < 3``)."""

    def __init__(self, dt_s: float):
        self.dt_s = dt_s

    def step(self, t: float) -> int:
        assert math.isfinite(t), t
        if t <= 0:
            return 0
        k = math.floor(t / self.dt_s)
        if (k + 1) * self.dt_s <= t:
            k += 1
        elif k * self.dt_s > t:
            k -= 1
        return k

    def next_change(self, t: float) -> float:
        return (self.step(t) + 1) * self.dt_s


class _Availability(_Grid):
    """The availability chain of one device, kept as stays (first step, state): memory grows with
    the number of state changes, not of steps."""

    def __init__(self, spec: AvailabilitySpec, rng: np.random.Generator):
        super().__init__(spec.dt_s)
        self.multipliers = [s.multiplier for s in spec.states]
        means = np.array([s.mean_s for s in spec.states])
        self.leave = [min(1.0, spec.dt_s / m) for m in means]
        self.rng = rng
        self.starts = [0]
        self.states = [int(rng.choice(len(means), p=means / means.sum()))]
        self.end = int(rng.geometric(self.leave[self.states[0]]))  # first step after the last stay

    def state(self, k: int) -> int:
        n = len(self.multipliers)
        while self.end <= k:
            i = self.states[-1]
            j = int(self.rng.integers(n - 1))
            i = j + (j >= i)  # uniform among the other states
            self.starts.append(self.end)
            self.states.append(i)
            self.end += int(self.rng.geometric(self.leave[i]))
        return self.states[bisect.bisect_right(self.starts, k) - 1]

    def at(self, t: float) -> float:
        return self.multipliers[self.state(self.step(t))]


class _Walk(_Grid):
    """The bandwidth multiplier of one device, one value per step (8 bytes each)."""

    BLOCK = 256

    def __init__(self, spec: BandwidthWalkSpec, rng: np.random.Generator):
        super().__init__(spec.dt_s)
        self.lo, self.hi = math.log(spec.min_multiplier), math.log(spec.max_multiplier)
        self.scale = spec.sigma * math.sqrt(spec.dt_s)
        self.rng = rng
        self.log_m = array("d", [min(self.hi, max(self.lo, 0.0))])

    def at(self, t: float) -> float:
        k = self.step(t)
        while len(self.log_m) <= k:
            x, lo, hi, scale = self.log_m[-1], self.lo, self.hi, self.scale
            out = []
            for z in self.rng.standard_normal(self.BLOCK).tolist():
                x = min(hi, max(lo, x + scale * z))
                out.append(x)
            self.log_m.extend(out)
        return math.exp(self.log_m[k])


# ----- the model -----

class ResourceModel:
    """What each entity can do at virtual time t. With no ``resources:`` section every query is a
    dictionary lookup of the base value; nothing is drawn or stored per step."""

    def __init__(self, scenario):
        spec: ResourcesSpec = scenario.resources
        cloud_edge = scenario.cloud_as_edge()
        self._devices = {d.name for d in scenario.devices}
        self._edges = {e.name for e in scenario.edges}
        self._base = {
            "device_flops": {d.name: d.flops_per_s for d in scenario.devices},
            "device_bw": {d.name: d.bandwidth_mbps * 1e6 for d in scenario.devices},
            "edge_flops": {e.name: e.flops_per_s for e in (*scenario.edges, cloud_edge)},
            "edge_bw": {e.name: e.cloud_bandwidth_mbps * 1e6 for e in (*scenario.edges, cloud_edge)},
        }
        self._traced: dict[str, dict[str, _Series]] = {kind: {} for kind in self._base}
        for row in spec.trace:
            kind = "device" if row.entity in self._devices else "edge"
            for value, what in ((row.flops_per_s, "flops"), (row.bandwidth_bps, "bw")):
                if value is not None:
                    series = self._traced[f"{kind}_{what}"]
                    if row.entity not in series:
                        series[row.entity] = _Series(self._base[f"{kind}_{what}"][row.entity])
                    series[row.entity].set(row.time_s, value)
        seed = scenario.training.seed
        index = {d.name: i for i, d in enumerate(scenario.devices)}
        self._avail: dict[str, _Availability] = {}
        self._walk: dict[str, _Walk] = {}
        if spec.availability is not None:
            for d in spec.availability.devices or index:
                self._avail[d] = _Availability(spec.availability, np.random.default_rng([seed, 1, index[d]]))
        if spec.bandwidth_walk is not None:
            for d in spec.bandwidth_walk.devices or index:
                self._walk[d] = _Walk(spec.bandwidth_walk, np.random.default_rng([seed, 2, index[d]]))

    def _value(self, kind: str, name: str, t: float) -> float:
        series = self._traced[kind].get(name)
        return series.at(t) if series is not None else self._base[kind][name]

    def device_flops_per_s(self, device: str, t: float) -> float:
        p = self._avail.get(device)
        value = self._value("device_flops", device, t)
        return _scaled(value, p.at(t)) if p is not None else value

    def device_bandwidth_bps(self, device: str, t: float) -> float:
        """The device-edge link."""
        p = self._walk.get(device)
        value = self._value("device_bw", device, t)
        return _scaled(value, p.at(t)) if p is not None else value

    def edge_flops_per_s(self, edge: str, t: float) -> float:
        return self._value("edge_flops", edge, t)

    def edge_cloud_bandwidth_bps(self, edge: str, t: float) -> float:
        return self._value("edge_bw", edge, t)

    def transfer_time_s(self, entity: str, t0: float, bytes_: float) -> float:
        """Seconds to move ``bytes_`` starting at ``t0`` over a device's link (``entity`` a device)
        or an edge's uplink to the cloud (``entity`` an edge)."""
        is_device, is_edge = entity in self._devices, entity in self._base["edge_bw"]
        assert is_device != is_edge, f"{entity!r}: use device_transfer_time_s or edge_cloud_transfer_time_s"
        if is_device:
            return self.device_transfer_time_s(entity, t0, bytes_)
        return self.edge_cloud_transfer_time_s(entity, t0, bytes_)

    def device_transfer_time_s(self, device: str, t0: float, bytes_: float) -> float:
        changes = [p for p in (self._traced["device_bw"].get(device), self._walk.get(device)) if p is not None]
        return _integrate(lambda t: self.device_bandwidth_bps(device, t), changes, t0, bytes_)

    def edge_cloud_transfer_time_s(self, edge: str, t0: float, bytes_: float) -> float:
        changes = [p for p in (self._traced["edge_bw"].get(edge),) if p is not None]
        return _integrate(lambda t: self.edge_cloud_bandwidth_bps(edge, t), changes, t0, bytes_)


def _scaled(value: float, multiplier: float) -> float:
    """The product, kept positive and finite (the clock divides by it) even where two extreme but
    valid inputs would under- or overflow."""
    return min(max(value * multiplier, sys.float_info.min), sys.float_info.max)


def _integrate(bandwidth_bps, changes: list, t0: float, bytes_: float) -> float:
    """Time for ``8 * bytes_`` bits at a piecewise-constant rate whose changes ``changes`` know."""
    assert math.isfinite(t0) and bytes_ >= 0, (t0, bytes_)
    bits, t, elapsed = 8.0 * bytes_, t0, 0.0
    while True:
        bw = bandwidth_bps(t)
        nxt = min((p.next_change(t) for p in changes), default=math.inf)
        assert nxt > t, (nxt, t)
        if bits <= bw * (nxt - t):
            return elapsed + bits / bw  # the last (or only) segment: exactly bits / bandwidth
        bits -= bw * (nxt - t)
        elapsed += nxt - t
        t = nxt


def build_resources(scenario) -> ResourceModel:
    """The resource model of a scenario: a pure function of it (its seed included)."""
    return ResourceModel(scenario)
