"""Emulated time: the training really runs, the clock is virtual and exact.

Virtual time is a pure function of (scenario, seed, layer profile): what a period charges comes
from the cost model (placement/cost.py), the same function the planner minimises, never from the
wall time a step happened to take on this host. What a device's period is charged, and nothing else:

- compute: each layer's cost from the profile (``execution.compute: profile``: seconds timed once on
  a reference host, as effective FLOPs at its calibrated speed; ``flops``: FLOP counts) at the
  speed of the tier it runs on; ``measured`` charges each step's own wall time instead (scaled by
  host/tier speed: noisy, for studies of the host itself);
- transfers: activations and labels up, gradients down, bytes x 8 / bandwidth on each link used;
- model sync: the device-side parameters up and the aggregate back, once per period, on its link;
- a session moved edge to edge (handover or ring pass): a fixed pause (``policy.migration_pause_s``)
  plus its bytes over the slower of the two edges' uplinks.

An edge's compute is shared, and so is the cloud's: a period lasts as long as its slowest device,
or its busiest edge, or the cloud doing all its devices' work back to back. Speeds and bandwidths
may vary in time (orchestrator/resources.py); each period is charged at the values of its start.
Aggregation arithmetic, Ray's own overhead, latency and link contention are not counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import networkx as nx
import numpy as np

from tierflow.orchestrator.layer_graphs import layer_graph
from tierflow.orchestrator.profiles import profile_for
from tierflow.orchestrator.resources import Resources
from tierflow.orchestrator.scenario import Scenario
from tierflow.placement.cost import (
    Charge,
    CostGraph,
    PeriodCost,
    PeriodCosts,
    Profile,
    TierSpeeds,
    as_vector,
    cost_graph,
    makespan_of_arrays,
    period_cost,
    period_costs,
)
from tierflow.placement.graph import attach_profile
from tierflow.placement.profile import LayerProfile
from tierflow.tiers.models import InputShape, build_model
from tierflow.tiers.optim import OptimizerSpec
from tierflow.tiers.session import SplitKey

_THREE_TIERS = TierSpeeds(1.0, 1.0, 1.0, 1.0, 1.0)  # cost arrays need the tier count only
_PERIOD_CACHE = 400_000  # remembered period costs (a few per device); past it the memory starts over


class CostModel:
    """One run's cost model: the priced layer graph, charged by the clock and predicted by the planner.

    ``graph`` carries each layer's per-sample work (effective FLOPs) and bytes; ``compute`` is the
    scenario's ``execution.compute``; ``host_flops_per_s`` scales measured wall time (``measured``).
    """

    def __init__(self, graph: nx.DiGraph, compute: str = "profile", host_flops_per_s: float | None = None):
        self.graph = graph
        self.compute = compute
        self.host_flops_per_s = host_flops_per_s
        self._cost_graphs: dict[int, CostGraph] = {}
        self._vectors: dict[tuple[SplitKey, int], tuple[int, ...]] = {}
        # period() is asked the same question for every device several times a round (the clock,
        # the prediction, each segment); the answer is a pure function of the question, so keep it.
        self._periods: dict[tuple, PeriodCost] = {}

    def cost_graph(self, batch_size: int) -> CostGraph:
        cg = self._cost_graphs.get(batch_size)
        if cg is None:
            cg = self._cost_graphs[batch_size] = cost_graph(self.graph, Profile(_THREE_TIERS, batch_size=batch_size))
        return cg

    def _vector(self, key: SplitKey, batch_size: int) -> tuple[int, ...]:
        x = self._vectors.get((key, batch_size))
        if x is None:
            x = self._vectors[(key, batch_size)] = tuple(as_vector(self.cost_graph(batch_size), key.assignment()))
        return x

    def period(self, key: SplitKey, steps: int, batch_size: int, speeds: TierSpeeds, syncs: int = 1,
               measured_compute_s: tuple[float, float, float] | None = None) -> PeriodCost:
        """``steps`` batches of ``batch_size`` under ``key`` and ``syncs`` model syncs, at ``speeds``."""
        question = (key, steps, batch_size, speeds, syncs)
        cost = self._periods.get(question)
        if cost is None:
            if len(self._periods) >= _PERIOD_CACHE:
                self._periods.clear()
            cost = self._periods[question] = period_cost(self.cost_graph(batch_size), self._vector(key, batch_size),
                                                         speeds, steps, syncs)
        if self.compute == "measured" and measured_compute_s is not None:
            assert self.host_flops_per_s is not None
            scaled = tuple(m * self.host_flops_per_s / s for m, s in zip(measured_compute_s, speeds.flops_per_s,
                                                                         strict=True))
            cost = replace(cost, compute_s=scaled)
        return cost

    def periods(self, keys: Sequence[SplitKey], steps: Sequence[int], batch_sizes: Sequence[int],
                speeds: TierSpeedArrays, measured_compute_s: np.ndarray | None = None) -> PeriodCosts:
        """:meth:`period` (one sync each) for many devices at once, in their order: the same floats,
        priced a group of devices sharing a split and a batch size at a time."""
        n = len(keys)
        out = PeriodCosts(np.zeros((n, 3)), np.zeros(n), np.zeros(n))
        groups: dict[tuple[SplitKey, int], list[int]] = {}
        for i, question in enumerate(zip(keys, batch_sizes, strict=True)):
            groups.setdefault(question, []).append(i)
        inverse = speeds.inverse()
        steps_arr = np.asarray(steps, dtype=np.int64)
        for (key, batch), members in groups.items():
            idx = np.asarray(members)
            part = period_costs(self.cost_graph(batch), self._vector(key, batch), inverse[idx], steps_arr[idx])
            out.compute_s[idx], out.transfer_s[idx], out.sync_s[idx] = part.compute_s, part.transfer_s, part.sync_s
        if self.compute == "measured" and measured_compute_s is not None:
            assert self.host_flops_per_s is not None
            out.compute_s[:] = np.asarray(measured_compute_s, dtype=np.float64) * self.host_flops_per_s \
                / speeds.flops_per_s()
        return out

    def _state_bytes(self, node: str, optimizer: OptimizerSpec) -> float:
        """A layer's weights and buffers, plus one copy of its weights per optimizer state tensor
        (momentum: one, Adam: two): the modelled size of its state when it moves."""
        copies = 2 if optimizer.name == "adam" else (1 if optimizer.momentum > 0 else 0)
        d = self.graph.nodes[node]
        return d.get("param_bytes", 0) + copies * d.get("trainable_bytes", 0)

    def session_bytes(self, key: SplitKey, tier: int, optimizer: OptimizerSpec) -> int:
        """The modelled size of a session moved edge to edge. Moves are charged at this size, so a
        planned ring pass costs what the plan predicted."""
        return int(sum(self._state_bytes(n, optimizer) for n, t in key.tiers if t == tier and n in self.graph))

    def switch_s(self, old: SplitKey, new: SplitKey, speeds: TierSpeeds, optimizer: OptimizerSpec) -> float:
        """Seconds to move the state of every layer that changes tier under a re-plan, over each link
        between its old tier and its new one."""
        before = old.assignment()
        inverse_bps = [1.0 / b for b in speeds.bandwidth_bps]
        total = 0.0
        for node, tier in new.tiers:
            was = before.get(node, tier)
            if was != tier and node in self.graph:
                links = sum(inverse_bps[k] for k in range(min(was, tier), max(was, tier)))
                total += 8 * self._state_bytes(node, optimizer) * links
        return total

    def device_param_bytes(self, key: SplitKey) -> int:
        """Bytes of the device-side parameters and buffers under ``key``: what one model sync moves."""
        cg = self.cost_graph(1)
        return int(sum(p for p, xi in zip(cg.param_bytes, self._vector(key, 1), strict=True) if xi == 0))


def build_cost_model(scenario: Scenario, shape: InputShape, profile: LayerProfile | None = None,
                     profile_path: str | Path | None = None) -> tuple[CostModel, LayerProfile | None]:
    """The run's cost model, and the layer profile it prices compute with (None under ``flops``).

    ``profile`` reuses one already loaded (every variant of a comparison, a resumed run);
    ``profile_path`` names a file; otherwise this host's cached profile, timed once if missing.
    """
    model = build_model(scenario.model.name, shape, seed=scenario.training.seed)
    graph = layer_graph(model, (shape.channels, shape.height, shape.width), batch_size=8)
    compute = scenario.execution.compute
    if compute == "flops":
        return CostModel(graph, compute), None
    profile = profile_for(scenario.model.name, graph, shape, scenario.training.batch_size, scenario.training.seed,
                          profile_path, given=profile)
    priced = attach_profile(graph, profile.per_sample_seconds(), profile.host_flops_per_s)
    return CostModel(priced, compute, profile.host_flops_per_s), profile


def tier_speeds(scenario: Scenario, resources: Resources, device_id: str, edge: str | None, t: float) -> TierSpeeds:
    """The tier chain a device trains on at virtual time ``t``: its own speed and link, its edge's
    speed and uplink, and the cloud."""
    edge = edge or scenario.edges[0].name  # a device-only device uses no edge; any edge's figures do
    return TierSpeeds(resources.device_flops_per_s(device_id, t), resources.edge_flops_per_s(edge, t),
                      resources.device_bandwidth_bps(device_id, t), scenario.cloud.flops_per_s,
                      resources.edge_cloud_bandwidth_bps(edge, t))


@dataclass(frozen=True)
class TierSpeedArrays:
    """:func:`tier_speeds` of many devices, one array per field."""

    device_flops_per_s: np.ndarray
    edge_flops_per_s: np.ndarray
    device_edge_bandwidth_bps: np.ndarray
    cloud_flops_per_s: np.ndarray
    edge_cloud_bandwidth_bps: np.ndarray

    def flops_per_s(self) -> np.ndarray:
        return np.stack([self.device_flops_per_s, self.edge_flops_per_s, self.cloud_flops_per_s], axis=1)

    def inverse(self) -> np.ndarray:
        """Each row :func:`placement.cost.inverse_params` of that device's speeds."""
        return 1.0 / np.stack([self.device_flops_per_s, self.edge_flops_per_s, self.cloud_flops_per_s,
                               self.device_edge_bandwidth_bps, self.edge_cloud_bandwidth_bps], axis=1)


