"""Where each device's layers run (``policy.placement``), chosen by name like the aggregation.

``fixed``: every device keeps the split the scenario gives it. ``adaptive`` (FedAdapt's idea, with
an exact cost model and a makespan planner, orchestrator/planning.py): every device is planned at
the start, and after each round (``policy.replan``) planned again at the resources of now; the
devices whose switch the new makespan needs are switched when the saving pays for the switch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import astuple

from tierflow.orchestrator import event_types as ev
from tierflow.orchestrator.clock import CostModel, tier_speeds
from tierflow.orchestrator.planning import DevicePlan, Observed, Planner, device_flops_per_step
from tierflow.orchestrator.round_context import Placement, RoundContext
from tierflow.orchestrator.run_state import split_from_json, split_to_json
from tierflow.orchestrator.scenario import Scenario
from tierflow.orchestrator.world import World
from tierflow.placement.cost import TierSpeeds
from tierflow.tiers.session import SplitKey
from tierflow.tiers.train_report import TrainReport


class FixedPlacement:
    name = "fixed"

    def __init__(self, scenario: Scenario, world: World, cost: CostModel, batch_of: Mapping[str, int]):
        self.splits = dict(world.splits)

    def initial_splits(self) -> dict[str, SplitKey]:
        return dict(self.splits)

    def own_split(self, device_id: str) -> SplitKey:
        return self.splits[device_id]

    def after_round(self, ctx: RoundContext, reports: Sequence[TrainReport]) -> None:
        pass

    def export_state(self) -> dict:
        return {"plans": {}, "switch_from": {}, "observed": {}, "measured_flops": {}}

    def import_state(self, state: Mapping, splits: Mapping[str, SplitKey]) -> None:
        pass


class AdaptivePlacement:
    name = "adaptive"

    def __init__(self, scenario: Scenario, world: World, cost: CostModel, batch_of: Mapping[str, int]):
        self.scenario, self.cost, self.batch_of = scenario, cost, batch_of
        self.planner = Planner(scenario, cost, batch_of)
        self.plans: dict[str, DevicePlan] = self.planner.initial_plan()
        self.switch_from: dict[str, SplitKey] = {}  # the split a device left at its last switch
        self.observed: dict[str, tuple[str, Observed]] = {}  # device -> (edge, what it can do), per round
        self.measured_flops: dict[str, float] = {}  # real time only: each device's FLOP/s, smoothed

    def initial_splits(self) -> dict[str, SplitKey]:
        return {d: p.key for d, p in self.plans.items()}

    def own_split(self, device_id: str) -> SplitKey:
        return self.plans[device_id].key

    def after_round(self, ctx: RoundContext, reports: Sequence[TrainReport]) -> None:
        if self.scenario.policy.replan:
            self.measure_speeds(ctx, reports)
            self.replan(ctx)

    def measure_speeds(self, ctx: RoundContext, reports: Sequence[TrainReport]) -> None:
        """Real time only: each device's FLOP/s as measured this round, smoothed (EWMA, 1/2).

        In emulated time a device's speed is its profile by construction, so there is nothing to
        measure; there re-planning follows handovers (and the resource traces of the scenario).
        """
        if ctx.sim.time_mode.exact:
            return
        for r in reports:
            flops = device_flops_per_step(self.cost, ctx.state.splits[r.device_id], self.batch_of[r.device_id])
            if flops <= 0 or r.compute_s[0] <= 0:
                continue
            measured = flops * r.steps / r.compute_s[0]
            old = self.measured_flops.get(r.device_id)
            self.measured_flops[r.device_id] = measured if old is None else 0.5 * (old + measured)

    def observe(self, ctx: RoundContext) -> None:
        """Each round: every device's speeds and links as observed now.

        In emulated time they are exactly the scenario's resources at the current virtual time
        (traces, random processes); in real time the device's FLOP/s is what it measured
        (measure_speeds), smoothed (EWMA in log space), and a device that changed edge starts its
        edge-side figures afresh.
        """
        t, res, exact = ctx.sim.virtual_time_s, ctx.sim.resources, ctx.sim.time_mode.exact
        for d in ctx.ops.devices:
            edge = ctx.state.session_at[d]
            flops = None if exact else self.measured_flops.get(d)
            now = Observed(flops or res.device_flops_per_s(d, t), res.device_bandwidth_bps(d, t),
                           res.edge_flops_per_s(edge, t), res.edge_cloud_bandwidth_bps(edge, t))
            old = self.observed.get(d)
            # Emulated time knows the resources exactly; smoothing is for measured (noisy) figures.
            self.observed[d] = (edge, now if exact or old is None or old[0] != edge else old[1].smoothed(now))

    def speeds_now(self, ctx: RoundContext, device_id: str) -> TierSpeeds:
        """The tier chain the planner prices a device with: exact resources in emulated time, the
        measured (smoothed) figures in real time."""
        if ctx.sim.time_mode.exact:
            return tier_speeds(self.scenario, ctx.sim.resources, device_id, ctx.state.session_at[device_id],
                               ctx.sim.virtual_time_s)
        return self.observed[device_id][1].speeds(self.scenario.cloud.flops_per_s)

    def replan(self, ctx: RoundContext) -> None:
        """Plan every connected device again at the resources of now, and switch the devices whose
        switch the new makespan needs when the saving pays for the switch.

        A switched device's new stages start from the global model it just received, and the
        optimizer state of every layer travels with the layer to its new tier; the transfer is
        charged to the device in its next period.
        """
        sc, state = self.scenario, ctx.state
        self.observe(ctx)
        devices = [d for d in ctx.ops.devices if ctx.ops.available(d)]
        speeds = {d: self.speeds_now(ctx, d) for d in devices}
        rings = sc.policy.rings != "off"
        decision, plans = self.planner.replan(devices, state.session_at, speeds, state.splits,
                                              sc.training.rounds - ctx.round, switch_cost=not rings)
        self.plans.update(plans)
        if decision.adopted:
            changed = list(decision.changed)
            for d in changed:
                self.switch_from[d] = state.splits[d]
            ctx.ops.restage(changed, {d: plans[d].key for d in changed})
            if not rings:  # a ring re-opens its sessions each round from the global model: nothing moves
                opt = sc.training.optimizer
                for d in changed:
                    state.pending_extra_s[d] = self.cost.switch_s(self.switch_from[d], state.splits[d], speeds[d], opt)
            state.counters.switches += len(changed)
            state.counters.replan_saved_s += (decision.before_s - decision.after_s) * sc.aggregation.cloud_every
        ctx.events.emit(ev.Replan(round=ctx.round, virtual_time_s=ctx.sim.virtual_time_s,
                                  changed=len(decision.changed), adopted=decision.adopted,
                                  predicted_before_s=decision.before_s, predicted_after_s=decision.after_s,
                                  switch_s=decision.switch_s))

    def export_state(self) -> dict:
        return {"plans": {d: {"edge": p.edge, "period_s": p.period_s} for d, p in self.plans.items()},
                "switch_from": {d: split_to_json(k) for d, k in self.switch_from.items()},
                "observed": {d: [edge, list(astuple(o))] for d, (edge, o) in self.observed.items()},
                "measured_flops": dict(self.measured_flops)}

    def import_state(self, state: Mapping, splits: Mapping[str, SplitKey]) -> None:
        self.plans = {d: DevicePlan(d, p["edge"], splits[d], float(p["period_s"])) for d, p in state["plans"].items()}
        self.switch_from = {d: split_from_json(v) for d, v in state["switch_from"].items()}
        self.observed = {d: (edge, Observed(*o)) for d, (edge, o) in state["observed"].items()}
        self.measured_flops = {d: float(v) for d, v in state["measured_flops"].items()}


PLACEMENTS: dict[str, type[Placement]] = {"fixed": FixedPlacement, "adaptive": AdaptivePlacement}
