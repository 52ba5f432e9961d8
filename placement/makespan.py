"""Placements for many devices that share edge servers and the cloud: minimise the period's makespan.

The clock charges a period as the largest of the slowest device's own time, any edge's summed
compute and the cloud's summed compute (:func:`placement.cost.makespan_s`): devices sharing a
server slow each other. This module minimises exactly that function.

Options. Every device chooses among the same partitions of the model: all monotone assignments
within the pins (enumerated while there are at most ``ENUMERATION_LIMIT``, else the distinct
minimum cuts over a grid of speed ratios), less those another partition beats in every cost term
(work on each tier, bits on each link, sync bits, device memory): no device could prefer those.
VGG-5 on 8x8 inputs keeps 24 of its 78 splits.

Costs. For device i and partition p, at the device's batch size b_i and ``steps`` batches:
T_ip is its own period at full server speeds (the cost model's period, sync included), E_ip its
edge compute and C_ip its cloud compute. All three are linear in the partition's features, so
they are computed for every device and partition at once with numpy.

Search. The makespan M is feasible if each device can pick a partition with T_ip <= M while every
edge's ΣE and the cloud's ΣC stay <= M. For a target M the picks are found by prices: a device
picks the allowed partition of least λ_e E_ip + μ C_ip, and the prices of overloaded servers rise
(multiplicatively) until every load fits or the iterations run out. M is bisected between the
lower bound max_i min_p T_ip and the best of the plain solutions (every device on its own best
partition; every device on the same partition; the current plan). The result is never worse than
any of those (by construction, checked in the tests) and is compared with brute force on small
instances in the tests; it is a heuristic, not a proof of optimality.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import networkx as nx
import numpy as np

from tierflow.placement.cost import CostGraph, Profile, TierSpeeds, cost_graph, features, sync_bits
from tierflow.placement.partition import _monotone_assignments, min_cut

ENUMERATION_LIMIT = 50_000
_PRICE_ITERATIONS = 40
_BISECTIONS = 40


@dataclass(frozen=True)
class PartitionOptions:
    """The partitions worth considering for one model, with their per-sample costs (batch 1)."""

    names: tuple[str, ...]  # node names in cost-graph order
    vectors: tuple[tuple[int, ...], ...]  # one assignment per option
    features: np.ndarray  # (P, 5): work on device, edge, cloud; bits on link 1, link 2 (no sync)
    sync_bits: np.ndarray  # (P,): bits of one model sync (device-side weights up and back)
    memory_fixed: np.ndarray  # (P,): device memory independent of the batch (weights and their state)
    memory_per_sample: np.ndarray  # (P,): device memory per sample of the batch (kept activations)

    def __len__(self) -> int:
        return len(self.vectors)

    def assignment(self, index: int) -> dict[str, int]:
        return {n: int(t) for n, t in zip(self.names, self.vectors[index], strict=True)}


def _dominance_filter(costs: np.ndarray) -> np.ndarray:
    """Indices of the rows no other row beats or ties in every column (first of exact ties kept)."""
    order = np.lexsort(costs.T[::-1])
    kept: list[int] = []
    for i in order:
        row = costs[i]
        if kept and np.any(np.all(costs[kept] <= row, axis=1)):
            continue
        kept.append(int(i))
    return np.array(sorted(kept), dtype=int)


def _grid_cuts(cg: CostGraph) -> list[tuple[int, ...]]:
    """Distinct minimum cuts over a grid of speed and bandwidth ratios (for graphs too big to enumerate)."""
    found: dict[tuple[int, ...], None] = {}
    ratios = [10.0**k for k in range(-4, 5)]
    for a in ratios:
        for b in ratios:
            for c in ratios:
                speeds = TierSpeeds(1.0, a, 1.0 / c, a * b, 1.0 / (c * b))
                found.setdefault(min_cut(cg, speeds).x)
    return list(found)


def _cost_graphs(graph: nx.DiGraph, private_layers: int) -> tuple[CostGraph, CostGraph]:
    unit = TierSpeeds(1.0, 1.0, 1.0, 1.0, 1.0)
    return (cost_graph(graph, Profile(unit, batch_size=1, private_layers=private_layers)),
            cost_graph(graph, Profile(unit, batch_size=2, private_layers=private_layers)))


def partition_options(graph: nx.DiGraph, private_layers: int = 1,
                      also: Sequence[Sequence[int]] = ()) -> PartitionOptions:
    """The undominated monotone 3-tier partitions of ``graph`` with ``private_layers`` pinned on the
    device, plus the assignments ``also`` (e.g. the splits devices train now), kept whatever they cost."""
    one, two = _cost_graphs(graph, private_layers)
    xs: list[tuple[int, ...]] = []
    for x in _monotone_assignments(one, one.lo, one.hi):
        xs.append(x)
        if len(xs) > ENUMERATION_LIMIT:
            xs = _grid_cuts(one)
            break
    wanted = list(dict.fromkeys(tuple(int(t) for t in x) for x in also))
    known = set(xs)
    xs += [x for x in wanted if x not in known]
    feats = np.array([features(one, x, with_sync=False) for x in xs], dtype=float)
    syncs = np.array([sync_bits(one, x) for x in xs], dtype=float)
    mem1 = np.array([sum(m for m, xi in zip(one.memory_bytes, x, strict=True) if xi == 0) for x in xs])
    mem2 = np.array([sum(m for m, xi in zip(two.memory_bytes, x, strict=True) if xi == 0) for x in xs])
    per_sample = mem2 - mem1
    fixed = mem1 - per_sample
    keep = _dominance_filter(np.column_stack([feats, syncs, fixed, per_sample]))
    if wanted:
        index = {x: i for i, x in enumerate(xs)}
        keep = np.array(sorted(set(keep.tolist()) | {index[x] for x in wanted}), dtype=int)
    return PartitionOptions(one.names, tuple(xs[i] for i in keep), feats[keep], syncs[keep], fixed[keep],
                            per_sample[keep])


@dataclass(frozen=True)
class SharedDevices:
    """The devices of one period as arrays: which edge each shares, every tier's speed, its batch."""

    edge: np.ndarray  # (n,) index of the edge each device uses
    device_flops_per_s: np.ndarray
    device_bandwidth_bps: np.ndarray
    edge_flops_per_s: np.ndarray  # the speed of each device's edge
    edge_cloud_bandwidth_bps: np.ndarray
    cloud_flops_per_s: float
    batch_size: np.ndarray  # (n,) samples per step
    memory_bytes: np.ndarray  # (n,) device memory limits (inf: none)
    steps: int  # batches per period
    syncs: int = 1  # model syncs per period

    def __len__(self) -> int:
        return len(self.edge)


