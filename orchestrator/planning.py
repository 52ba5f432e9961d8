"""The orchestrator's use of the placement engine: every device's split, planned together.

Devices that share an edge (and all of them the cloud) slow each other, and the clock charges a
period as its slowest device or its busiest server (placement/cost.py ``makespan_s``). So the
planner minimises exactly that makespan over every device that can train (placement/makespan.py),
pricing each device with the run's cost model at the resources of the moment.

A re-plan switches only the devices whose switch the new makespan needs, and only when the saving
over the next rounds beats what the switch costs (the moved layers' weights and optimizer state
travel to their new tier: nothing is lost, but the transfer is charged) and beats the current
makespan by ``MIN_GAIN`` (hysteresis: resources that wobble do not make splits flap).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import astuple, dataclass

import numpy as np

from tierflow.orchestrator.clock import CostModel, tier_speeds
from tierflow.orchestrator.resources import ResourceModel
from tierflow.orchestrator.scenario import Scenario
from tierflow.placement.cost import TierSpeeds
from tierflow.placement.makespan import (
    OptionCosts,
    SharedDevices,
    keep_unneeded,
    makespan_of,
    option_costs,
    partition_options,
    plan_makespan,
)
from tierflow.tiers.session import SplitKey

# Raw inputs never leave a device: split learning's premise. Without this pin the planner would
# ship digits' 8x8 images to the cloud whenever they are smaller than the first layer's output.
PRIVATE_LAYERS = 1
MIN_GAIN = 0.05  # a re-plan must save at least this share of the period to be worth its switches
HORIZON_ROUNDS = 5  # a switch must pay for itself within this many rounds (resources move on)


@dataclass(frozen=True)
class DevicePlan:
    device_id: str
    edge: str
    key: SplitKey
    period_s: float  # the device's own predicted period (full server speeds), by the cost model


@dataclass(frozen=True)
class Observed:
    """What the orchestrator believes a device's tier chain can do now (real time: measured, smoothed)."""

    device_flops_per_s: float
    device_bandwidth_bps: float
    edge_flops_per_s: float
    edge_cloud_bandwidth_bps: float

    def smoothed(self, new: Observed, weight: float = 0.5) -> Observed:
        """EWMA in log space: speeds are multiplicative, and one outlier round should not swing a plan."""
        def mix(a: float, b: float) -> float:
            return math.exp((1 - weight) * math.log(a) + weight * math.log(b))

        return Observed(*(mix(a, b) for a, b in zip(astuple(self), astuple(new), strict=True)))

    def speeds(self, cloud_flops_per_s: float) -> TierSpeeds:
        return TierSpeeds(self.device_flops_per_s, self.edge_flops_per_s, self.device_bandwidth_bps,
                          cloud_flops_per_s, self.edge_cloud_bandwidth_bps)


@dataclass(frozen=True)
class Replan:
    """One re-planning decision, as the ``replan`` event reports it."""

    changed: tuple[str, ...]  # devices whose split changes (empty when not adopted)
    before_s: float  # the predicted period makespan with the current splits
    after_s: float  # with the new ones
    switch_s: float  # what the switches add to the next period's makespan
    adopted: bool


