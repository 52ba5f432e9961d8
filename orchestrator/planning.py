"""The orchestrator's use of the placement engine: a split per device from its profile, and rings.

Speeds and bandwidths come from the scenario (and, as the run goes, from where each device is
connected); the planner itself is pure (placement/), this module only maps scenario terms to it.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

from orchestrator.scenario import DeviceSpec, Scenario
from placement.cost import Profile, TierSpeeds, round_time_s
from placement.graph import build_layer_graph
from placement.partition import partition
from tiers.models import InputShape, build_model
from tiers.session import SplitKey


@dataclass(frozen=True)
class DevicePlan:
    device_id: str
    edge: str
    key: SplitKey
    batch_time_s: float
    round_time_s: float
    device_flops_per_s: float  # the device speed this plan assumed


def layer_graph(scenario: Scenario, shape: InputShape) -> nx.DiGraph:
    model = build_model(scenario.model.name, shape, seed=scenario.training.seed)
    return build_layer_graph(model, (shape.channels, shape.height, shape.width), batch_size=8)


def profile_for(scenario: Scenario, device: DeviceSpec, edge_name: str, device_flops_per_s: float | None = None
                ) -> Profile:
    edge = scenario.edge(edge_name)
    speeds = TierSpeeds(device_flops_per_s or device.flops_per_s, edge.flops_per_s, device.bandwidth_mbps * 1e6,
                        scenario.cloud.flops_per_s, edge.cloud_bandwidth_mbps * 1e6)
    return Profile(speeds, batch_size=scenario.training.batch_size,
                   steps_per_round=scenario.training.local_steps * scenario.aggregation.cloud_every,
                   device_memory_bytes=device.memory_mb * 2**20)


def plan_device(scenario: Scenario, graph: nx.DiGraph, device: DeviceSpec, edge_name: str,
                device_flops_per_s: float | None = None) -> DevicePlan:
    """The exact best split for one device connected to ``edge_name`` (three ordered tiers)."""
    profile = profile_for(scenario, device, edge_name, device_flops_per_s)
    plan = partition(graph, profile)
    # Tiers above the highest one used are left out, so the loss sits with the last layer.
    key = SplitKey.of(plan.assignment, max(plan.assignment.values()) + 1)
    return DevicePlan(device.name, edge_name, key, plan.batch_time_s, round_time_s(graph, plan.assignment, profile),
                      profile.speeds.device_flops_per_s)


def device_flops_per_step(graph: nx.DiGraph, key: SplitKey, batch_size: int) -> float:
    """Forward plus backward FLOPs the device itself runs for one batch under ``key``."""
    on_device = [n for n, tier in key.tiers if tier == 0 and n in graph]
    return batch_size * sum(graph.nodes[n]["fwd_flops"] + graph.nodes[n]["bwd_flops"] for n in on_device)


DRIFT = 0.25  # re-plan when a measured speed is this far from the one the plan assumed


def drifted(assumed: float, measured: float) -> bool:
    return abs(measured - assumed) > DRIFT * assumed


def plan_all(scenario: Scenario, graph: nx.DiGraph, edge_of: dict[str, str]) -> dict[str, DevicePlan]:
    return {d.name: plan_device(scenario, graph, d, edge_of[d.name]) for d in scenario.devices}