@dataclass(frozen=True)
class OptionCosts:
    """Seconds per period for every device (rows) and option (columns); inf where memory forbids."""

    device_s: np.ndarray  # T: the device's own period at full server speeds
    edge_s: np.ndarray  # E: its edge compute
    cloud_s: np.ndarray  # C: its cloud compute


def option_costs(options: PartitionOptions, devices: SharedDevices) -> OptionCosts:
    f = options.features  # (P, 5)
    steps_b = (devices.steps * devices.batch_size)[:, None]
    d = f[None, :, 0] / devices.device_flops_per_s[:, None]
    e = f[None, :, 1] / devices.edge_flops_per_s[:, None]
    c = f[None, :, 2] / devices.cloud_flops_per_s
    links = (f[None, :, 3] / devices.device_bandwidth_bps[:, None]
             + f[None, :, 4] / devices.edge_cloud_bandwidth_bps[:, None])
    sync = devices.syncs * options.sync_bits[None, :] / devices.device_bandwidth_bps[:, None]
    edge_s, cloud_s = steps_b * e, steps_b * c
    device_s = steps_b * (d + links) + edge_s + cloud_s + sync
    memory = options.memory_fixed[None, :] + devices.batch_size[:, None] * options.memory_per_sample[None, :]
    device_s = np.where(memory <= devices.memory_bytes[:, None], device_s, np.inf)
    return OptionCosts(device_s, edge_s, cloud_s)


def makespan_of(costs: OptionCosts, edge: np.ndarray, choice: np.ndarray) -> float:
    """The period's makespan when device i takes option ``choice[i]`` (the clock's rule)."""
    rows = np.arange(len(choice))
    edge_busy = np.bincount(edge, weights=costs.edge_s[rows, choice]) if len(choice) else np.zeros(0)
    return float(max(costs.device_s[rows, choice].max(initial=0.0), edge_busy.max(initial=0.0),
                     costs.cloud_s[rows, choice].sum()))


def _uniform_best(costs: OptionCosts, edge: np.ndarray) -> tuple[float, np.ndarray | None]:
    """The best plan that puts every device on the same option (a fixed split, optimally chosen)."""
    n, p = costs.device_s.shape
    slowest = costs.device_s.max(axis=0)
    n_edges = int(edge.max()) + 1 if n else 0
    busy = np.zeros((n_edges, p))
    np.add.at(busy, edge, costs.edge_s)
    spans = np.maximum(np.maximum(slowest, busy.max(axis=0, initial=0.0)), costs.cloud_s.sum(axis=0))
    j = int(np.argmin(spans))
    return (float(spans[j]), np.full(n, j)) if math.isfinite(spans[j]) else (math.inf, None)


