"""The cost model: what one training batch, and one device's period, cost over ordered tiers.

This is the one place the project's time formula lives: the planner minimises it and the emulated
clock charges it, so a prediction and a charge made from the same inputs are the same float.

For an assignment x (node -> tier, 0 device, 1 edge, 2 cloud) the batch time is

    T(x) = Σ_v work_v / flops_per_s[x_v]
         + Σ_u Σ_{k: x_u < k <= max_{w ∈ succ(u)} x_w} 2 · 8 · bytes_u / bandwidth_bps[k-1]
         + Σ_{k <= x_sink} 8 · label_bytes / bandwidth_bps[k-1]
         + Σ_{v: x_v = 0} 2 · 8 · param_bytes_v · syncs_per_round / steps_per_round / bandwidth_bps[0]

(activation up, gradient down, bits = 8 · bytes; the labels travel up to the stage that computes
the loss, the one holding the model's last node; the last line is each batch's share of the
round's model sync of the device-side layers, up and down the device link). Work and bytes are per
batch: a layer graph's per-sample figures times ``batch_size``. The label and sync terms are unary
(they depend on one node's tier), so one minimum cut still solves it exactly. Grouped by tier the
same sum is

    T(x) = Σ_k F_k / flops_per_s[k] + Σ_k A_k / bandwidth_bps[k-1]

with F_k the work on tier k and A_k the bits over boundary k; :func:`features` returns
(F_0.., A_1..), which is what the candidate set stores. Every batch cost in the package is computed
by :func:`time_from_features`, so equal assignments give bit-identical floats; a period (what the
clock charges) is :func:`period_cost`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import networkx as nx
import numpy as np

LABEL_BYTES = 8  # one int64 class label per sample, sent up with the activations


@dataclass(frozen=True)
class TierSpeeds:
    """Compute speeds and link bandwidths of one device's tier chain; no cloud means two tiers."""

    device_flops_per_s: float
    edge_flops_per_s: float
    device_edge_bandwidth_bps: float
    cloud_flops_per_s: float | None = None
    edge_cloud_bandwidth_bps: float | None = None

    def __post_init__(self) -> None:
        assert (self.cloud_flops_per_s is None) == (self.edge_cloud_bandwidth_bps is None), (
            "cloud speed and edge-cloud bandwidth come together"
        )

    @property
    def flops_per_s(self) -> tuple[float, ...]:
        s = (self.device_flops_per_s, self.edge_flops_per_s)
        return s if self.cloud_flops_per_s is None else (*s, self.cloud_flops_per_s)

    @property
    def bandwidth_bps(self) -> tuple[float, ...]:
        b = (self.device_edge_bandwidth_bps,)
        return b if self.edge_cloud_bandwidth_bps is None else (*b, self.edge_cloud_bandwidth_bps)

    @property
    def num_tiers(self) -> int:
        return len(self.flops_per_s)

    @staticmethod
    def of(flops_per_s: Sequence[float], bandwidth_bps: Sequence[float]) -> TierSpeeds:
        assert len(flops_per_s) in (2, 3) and len(bandwidth_bps) == len(flops_per_s) - 1
        cloud = flops_per_s[2] if len(flops_per_s) == 3 else None
        bw2 = bandwidth_bps[1] if len(bandwidth_bps) == 2 else None
        return TierSpeeds(flops_per_s[0], flops_per_s[1], bandwidth_bps[0], cloud, bw2)


@dataclass(frozen=True)
class Profile:
    """One device's planning inputs: its tier speeds plus training and memory settings.

    ``private_layers`` leading compute nodes (topological order, after the input) stay on the
    device. Device memory of an assignment is Σ over device nodes of
    ``param_state_factor · param_bytes + batch_size · activation_bytes`` (weights, gradients and
    momentum; activations kept for backward).
    """

    speeds: TierSpeeds
    batch_size: int = 8
    steps_per_round: int = 1
    syncs_per_round: int = 1  # times the device-side parameters go up and come back per round
    device_memory_bytes: float = math.inf
    private_layers: int = 0
    param_state_factor: float = 3.0


