"""Exact tier partition by one minimum s–t cut, with a chain fast path and oracle.

Construction (Ishikawa layers, DADS auxiliaries). For K ordered tiers each node v gets K-1 binary
variables y_k(v) = [x_v >= k], one graph node each; y = 1 means "on the source side". Then

* compute cost c_v(x) = work_v / speed[x] is c_v(0) + Σ_k (c_v(k) - c_v(k-1)) · y_k(v): a unary
  term per layer (an edge to t if positive, from s if negative, plus a constant);
* y_{k+1}(v) <= y_k(v) and monotonicity y_k(u) <= y_k(w) on every edge u→w are infinite edges;
* the transfer over boundary k of u's output is paid once if y_k(u) = 0 and some successor has
  y_k(w) = 1: one auxiliary node z = OR_w y_k(w) (infinite edges y_k(w) → z) and an edge
  z → y_k(u) carrying the cost, so a multi-consumer output is paid once;
* pins lo <= x_v <= hi are infinite edges from s / to t.

Capacities are integers (networkx's preflow-push returned non-minimal cuts on float capacities;
on integers every max-flow algorithm is exact). Each rounded term is off by at most half a unit, so
the returned assignment's exact cost is within ``rounding_bound_s`` = (number of terms) / scale of
the true optimum. Scaling the largest possible total to about 2**44 made that bound relative to
the total, not to the optimum, which can be many orders of magnitude smaller (a huge transfer that
no good plan pays): ties at the optimum's scale then rounded away and the cut was 50% worse than
brute force. So the scale comes from an upper bound on the optimum (the cheapest uniform plan,
about 2**56 / cost, Python integers), and the cut is repeated with the scale set by the exact
cost of the best assignment so far until the bound is at most 1e-12 of that cost. The reported
cost is always the exact float cost of the returned assignment, recomputed by
:mod:`placement.cost`.

Device memory is a knapsack-like side constraint, so it is solved exactly by branch and bound on
top of the cut: the unconstrained cut under the current pins is a lower bound; if its device set
is too big, branch on its heaviest unpinned device node (forced off the device / forced on it).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import networkx as nx
from networkx.algorithms.flow import boykov_kolmogorov

from tierflow.placement.cost import (
    CostGraph,
    Profile,
    TierSpeeds,
    check_assignment,
    cost_graph,
    features,
    memory_of,
    time_from_features,
)
from tierflow.placement.errors import InfeasiblePlacementError

_SCALE_TARGET = float(2**44)
_REFINE_TARGET = float(2**56)
_REL_BOUND = 1e-12
_MAX_REFINE = 6


@dataclass(frozen=True)
class Plan:
    """A placement and its exact float cost (``batch_time_s`` from :mod:`placement.cost`)."""

    assignment: dict[str, int]
    batch_time_s: float
    device_memory_bytes: float
    features: tuple[float, ...]
    method: str
    rounding_bound_s: float = 0.0

    def tiers(self) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        for name, t in self.assignment.items():
            out.setdefault(t, []).append(name)
        return out


@dataclass(frozen=True)
class CutResult:
    x: tuple[int, ...]
    rounding_bound_s: float


def _unit_costs(cg: CostGraph, speeds: TierSpeeds, extra_edge_weight: float = 0.0) -> list[list[float]]:
    """c_v(k) for every node and tier; ``extra_edge_weight`` adds λ · work to edge-tier cost."""
    s = speeds.flops_per_s
    out = []
    for v, w in enumerate(cg.work_flops):
        row = [w / s[k] for k in range(cg.num_tiers)]
        if cg.sync_bits:  # the device-side share of the model sync, on the first link
            row[0] += cg.sync_bits[v] / speeds.bandwidth_bps[0]
        if cg.label_bits and cg.label_bits[v]:  # the labels ride up to this node's tier
            for k in range(1, cg.num_tiers):
                row[k] += sum(cg.label_bits[v] / speeds.bandwidth_bps[j] for j in range(k))
        if extra_edge_weight and cg.num_tiers > 1:
            row[1] += extra_edge_weight * w
        out.append(row)
    return out


def min_cut(
    cg: CostGraph,
    speeds: TierSpeeds,
    lo: Sequence[int] | None = None,
    hi: Sequence[int] | None = None,
    extra_edge_weight: float = 0.0,
    flow_func: Callable = boykov_kolmogorov,
) -> CutResult:
    """Optimal monotone assignment within pins (memory ignored) by s–t minimum cuts.

    The returned assignment costs at most ``rounding_bound_s`` more than the optimum, and that
    bound is at most 1e-12 of its cost (see the module docstring) unless the cost is zero.
    """
    lo = cg.lo if lo is None else lo
    hi = cg.hi if hi is None else hi
    k_tiers = cg.num_tiers
    assert speeds.num_tiers == k_tiers
    n = len(cg.names)
    unit = _unit_costs(cg, speeds, extra_edge_weight)
    bw = speeds.bandwidth_bps
    transfer = [[cg.bits[u] / bw[k - 1] for k in range(1, k_tiers)] for u in range(n)]
    total = sum(max(abs(c) for c in row) for row in unit) + sum(sum(r) for r in transfer)
    n_terms = n * k_tiers + sum(len(cg.succ[u]) > 0 for u in range(n)) * (k_tiers - 1)

    def cost(x: tuple[int, ...]) -> float:
        """The cut's objective at x: the batch time (summed by placement.cost) plus λ · edge work."""
        f = features(cg, x)
        return time_from_features(f, speeds) + (extra_edge_weight * f[1] if k_tiers > 1 else 0.0)

    # Start from the cheapest uniform plan (every node at tier k, clamped to its pins) when one is
    # valid: an upper bound on the optimum that is usually close enough to need no second cut.
    upper = math.inf
    for k in range(k_tiers):
        x = tuple(min(max(k, lo[v]), hi[v]) for v in range(n))
        if all(x[u] <= x[w] for u in range(n) for w in cg.succ[u]):
            upper = min(upper, cost(x))
    if 0 < upper < math.inf:
        scale = _REFINE_TARGET / upper
    else:
        scale = _SCALE_TARGET / total if total > 0 else 1.0
    best = _cut_at_scale(cg, unit, transfer, lo, hi, scale, flow_func)
    best_cost, bound = cost(best), n_terms / scale
    for _ in range(_MAX_REFINE):
        if best_cost <= 0 or bound <= _REL_BOUND * best_cost:
            break
        scale = _REFINE_TARGET / best_cost
        x = _cut_at_scale(cg, unit, transfer, lo, hi, scale, flow_func)
        bound = min(bound, n_terms / scale)  # each cut is within its own bound of the optimum
        x_cost = cost(x)
        if x_cost < best_cost:
            best, best_cost = x, x_cost
    return CutResult(x=best, rounding_bound_s=bound)


