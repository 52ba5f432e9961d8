"""Several devices sharing one edge server: minimise the batch makespan.

Model of sharing. Every device i runs one batch; its placement x_i gives a dedicated-edge batch
time T_i(x_i) (the cost model with the edge at its full speed S) and an edge work E_i(x_i)
(FLOPs it puts on the edge). The edge time-shares its S FLOP/s among the devices, so

    makespan(x) = max( max_i T_i(x_i),  Σ_i E_i(x_i) / S )

The first term is each device's own critical path (sharing never makes the edge faster than
dedicated); the second is the edge's capacity (it cannot finish more than S·t FLOPs in t
seconds). The cloud is not shared (it is modelled as elastic). A round is ``steps_per_round``
such batches, so the same plan minimises the round's makespan.

Algorithm. A target T* is met iff every device can meet it and the least edge work that does so,
summed, fits: Σ_i min{E_i : T_i <= T*} <= S·T*. Only each device's Pareto options (time, edge
work) matter, and the optimal T* is one of their times, so one sweep over the sorted option
times is exact given complete Pareto sets. Options come from an exact enumeration (chains: the
split points; small DAGs: all monotone assignments) or, for large DAGs, from min cuts with a
Lagrange weight λ on edge work (T_i + λ·E_i/S, all breakpoints in λ by parametric search): those
are the supported Pareto points only, so that path is a heuristic, measured against brute force
in the tests.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import networkx as nx
import numpy as np

from tierflow.placement.cost import CostGraph, Profile, cost_graph, features, time_from_features
from tierflow.placement.errors import InfeasiblePlacementError
from tierflow.placement.partition import _monotone_assignments, min_cut


@dataclass(frozen=True)
class SharedDevice:
    """One device behind the shared edge; ``profile.speeds.edge_flops_per_s`` is the edge's full speed."""

    name: str
    graph: nx.DiGraph
    profile: Profile


@dataclass(frozen=True)
class Option:
    x: tuple[int, ...]
    batch_time_s: float  # with the edge dedicated to this device
    edge_flops: float


@dataclass(frozen=True)
class SharedPlan:
    assignments: dict[str, dict[str, int]]
    makespan_s: float
    device_times_s: dict[str, float]
    edge_busy_s: float
    exact: bool


def _option(cg: CostGraph, profile: Profile, x: tuple[int, ...]) -> Option:
    f = features(cg, x)
    return Option(x, time_from_features(f, profile.speeds), f[1])


def pareto(options: Sequence[Option]) -> list[Option]:
    """Options not dominated in (time, edge work), by increasing time and decreasing work."""
    out: list[Option] = []
    for o in sorted(options, key=lambda o: (o.batch_time_s, o.edge_flops)):
        if not out or o.edge_flops < out[-1].edge_flops:
            out.append(o)
    return out


def _feasible(cg: CostGraph, x: tuple[int, ...]) -> bool:
    return sum(m for m, xi in zip(cg.memory_bytes, x, strict=True) if xi == 0) <= cg.memory_limit_bytes


def exact_options(cg: CostGraph, profile: Profile) -> list[Option]:
    if cg.is_chain():
        n = len(cg.names)
        xs = (
            tuple(sum(i >= c for c in cuts) for i in range(n))
            for cuts in itertools.combinations_with_replacement(range(n + 1), cg.num_tiers - 1)
        )
        xs = (x for x in xs if all(cg.lo[i] <= x[i] <= cg.hi[i] for i in range(n)))
    else:
        xs = _monotone_assignments(cg, cg.lo, cg.hi)
    return pareto([_option(cg, profile, x) for x in xs if _feasible(cg, x)])


def lagrangian_options(cg: CostGraph, profile: Profile) -> list[Option]:
    """Supported Pareto points: min cuts of T + λ·E/S over all breakpoints λ (Eisner–Severance)."""
    speed = profile.speeds.edge_flops_per_s

    def solve(lam: float) -> Option:
        return _option(cg, profile, min_cut(cg, profile.speeds, extra_edge_weight=lam / speed).x)

    found = {}
    lo, hi = solve(0.0), solve(1e9)
    found[lo.x] = lo
    found[hi.x] = hi
    stack = [(lo, hi)]
    while stack:
        a, b = stack.pop()
        if a.edge_flops <= b.edge_flops or a.x == b.x:
            continue
        lam = (b.batch_time_s - a.batch_time_s) * speed / (a.edge_flops - b.edge_flops)
        m = solve(lam)
        line = a.batch_time_s + lam * a.edge_flops / speed
        if m.x not in found and m.batch_time_s + lam * m.edge_flops / speed < line * (1 - 1e-9):
            found[m.x] = m
            stack += [(a, m), (m, b)]
    return pareto([o for o in found.values() if _feasible(cg, o.x)])


