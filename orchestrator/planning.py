"""The orchestrator's use of the placement engine: a split per device from its profile, and rings.

Speeds and bandwidths come from the scenario (and, as the run goes, from where each device is
connected); the planner itself is pure (placement/), this module only maps scenario terms to it.
"""

from __future__ import annotations

import math
from dataclasses import astuple, dataclass

import networkx as nx

from tierflow.orchestrator.scenario import DeviceSpec, Scenario
from tierflow.placement.cost import Profile, TierSpeeds, device_param_bytes, round_time_s
from tierflow.placement.partition import partition
from tierflow.tiers.session import SplitKey


@dataclass(frozen=True)
class DevicePlan:
    device_id: str
    edge: str
    key: SplitKey
    batch_time_s: float
    round_time_s: float
    device_flops_per_s: float  # the device speed this plan assumed
    observed: Observed | None = None  # every speed this plan assumed


@dataclass(frozen=True)
class Observed:
    """What the orchestrator currently believes a device's tier chain can do (smoothed)."""

    device_flops_per_s: float
    device_bandwidth_bps: float
    edge_flops_per_s: float
    edge_cloud_bandwidth_bps: float

    def smoothed(self, new: Observed, weight: float = 0.5) -> Observed:
        """EWMA in log space: speeds are multiplicative, and one outlier round should not swing a plan."""
        def mix(a: float, b: float) -> float:
            return math.exp((1 - weight) * math.log(a) + weight * math.log(b))

        return Observed(*(mix(a, b) for a, b in zip(astuple(self), astuple(new), strict=True)))


# Raw inputs never leave a device: split learning's premise. Without this pin the planner would
# ship digits' 8x8 images to the cloud whenever they are smaller than the first layer's output.
PRIVATE_LAYERS = 1


@dataclass(frozen=True)
class Shares:
    """How many devices share the servers a device would use: each gets a fair share of their speed.

    The planner plans one device at a time; without this, every device would count on a whole edge
    and a whole cloud to itself, and all would offload to the one cloud the clock then (rightly)
    charges as shared. A fair share is the contention each can expect when all offload."""

    edge: int = 1
    cloud: int = 1


def shares_for(edge_of: dict[str, str | None]) -> dict[str, Shares]:
    per_edge: dict[str | None, int] = {}
    for e in edge_of.values():
        per_edge[e] = per_edge.get(e, 0) + 1
    return {d: Shares(max(1, per_edge[e]), max(1, len(edge_of))) for d, e in edge_of.items()}


def profile_for(scenario: Scenario, device: DeviceSpec, edge_name: str, device_flops_per_s: float | None = None,
                observed: Observed | None = None, shares: Shares = Shares()) -> Profile:
    edge = scenario.edge(edge_name)
    cloud = scenario.cloud.flops_per_s / shares.cloud
    if observed is not None:
        speeds = TierSpeeds(observed.device_flops_per_s, observed.edge_flops_per_s / shares.edge,
                            observed.device_bandwidth_bps, cloud, observed.edge_cloud_bandwidth_bps)
    else:
        speeds = TierSpeeds(device_flops_per_s or device.flops_per_s, edge.flops_per_s / shares.edge,
                            device.bandwidth_mbps * 1e6, cloud, edge.cloud_bandwidth_mbps * 1e6)
    return Profile(speeds, batch_size=scenario.training.batch_size,
                   steps_per_round=scenario.training.local_steps * scenario.aggregation.cloud_every,
                   syncs_per_round=scenario.aggregation.cloud_every,  # the clock charges a sync every period
                   device_memory_bytes=device.memory_mb * 2**20, private_layers=PRIVATE_LAYERS)


def plan_device(scenario: Scenario, graph: nx.DiGraph, device: DeviceSpec, edge_name: str,
                device_flops_per_s: float | None = None, observed: Observed | None = None,
                shares: Shares = Shares()) -> DevicePlan:
    """The exact best split for one device connected to ``edge_name`` (three ordered tiers)."""
    profile = profile_for(scenario, device, edge_name, device_flops_per_s, observed, shares)
    plan = partition(graph, profile)
    # Tiers above the highest one used are left out, so the loss sits with the last layer.
    key = SplitKey.of(plan.assignment, max(plan.assignment.values()) + 1)
    sp = profile.speeds
    assumed = Observed(sp.device_flops_per_s, sp.device_edge_bandwidth_bps, sp.edge_flops_per_s * shares.edge,
                       sp.edge_cloud_bandwidth_bps)  # what was observed, before sharing
    return DevicePlan(device.name, edge_name, key, plan.batch_time_s, round_time_s(graph, plan.assignment, profile),
                      profile.speeds.device_flops_per_s, assumed)


def device_flops_per_step(graph: nx.DiGraph, key: SplitKey, batch_size: int) -> float:
    """Forward plus backward FLOPs the device itself runs for one batch under ``key``."""
    on_device = [n for n, tier in key.tiers if tier == 0 and n in graph]
    return batch_size * sum(graph.nodes[n]["fwd_flops"] + graph.nodes[n]["bwd_flops"] for n in on_device)


def any_drifted(assumed: Observed, now: Observed, threshold: float = 0.1) -> bool:
    """Worth asking the planner again: some speed moved more than ``threshold`` from the plan's."""
    return any(abs(b - a) > threshold * a for a, b in zip(astuple(assumed), astuple(now), strict=True))


MIN_GAIN = 0.05  # a new split must save at least this share of the round to be worth switching to


def switch_pays(scenario: Scenario, graph: nx.DiGraph, device: DeviceSpec, edge_name: str, current: SplitKey,
                new: DevicePlan, observed: Observed, shares: Shares = Shares()) -> bool:
    """Re-planning pays when the new split's predicted round beats the current split's, at the
    speeds now observed, by more than ``MIN_GAIN`` and by more than the switch costs: the device
    fetching its new device-side layers over its link."""
    profile = profile_for(scenario, device, edge_name, observed=observed, shares=shares)
    now = round_time_s(graph, current.assignment(), profile)
    switch_s = 8 * device_param_bytes(graph, new.key.assignment()) / observed.device_bandwidth_bps
    return now - new.round_time_s > max(MIN_GAIN * now, switch_s)


def plan_all(scenario: Scenario, graph: nx.DiGraph, edge_of: dict[str, str]) -> dict[str, DevicePlan]:
    shares = shares_for(edge_of)
    return {d.name: plan_device(scenario, graph, d, edge_of[d.name], shares=shares[d.name]) for d in scenario.devices}