@dataclass(frozen=True)
class CostGraph:
    """A layer graph reduced to per-batch arrays in topological order (what the solvers use).

    ``lo[i] <= x_i <= hi[i]`` are pins; ``memory_bytes[i]`` is what node i costs on the device.
    """

    names: tuple[str, ...]
    succ: tuple[tuple[int, ...], ...]
    work_flops: tuple[float, ...]
    bits: tuple[float, ...]  # 2 · 8 · activation bytes per batch: activation up plus gradient down
    memory_bytes: tuple[float, ...]
    lo: tuple[int, ...]
    hi: tuple[int, ...]
    num_tiers: int
    memory_limit_bytes: float = math.inf
    # Bits per batch a node costs on the first link when it sits on the device: its share of the
    # round's model sync (parameters up, aggregate down). Empty: no sync (bare instances).
    sync_bits: tuple[float, ...] = ()
    # Bits per batch a node costs on every link below its own tier (the labels, on the model's last
    # node). Empty: none.
    label_bits: tuple[float, ...] = ()
    # Parameter and buffer bytes of each node: what one model sync moves for a device-side node.
    param_bytes: tuple[float, ...] = ()

    @property
    def index(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.names)}

    def is_chain(self) -> bool:
        return all(s == ((i + 1,) if i + 1 < len(self.names) else ()) for i, s in enumerate(self.succ))


def topological_names(graph: nx.DiGraph) -> list[str]:
    """Nodes by their ``order`` attribute when present (the fx order), else a topological sort."""
    if all("order" in d for _, d in graph.nodes(data=True)):
        names = sorted(graph.nodes, key=lambda n: graph.nodes[n]["order"])
    else:
        names = list(nx.lexicographical_topological_sort(graph))
    pos = {n: i for i, n in enumerate(names)}
    assert all(pos[u] < pos[w] for u, w in graph.edges), "node order is not topological"
    return names


def cost_graph(graph: nx.DiGraph, profile: Profile) -> CostGraph:
    """Per-batch cost arrays for ``graph`` under ``profile``: pins the source and private layers."""
    names = topological_names(graph)
    pos = {n: i for i, n in enumerate(names)}
    b = profile.batch_size
    k = profile.speeds.num_tiers
    source = graph.graph.get("source", names[0])
    lo = [int(graph.nodes[n].get("tier", 0)) for n in names]
    hi = [int(graph.nodes[n].get("tier", k - 1)) for n in names]
    compute = [i for i, n in enumerate(names) if n != source and graph.in_degree(n) > 0]
    sink = graph.graph.get("sink")
    for i in [pos[source], *compute[: profile.private_layers]]:
        hi[i] = 0
        lo[i] = 0
    return CostGraph(
        names=tuple(names),
        succ=tuple(tuple(sorted(pos[w] for w in graph.successors(n))) for n in names),
        work_flops=tuple(
            float(graph.nodes[n].get("fwd_flops", 0.0) + graph.nodes[n].get("bwd_flops", 0.0)) * b for n in names
        ),
        bits=tuple(16.0 * float(graph.nodes[n].get("activation_bytes", 0.0)) * b for n in names),
        memory_bytes=tuple(
            profile.param_state_factor * float(graph.nodes[n].get("param_bytes", 0.0))
            + b * float(graph.nodes[n].get("activation_bytes", 0.0))
            for n in names
        ),
        lo=tuple(lo),
        hi=tuple(hi),
        num_tiers=k,
        memory_limit_bytes=profile.device_memory_bytes,
        sync_bits=tuple(
            16.0 * float(graph.nodes[n].get("param_bytes", 0.0)) * profile.syncs_per_round / profile.steps_per_round
            for n in names
        ) if k > 1 else (),
        label_bits=tuple(8.0 * LABEL_BYTES * b if n == sink else 0.0 for n in names) if sink is not None else (),
        param_bytes=tuple(float(graph.nodes[n].get("param_bytes", 0.0)) for n in names),
    )


def features(cg: CostGraph, x: Sequence[int], with_sync: bool = True) -> tuple[float, ...]:
    """(F_0, …, F_{K-1}, A_1, …, A_{K-1}): work per tier and bits per boundary of assignment x.

    A_1 includes the model sync of the device-side nodes (``sync_bits``), which crosses the first
    link, unless ``with_sync`` is False (a period charges its sync once, not per batch).
    """
    k = cg.num_tiers
    f = [0.0] * (2 * k - 1)
    for i, xi in enumerate(x):
        f[xi] += cg.work_flops[i]
        if xi == 0 and cg.sync_bits and with_sync:
            f[k] += cg.sync_bits[i]
        if cg.label_bits and cg.label_bits[i]:
            for boundary in range(1, xi + 1):
                f[k + boundary - 1] += cg.label_bits[i]
        top = max((x[w] for w in cg.succ[i]), default=-1)
        for boundary in range(xi + 1, top + 1):
            f[k + boundary - 1] += cg.bits[i]
    return tuple(f)