def best_makespan(options: Sequence[Sequence[Option]], edge_flops_per_s: float) -> tuple[list[int], float]:
    """Exact minimum of max(max T_i, Σ E_i / S) over one option per device (indices, makespan)."""
    fronts = [pareto(o) for o in options]
    if any(not f for f in fronts):
        raise InfeasiblePlacementError("a device has no feasible placement")
    floor = max(f[0].batch_time_s for f in fronts)
    targets = sorted({o.batch_time_s for f in fronts for o in f if o.batch_time_s >= floor})
    best, best_pick = math.inf, None
    for t in targets:
        pick = []
        for f in fronts:  # least edge work meeting the target: the last option with time <= t
            j = 0
            while j + 1 < len(f) and f[j + 1].batch_time_s <= t:
                j += 1
            pick.append(j)
        chosen = [f[j] for f, j in zip(fronts, pick, strict=True)]
        span = max(max(o.batch_time_s for o in chosen), sum(o.edge_flops for o in chosen) / edge_flops_per_s)
        if span < best:
            best, best_pick = span, pick
    assert best_pick is not None
    # Map front indices back to the callers' option lists.
    idx = [list(opts).index(f[j]) for opts, f, j in zip(options, fronts, best_pick, strict=True)]
    return idx, best


def plan_shared_edge(devices: Sequence[SharedDevice], method: str = "auto", exact_limit: int = 50_000) -> SharedPlan:
    """Placements for all devices behind one edge, minimising the batch makespan.

    ``auto`` enumerates options exactly for chains and DAGs with at most ``exact_limit`` monotone
    assignments, and uses the Lagrangian min cuts beyond; ``exact``/``lagrangian`` force one.
    """
    speeds = {d.profile.speeds.edge_flops_per_s for d in devices}
    assert len(speeds) == 1, "devices sharing an edge must agree on its speed"
    edge_speed = speeds.pop()
    cgs = [cost_graph(d.graph, d.profile) for d in devices]
    options, exact = [], True
    for d, cg in zip(devices, cgs, strict=True):
        use = method
        if method == "auto":
            small = (
                cg.is_chain()
                or sum(1 for _ in itertools.islice(_monotone_assignments(cg, cg.lo, cg.hi), exact_limit + 1))
                <= exact_limit
            )
            use = "exact" if small else "lagrangian"
        if use == "exact":
            options.append(exact_options(cg, d.profile))
        elif use == "lagrangian":
            options.append(lagrangian_options(cg, d.profile))
            exact = False
        else:
            raise ValueError(f"unknown method {method!r}: expected auto, exact or lagrangian")
    idx, span = best_makespan(options, edge_speed)
    chosen = [opts[j] for opts, j in zip(options, idx, strict=True)]
    return SharedPlan(
        assignments={
            d.name: {n: int(t) for n, t in zip(cg.names, o.x, strict=True)}
            for d, cg, o in zip(devices, cgs, chosen, strict=True)
        },
        makespan_s=span,
        device_times_s={d.name: o.batch_time_s for d, o in zip(devices, chosen, strict=True)},
        edge_busy_s=sum(o.edge_flops for o in chosen) / edge_speed,
        exact=exact,
    )


def brute_force_shared(devices: Sequence[SharedDevice]) -> float:
    """The oracle: every combination of every device's monotone assignments (tiny instances)."""
    edge_speed = devices[0].profile.speeds.edge_flops_per_s
    per_device = []
    for d in devices:
        cg = cost_graph(d.graph, d.profile)
        per_device.append(
            [_option(cg, d.profile, x) for x in _monotone_assignments(cg, cg.lo, cg.hi) if _feasible(cg, x)]
        )
    if any(not opts for opts in per_device):
        raise InfeasiblePlacementError("a device has no feasible placement")
    # Broadcast over the product of option lists: axis i indexes device i's option.
    slowest = np.zeros([1] * len(per_device))
    edge_s = np.zeros([1] * len(per_device))
    for i, opts in enumerate(per_device):
        shape = [1] * len(per_device)
        shape[i] = len(opts)
        slowest = np.maximum(slowest, np.array([o.batch_time_s for o in opts]).reshape(shape))
        edge_s = edge_s + np.array([o.edge_flops for o in opts]).reshape(shape) / edge_speed
    return float(np.min(np.maximum(slowest, edge_s)))