def tier_speed_arrays(scenario: Scenario, resources: Resources, device_ids: Sequence[str],
                      edges: Sequence[str | None], t: float) -> TierSpeedArrays:
    """:func:`tier_speeds` of each ``(device_ids[i], edges[i])`` at virtual time ``t``."""
    first = scenario.edges[0].name
    edges = [e or first for e in edges]
    n = len(device_ids)
    return TierSpeedArrays(
        np.array([resources.device_flops_per_s(d, t) for d in device_ids], dtype=np.float64),
        np.array([resources.edge_flops_per_s(e, t) for e in edges], dtype=np.float64),
        np.array([resources.device_bandwidth_bps(d, t) for d in device_ids], dtype=np.float64),
        np.full(n, float(scenario.cloud.flops_per_s)),
        np.array([resources.edge_cloud_bandwidth_bps(e, t) for e in edges], dtype=np.float64))


@dataclass(frozen=True)
class PricedPeriod:
    """Devices' charges for a period, as arrays: what ``Charge`` objects and ``makespan_s`` give,
    the same floats, without an object per device."""

    device_ids: list[str]
    edges: list[str | None]
    costs: PeriodCosts
    extra_s: np.ndarray

    def makespan_s(self) -> float:
        return makespan_of_arrays(self.device_ids, self.edges, self.costs, self.extra_s)

    def charges(self) -> list[Charge]:
        extra = self.extra_s.tolist()
        return [Charge(d, e, self.costs.at(i), extra[i]) for i, (d, e) in enumerate(zip(self.device_ids, self.edges,
                                                                                          strict=True))]

    def add_compute(self, total: tuple[float, float, float]) -> tuple[float, float, float]:
        """``total`` plus the charges' compute, tier by tier, in the charges' order."""
        d, e, c = total
        for a, b, k in self.costs.compute_s.tolist():
            d, e, c = d + a, e + b, c + k
        return d, e, c


def edge_to_edge_bps(scenario: Scenario, src: str, dst: str) -> float:
    """Edges talk over their backhaul: the slower of the two uplinks bounds a transfer."""
    return 1e6 * min(scenario.edge(src).cloud_bandwidth_mbps, scenario.edge(dst).cloud_bandwidth_mbps)


def session_move_s(scenario: Scenario, src: str, dst: str, bytes_: int) -> float:
    """Virtual seconds of a session moved edge to edge: the modelled pause plus its bytes over the
    backhaul. Handover migrations and ring passes alike; the move's wall time is not charged."""
    return scenario.policy.migration_pause_s + 8 * bytes_ / edge_to_edge_bps(scenario, src, dst)