def _cut_at_scale(
    cg: CostGraph,
    unit: list[list[float]],
    transfer: list[list[float]],
    lo: Sequence[int],
    hi: Sequence[int],
    scale: float,
    flow_func: Callable,
) -> tuple[int, ...]:
    """One minimum cut with every cost term rounded to an integer at ``scale`` units per second."""
    k_tiers = cg.num_tiers
    n = len(cg.names)
    g = nx.DiGraph()
    g.add_node("s")
    g.add_node("t")
    inf_edges: list[tuple[object, object]] = []
    finite = 0

    def add(a: object, b: object, cap: int) -> None:
        nonlocal finite
        if cap <= 0:
            return
        if g.has_edge(a, b):
            g[a][b]["capacity"] += cap
        else:
            g.add_edge(a, b, capacity=cap)
        finite += cap

    for v in range(n):
        ints = [round(c * scale) for c in unit[v]]
        for k in range(1, k_tiers):
            node = (v, k)
            g.add_node(node)
            alpha = ints[k] - ints[k - 1]
            if alpha > 0:
                add(node, "t", alpha)
            elif alpha < 0:
                add("s", node, -alpha)
            if k + 1 < k_tiers:
                inf_edges.append(((v, k + 1), node))
            if k <= lo[v]:
                inf_edges.append(("s", node))
            if k > hi[v]:
                inf_edges.append((node, "t"))
        for w in cg.succ[v]:
            for k in range(1, k_tiers):
                inf_edges.append(((v, k), (w, k)))
        if cg.succ[v]:
            for k in range(1, k_tiers):
                cap = round(transfer[v][k - 1] * scale)
                if cap <= 0:
                    continue
                if len(cg.succ[v]) == 1:
                    add((cg.succ[v][0], k), (v, k), cap)
                else:
                    z = ("z", v, k)
                    for w in cg.succ[v]:
                        inf_edges.append(((w, k), z))
                    add(z, (v, k), cap)
    inf = finite + 1
    for a, b in inf_edges:
        if g.has_edge(a, b):
            g[a][b]["capacity"] = inf
        else:
            g.add_edge(a, b, capacity=inf)
    cut_value, (source_side, _) = nx.minimum_cut(g, "s", "t", flow_func=flow_func)
    if cut_value >= inf:
        raise InfeasiblePlacementError("the pins contradict the data flow (a pinned node sits above a consumer)")
    return tuple(sum((v, k) in source_side for k in range(1, k_tiers)) for v in range(n))


def _monotone_assignments(cg: CostGraph, lo: Sequence[int], hi: Sequence[int]):
    """All assignments with x_u <= x_w on edges and lo <= x <= hi, in topological order."""
    n = len(cg.names)
    preds: list[list[int]] = [[] for _ in range(n)]
    for u, ws in enumerate(cg.succ):
        for w in ws:
            preds[w].append(u)
    x = [0] * n

    def rec(i: int):
        if i == n:
            yield tuple(x)
            return
        start = max([lo[i], *(x[p] for p in preds[i])])
        for t in range(start, hi[i] + 1):
            x[i] = t
            yield from rec(i + 1)

    yield from rec(0)