def _picks_at(costs: OptionCosts, edge: np.ndarray, n_edges: int, target_s: float) -> np.ndarray | None:
    """Options meeting ``target_s`` on every device, edge and the cloud, found by server prices; None
    when the iterations find none (the target may still be feasible: this is a heuristic)."""
    allowed = costs.device_s <= target_s
    if not allowed.any(axis=1).all():
        return None
    rows = np.arange(len(edge))
    edge_price, cloud_price = np.ones(n_edges), 1.0
    tie = costs.device_s * (1e-9 / target_s)  # among equal prices, the faster option
    for _ in range(_PRICE_ITERATIONS):
        score = edge_price[edge][:, None] * costs.edge_s + cloud_price * costs.cloud_s + tie
        pick = np.where(allowed, score, np.inf).argmin(axis=1)
        edge_busy = np.bincount(edge, weights=costs.edge_s[rows, pick], minlength=n_edges)
        cloud_busy = costs.cloud_s[rows, pick].sum()
        if edge_busy.max(initial=0.0) <= target_s and cloud_busy <= target_s:
            return pick
        edge_price *= np.clip(edge_busy / target_s, 0.5, 2.0)
        cloud_price *= float(np.clip(cloud_busy / target_s, 0.5, 2.0))
    return None


@dataclass(frozen=True)
class MakespanPlan:
    choice: np.ndarray  # (n,) option index per device
    makespan_s: float


def plan_makespan(costs: OptionCosts, edge: np.ndarray, current: np.ndarray | None = None) -> MakespanPlan:
    """Options for every device minimising the period's makespan (see the module docstring)."""
    n = costs.device_s.shape[0]
    if n == 0:
        return MakespanPlan(np.zeros(0, dtype=int), 0.0)
    n_edges = int(edge.max()) + 1
    selfish = costs.device_s.argmin(axis=1)
    candidates = [selfish, _uniform_best(costs, edge)[1], current]
    best, best_span = None, math.inf
    for c in candidates:
        if c is not None:
            span = makespan_of(costs, edge, c)
            if span < best_span:
                best, best_span = c, span
    if best is None:
        raise ValueError("no option fits some device's memory")
    lo = float(costs.device_s.min(axis=1).max())
    hi = best_span
    for _ in range(_BISECTIONS):
        if hi <= lo * (1 + 1e-9):
            break
        mid = 0.5 * (lo + hi)
        pick = _picks_at(costs, edge, n_edges, mid)
        if pick is None:
            lo = mid
            continue
        span = makespan_of(costs, edge, pick)
        if span < best_span:
            best, best_span = pick, span
        hi = min(span, mid)
    return MakespanPlan(np.asarray(best, dtype=int), best_span)


def brute_force_makespan(costs: OptionCosts, edge: np.ndarray) -> float:
    """The oracle for small instances: every combination of options, broadcast over the product."""
    n, p = costs.device_s.shape
    slowest = np.zeros([1] * n)
    cloud = np.zeros([1] * n)
    busy = {int(e): np.zeros([1] * n) for e in np.unique(edge)}
    for i in range(n):
        shape = [1] * n
        shape[i] = p
        slowest = np.maximum(slowest, costs.device_s[i].reshape(shape))
        cloud = cloud + costs.cloud_s[i].reshape(shape)
        busy[int(edge[i])] = busy[int(edge[i])] + costs.edge_s[i].reshape(shape)
    span = np.maximum(slowest, cloud)
    for b in busy.values():
        span = np.maximum(span, b)
    return float(span.min())


def keep_unneeded(costs: OptionCosts, edge: np.ndarray, new: np.ndarray, old: Sequence[int]) -> np.ndarray:
    """``new`` with every device whose switch the makespan does not need put back on its ``old``
    option (a switch costs a transfer, so only the ones that pay stay switched)."""
    choice = np.array(new, dtype=int)
    old = np.asarray(old, dtype=int)
    rows = np.arange(len(choice))
    target = makespan_of(costs, edge, choice)
    edge_busy = np.bincount(edge, weights=costs.edge_s[rows, choice])
    cloud_busy = float(costs.cloud_s[rows, choice].sum())
    for i in np.flatnonzero(choice != old):
        a, b = old[i], choice[i]
        d_edge = costs.edge_s[i, a] - costs.edge_s[i, b]
        d_cloud = costs.cloud_s[i, a] - costs.cloud_s[i, b]
        if (costs.device_s[i, a] <= target and edge_busy[edge[i]] + d_edge <= target
                and cloud_busy + d_cloud <= target):
            choice[i] = a
            edge_busy[edge[i]] += d_edge
            cloud_busy += d_cloud
    return choice