def inverse_params(speeds: TierSpeeds) -> tuple[float, ...]:
    """(1/s_0, …, 1/B_1, …): the point at which the features are evaluated."""
    return tuple(1.0 / s for s in speeds.flops_per_s) + tuple(1.0 / b for b in speeds.bandwidth_bps)


def time_from_features(f: Sequence[float], speeds: TierSpeeds) -> float:
    """Batch seconds from features; the single place every cost is summed (fixed order)."""
    total = 0.0
    for fi, pi in zip(f, inverse_params(speeds), strict=True):
        total += fi * pi
    return total


def check_assignment(cg: CostGraph, x: Sequence[int]) -> None:
    """Assert x is monotone along edges and within the pins."""
    assert len(x) == len(cg.names)
    for i, xi in enumerate(x):
        assert cg.lo[i] <= xi <= cg.hi[i], f"{cg.names[i]}: tier {xi} outside pins [{cg.lo[i]}, {cg.hi[i]}]"
        for w in cg.succ[i]:
            assert xi <= x[w], f"edge {cg.names[i]} -> {cg.names[w]} goes down"


def time_of(cg: CostGraph, x: Sequence[int], speeds: TierSpeeds) -> float:
    return time_from_features(features(cg, x), speeds)


def memory_of(cg: CostGraph, x: Sequence[int]) -> float:
    return sum(m for m, xi in zip(cg.memory_bytes, x, strict=True) if xi == 0)


def as_vector(cg: CostGraph, assignment: Mapping[str, int]) -> list[int]:
    return [int(assignment[n]) for n in cg.names]


def batch_time_s(graph: nx.DiGraph, assignment: Mapping[str, int], profile: Profile) -> float:
    """Seconds of one training batch under ``assignment`` (formula in the module docstring)."""
    cg = cost_graph(graph, profile)
    return time_of(cg, as_vector(cg, assignment), profile.speeds)


def device_memory_bytes(graph: nx.DiGraph, assignment: Mapping[str, int], profile: Profile) -> float:
    cg = cost_graph(graph, profile)
    return memory_of(cg, as_vector(cg, assignment))


def device_param_bytes(graph: nx.DiGraph, assignment: Mapping[str, int]) -> float:
    return sum(float(graph.nodes[n].get("param_bytes", 0.0)) for n, t in assignment.items() if t == 0)


def round_time_s(graph: nx.DiGraph, assignment: Mapping[str, int], profile: Profile) -> float:
    """Seconds of one round: ``steps_per_round`` batches, each carrying its share of the sync.

    The sync is the device-side parameters going up to the edge for aggregation and the
    aggregate coming back, both on the device link, ``syncs_per_round`` times:
    2 · 8 · device param bytes / bandwidth each. It is part of the batch cost the partitioner
    minimises (``CostGraph.sync_bits``), so a plan that keeps many weights behind a slow link pays
    for them. The edge- and cloud-side parameters already live on the servers (in the session),
    and the edge→cloud aggregation is per edge server, not per device, so it is not charged here.
    """
    return profile.steps_per_round * batch_time_s(graph, assignment, profile)


@dataclass(frozen=True)
class PeriodCost:
    """What one device's training period costs, in seconds: the emulated clock's charge and the
    planner's prediction alike (the same function on the same inputs gives the same float)."""

    compute_s: tuple[float, float, float]  # device, edge, cloud, each at that tier's full speed
    transfer_s: float  # activations and labels up, gradients down, on every link the split uses
    sync_s: float  # the device-side weights up and the aggregate back, once per period

    @property
    def total_s(self) -> float:
        return self.compute_s[0] + self.compute_s[1] + self.compute_s[2] + self.transfer_s + self.sync_s


def sync_bits(cg: CostGraph, x: Sequence[int]) -> float:
    """Bits of one model sync: the device-side parameters up and the aggregate back."""
    return 16.0 * sum(p for p, xi in zip(cg.param_bytes, x, strict=True) if xi == 0)