def brute_force_vector(cg: CostGraph, speeds: TierSpeeds) -> tuple[int, ...]:
    """The test oracle: every monotone assignment within pins and memory; first minimum wins."""
    best, best_cost = None, math.inf
    for x in _monotone_assignments(cg, cg.lo, cg.hi):
        if memory_of(cg, x) > cg.memory_limit_bytes:
            continue
        c = time_from_features(features(cg, x), speeds)
        if c < best_cost:
            best, best_cost = x, c
    if best is None:
        raise InfeasiblePlacementError("no placement satisfies the pins and the device memory limit")
    return best


def chain_vector(cg: CostGraph, speeds: TierSpeeds) -> tuple[int, ...]:
    """Exact for chains: enumerate the K-1 split points (pins and memory checked directly)."""
    assert cg.is_chain()
    n = len(cg.names)
    best, best_cost = None, math.inf
    for cuts in itertools.combinations_with_replacement(range(n + 1), cg.num_tiers - 1):
        x = tuple(sum(i >= c for c in cuts) for i in range(n))
        if any(not (cg.lo[i] <= x[i] <= cg.hi[i]) for i in range(n)):
            continue
        if memory_of(cg, x) > cg.memory_limit_bytes:
            continue
        c = time_from_features(features(cg, x), speeds)
        if c < best_cost:
            best, best_cost = x, c
    if best is None:
        raise InfeasiblePlacementError("no placement satisfies the pins and the device memory limit")
    return best


def mincut_vector(cg: CostGraph, speeds: TierSpeeds) -> tuple[tuple[int, ...], float]:
    """Min cut plus branch and bound on device memory; returns (x, rounding bound in seconds)."""
    first = min_cut(cg, speeds)
    if memory_of(cg, first.x) <= cg.memory_limit_bytes:
        return first.x, first.rounding_bound_s
    limit = cg.memory_limit_bytes
    slack = first.rounding_bound_s  # the largest bound of any cut used below
    best: tuple[int, ...] | None = None
    best_cost = math.inf
    stack = [(tuple(cg.lo), tuple(cg.hi))]
    while stack:
        lo, hi = stack.pop()
        if sum(m for m, h in zip(cg.memory_bytes, hi, strict=True) if h == 0) > limit:
            continue
        try:
            res = min_cut(cg, speeds, lo, hi)
        except InfeasiblePlacementError:
            continue
        x = res.x
        slack = max(slack, res.rounding_bound_s)
        cost = time_from_features(features(cg, x), speeds)
        if cost - res.rounding_bound_s >= best_cost:  # this subtree's optimum is no better
            continue
        if memory_of(cg, x) <= limit:
            best, best_cost = x, cost
            continue
        free = [i for i, xi in enumerate(x) if xi == 0 and hi[i] > 0]
        if not free:
            continue
        v = max(free, key=lambda i: cg.memory_bytes[i])
        on_device = (lo, hi[:v] + (0,) + hi[v + 1 :])
        off_device = (lo[:v] + (max(1, lo[v]),) + lo[v + 1 :], hi)
        stack.append(on_device)
        stack.append(off_device)
    if best is None:
        raise InfeasiblePlacementError("no placement fits the device memory limit")
    return best, slack


def solve_vector(cg: CostGraph, speeds: TierSpeeds, method: str = "auto") -> tuple[tuple[int, ...], str, float]:
    """Dispatch: ``auto`` uses the chain enumeration on chains and the min cut otherwise."""
    if method == "auto":
        method = "chain" if cg.is_chain() else "mincut"
    if method == "chain":
        x, bound = chain_vector(cg, speeds), 0.0
    elif method == "mincut":
        x, bound = mincut_vector(cg, speeds)
    elif method == "brute_force":
        x, bound = brute_force_vector(cg, speeds), 0.0
    else:
        raise ValueError(f"unknown method {method!r}: expected auto, chain, mincut or brute_force")
    check_assignment(cg, x)
    return x, method, bound


def plan_from_vector(cg: CostGraph, speeds: TierSpeeds, x: Sequence[int], method: str, bound: float = 0.0) -> Plan:
    f = features(cg, x)
    return Plan(
        assignment={n: int(t) for n, t in zip(cg.names, x, strict=True)},
        batch_time_s=time_from_features(f, speeds),
        device_memory_bytes=memory_of(cg, x),
        features=f,
        method=method,
        rounding_bound_s=bound,
    )


def partition(graph: nx.DiGraph, profile: Profile, method: str = "auto") -> Plan:
    """Best placement of ``graph`` for one device (exact; see module docstring)."""
    cg = cost_graph(graph, profile)
    x, used, bound = solve_vector(cg, profile.speeds, method)
    return plan_from_vector(cg, profile.speeds, x, used, bound)


def brute_force(graph: nx.DiGraph, profile: Profile) -> Plan:
    """Enumerate every monotone assignment (small graphs only): the oracle for the tests."""
    return partition(graph, profile, method="brute_force")