class Planner:
    """Adaptive placement for one run: the model's partition options once, then makespan plans."""

    def __init__(self, scenario: Scenario, cost: CostModel, batch_of: Mapping[str, int],
                 keep: Sequence[SplitKey] = ()):
        self.scenario = scenario
        self.cost = cost
        self.batch_of = dict(batch_of)
        names = None
        also = []
        for key in keep:
            assignment = key.assignment()
            names = names or list(cost.cost_graph(1).names)
            also.append([assignment[n] for n in names])
        self.options = partition_options(cost.graph, PRIVATE_LAYERS, also=also)
        self.keys = [SplitKey.of(self.options.assignment(i), max(v) + 1) for i, v in enumerate(self.options.vectors)]
        self.index = {k: i for i, k in enumerate(self.keys)}
        self.memory = {d.name: d.memory_mb * 2**20 for d in scenario.devices}

    def costs(self, devices: Sequence[str], edge_of: Mapping[str, str], speeds: Mapping[str, TierSpeeds]
              ) -> tuple[OptionCosts, np.ndarray]:
        """Every device's period under every option, and each device's edge as an index."""
        edges = sorted({edge_of[d] for d in devices})
        edge_index = {e: i for i, e in enumerate(edges)}
        sp = [speeds[d] for d in devices]
        shared = SharedDevices(
            edge=np.array([edge_index[edge_of[d]] for d in devices], dtype=int),
            device_flops_per_s=np.array([s.device_flops_per_s for s in sp]),
            device_bandwidth_bps=np.array([s.device_edge_bandwidth_bps for s in sp]),
            edge_flops_per_s=np.array([s.edge_flops_per_s for s in sp]),
            edge_cloud_bandwidth_bps=np.array([s.edge_cloud_bandwidth_bps for s in sp]),
            cloud_flops_per_s=self.scenario.cloud.flops_per_s,
            batch_size=np.array([self.batch_of[d] for d in devices], dtype=float),
            memory_bytes=np.array([self.memory[d] for d in devices]),
            steps=self.scenario.training.local_steps,
        )
        return option_costs(self.options, shared), shared.edge

    def _plans(self, devices: Sequence[str], edge_of: Mapping[str, str], costs: OptionCosts,
               choice: np.ndarray) -> dict[str, DevicePlan]:
        return {d: DevicePlan(d, edge_of[d], self.keys[c], float(costs.device_s[i, c]))
                for i, (d, c) in enumerate(zip(devices, choice, strict=True))}

    def plan(self, devices: Sequence[str], edge_of: Mapping[str, str], speeds: Mapping[str, TierSpeeds]
             ) -> dict[str, DevicePlan]:
        """The makespan plan of ``devices`` from scratch (the run's first)."""
        devices = sorted(devices)
        costs, edge = self.costs(devices, edge_of, speeds)
        return self._plans(devices, edge_of, costs, plan_makespan(costs, edge).choice)

    def initial_plan(self) -> dict[str, DevicePlan]:
        """At the resources of time zero, each device on the edge the scenario puts it on."""
        resources = ResourceModel(self.scenario)
        edge_of = {d.name: d.edge for d in self.scenario.devices}
        speeds = {d: tier_speeds(self.scenario, resources, d, e, 0.0) for d, e in edge_of.items()}
        return self.plan(sorted(edge_of), edge_of, speeds)

    def replan(self, devices: Sequence[str], edge_of: Mapping[str, str], speeds: Mapping[str, TierSpeeds],
               current: Mapping[str, SplitKey], rounds_left: int, switch_cost: bool = True
               ) -> tuple[Replan, dict[str, DevicePlan]]:
        """Whether to switch, and to what: only switches the new makespan needs, and only if they pay
        (``switch_cost``: False where a switch moves nothing, as in rings)."""
        devices = sorted(devices)
        if not devices:
            return Replan((), 0.0, 0.0, 0.0, False), {}
        costs, edge = self.costs(devices, edge_of, speeds)
        known = np.array([self.index.get(current[d], -1) for d in devices])
        now = np.where(known >= 0, known, costs.device_s.argmin(axis=1))  # an unknown split must switch
        before = makespan_of(costs, edge, now) if (known >= 0).all() else math.inf
        new = keep_unneeded(costs, edge, plan_makespan(costs, edge, current=now).choice, now)
        new = np.where(known >= 0, new, now)
        after = makespan_of(costs, edge, new)
        changed = [i for i in range(len(devices)) if self.keys[new[i]] != current[devices[i]]]
        extra = np.zeros(len(devices))
        for i in changed if switch_cost else ():
            extra[i] = self.cost.switch_s(current[devices[i]], self.keys[new[i]], speeds[devices[i]],
                                          self.scenario.training.optimizer)
        rows = np.arange(len(devices))
        delayed = max(float((costs.device_s[rows, new] + extra).max()), after)
        switch_s = delayed - after
        periods = self.scenario.aggregation.cloud_every * min(max(rounds_left, 0), HORIZON_ROUNDS)
        must = (known < 0).any()
        adopted = bool(changed) and (must or (before - after > MIN_GAIN * before
                                              and (before - after) * periods > switch_s))
        plans = self._plans(devices, edge_of, costs, new if adopted else now)
        chosen = tuple(devices[i] for i in changed) if adopted else ()
        return Replan(chosen, before, after, switch_s if adopted else 0.0, adopted), plans


def plan_scenario(scenario: Scenario, cost: CostModel, batch_of: Mapping[str, int]) -> dict[str, DevicePlan]:
    """Every device's split for the run's first round (what `tierflow plan` prints, and where a run starts)."""
    return Planner(scenario, cost, batch_of).initial_plan()


def device_flops_per_step(cost: CostModel, key: SplitKey, batch_size: int) -> float:
    """Forward plus backward work the device itself runs for one batch under ``key`` (effective FLOPs)."""
    on_device = [n for n, tier in key.tiers if tier == 0 and n in cost.graph]
    return batch_size * sum(cost.graph.nodes[n]["fwd_flops"] + cost.graph.nodes[n]["bwd_flops"] for n in on_device)