def period_cost(cg: CostGraph, x: Sequence[int], speeds: TierSpeeds, steps: int, syncs: int = 1) -> PeriodCost:
    """``steps`` batches of assignment x plus ``syncs`` model syncs, at ``speeds`` held throughout.

    ``cg`` is priced at the period's batch size. Equal to ``steps`` times the planner's batch time
    with its sync share (up to float rounding): the planner minimises what this charges.
    """
    f = features(cg, x, with_sync=False)
    p = inverse_params(speeds)
    k = cg.num_tiers
    compute = [steps * f[t] * p[t] for t in range(k)] + [0.0] * (3 - k)
    transfer = 0.0
    for j in range(k, 2 * k - 1):
        transfer += f[j] * p[j]
    return PeriodCost((compute[0], compute[1], compute[2]), steps * transfer, syncs * sync_bits(cg, x) * p[k])


@dataclass(frozen=True)
class PeriodCosts:
    """:func:`period_cost` of many devices as arrays over them (``[n, 3]`` and ``[n]``): a clock
    that prices 10,000 devices a segment cannot afford a Python call each."""

    compute_s: np.ndarray
    transfer_s: np.ndarray
    sync_s: np.ndarray

    @property
    def total_s(self) -> np.ndarray:
        c = self.compute_s  # summed in PeriodCost.total_s's order
        return c[:, 0] + c[:, 1] + c[:, 2] + self.transfer_s + self.sync_s

    def at(self, i: int) -> PeriodCost:
        c = self.compute_s[i]
        return PeriodCost((float(c[0]), float(c[1]), float(c[2])), float(self.transfer_s[i]), float(self.sync_s[i]))


def period_costs(cg: CostGraph, x: Sequence[int], inverse: np.ndarray, steps: np.ndarray, syncs: int = 1
                 ) -> PeriodCosts:
    """:func:`period_cost` for devices that share ``cg`` and ``x``, each at its own speeds
    (``inverse``: ``[n, 2K-1]``, each row :func:`inverse_params` of its speeds) and step count.
    Elementwise, the same operations in the same order as the scalar function, so each device's
    floats are bit for bit the ones it would get alone (the planner prices one device at a time)."""
    f = features(cg, x, with_sync=False)
    k = cg.num_tiers
    n = len(steps)
    compute = np.zeros((n, 3))
    for t in range(k):
        compute[:, t] = steps * f[t] * inverse[:, t]
    transfer = np.zeros(n)
    for j in range(k, 2 * k - 1):
        transfer = transfer + f[j] * inverse[:, j]
    return PeriodCosts(compute, steps * transfer, syncs * sync_bits(cg, x) * inverse[:, k])


def makespan_of_arrays(device_ids: Sequence[str], edges: Sequence[str | None], costs: PeriodCosts,
                       extra_s: np.ndarray) -> float:
    """:func:`makespan_s` of the charges ``(device_ids[i], edges[i], costs.at(i), extra_s[i])``,
    the same float: the maxima are exact in any order, the sums run in the same device order."""
    if not len(device_ids):
        return 0.0
    totals = (costs.total_s + extra_s).tolist()
    edge_s, cloud_s = costs.compute_s[:, 1].tolist(), costs.compute_s[:, 2].tolist()
    edge_busy: dict[str | None, float] = {}
    cloud_busy = 0.0
    for i in sorted(range(len(device_ids)), key=device_ids.__getitem__):
        edge_busy[edges[i]] = edge_busy.get(edges[i], 0.0) + edge_s[i]
        cloud_busy += cloud_s[i]
    return max(max(0.0, *totals), max(edge_busy.values()), cloud_busy)


@dataclass(frozen=True)
class Charge:
    """One device's part of a period: where its server-side work ran, its cost, and any extra
    seconds it spent (a session moved edge to edge)."""

    device_id: str
    edge: str | None
    cost: PeriodCost
    extra_s: float = 0.0

    @property
    def total_s(self) -> float:
        return self.cost.total_s + self.extra_s


def makespan_s(charges: Iterable[Charge]) -> float:
    """A period lasts as long as its slowest device, or its busiest edge, or the cloud: servers are
    shared, so an edge (and the one cloud) must do all its devices' work back to back."""
    slowest, edge_busy, cloud_busy = 0.0, {}, 0.0
    for c in sorted(charges, key=lambda c: c.device_id):  # sums in one order: equal inputs, equal floats
        slowest = max(slowest, c.total_s)
        edge_busy[c.edge] = edge_busy.get(c.edge, 0.0) + c.cost.compute_s[1]
        cloud_busy += c.cost.compute_s[2]
    return max(slowest, max(edge_busy.values(), default=0.0), cloud_busy)
