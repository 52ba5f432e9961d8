"""Round policies: how one round's training and aggregation are scheduled (chosen by the scenario).

A round policy drives the tier actors through one round (one cloud aggregation) and returns what
was trained and how long the round took in virtual time; the run loop around it (evaluation,
events, re-planning, checkpoints) does not know which policy it runs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from tierflow.orchestrator.round_context import RoundContext
from tierflow.placement.cost import Charge
from tierflow.tiers.train_report import TrainReport


@dataclass(frozen=True)
class RoundResult:
    reports: list[TrainReport]  # one merged report per device and period (or ring hop)
    virtual_s: float  # the round's duration in emulated time, as the clock charged it
    predicted_s: float  # the same, as the cost model predicted it when the round began
    rings: dict[str, list[str]] | None = None  # ring id -> members, when the policy trains in rings
    compute_s: tuple[float, float, float] = (0.0, 0.0, 0.0)  # charged compute per tier, summed over devices


class RoundPolicy(Protocol):
    name: str

    def run_round(self, ctx: RoundContext) -> RoundResult:
        """Train and aggregate one round; leave the new global model in ``ctx.state.global_state``."""

    def export_state(self) -> dict:
        """What the policy carries from round to round, as JSON (for checkpoints)."""

    def import_state(self, state: dict) -> None: ...


class SyncRounds:
    """HierFAVG / FedAvg: every device trains ``local_steps`` per period in parallel; the round
    waits for the slowest device (or busiest edge); edges aggregate after each period and the
    cloud after ``cloud_every`` periods."""

    name = "sync"

    def export_state(self) -> dict:
        return {}

    def import_state(self, state: dict) -> None:
        pass

    def run_round(self, ctx: RoundContext) -> RoundResult:
        sc, ops, state = ctx.scenario, ctx.ops, ctx.state
        reports: list[TrainReport] = []
        virtual_round = predicted = 0.0
        compute = (0.0, 0.0, 0.0)
        first = ops.predicted_period_s()
        # Without a re-split's pending transfers the two predictions are one computation.
        later = ops.predicted_period_s(with_pending=False) if state.pending_extra_s else first
        for period in range(sc.aggregation.cloud_every):
            predicted += first if period == 0 else later
            state.period = period
            period_reports, extra_s = ops.run_period(virtual_round)
            reports.extend(period_reports)
            priced = ops.priced(period_reports, extra_s, virtual_round)
            virtual_round += priced.makespan_s()
            compute = priced.add_compute(compute)
            healthy = ops.healthy(period_reports)
            groups = ctx.aggregation.groups({d: e for d, e in state.session_at.items() if d in healthy})
            sums = ops.partial_sums(groups)
            if period < sc.aggregation.cloud_every - 1:
                for edge, model in ctx.aggregation.edge_models(sums).items():
                    ops.push(model, groups[edge])
            else:
                state.global_state = ctx.aggregation.global_model(sums)
                ops.push(state.global_state, sorted(ctx.sim.edge_of))
        return RoundResult(reports, virtual_round, predicted, compute_s=compute)


def add_compute(total: tuple[float, float, float], charges: Iterable[Charge]) -> tuple[float, float, float]:
    """``total`` plus the charges' compute, tier by tier (what round_end reports as ``compute_s``)."""
    d, e, c = total
    for ch in charges:
        d, e, c = d + ch.cost.compute_s[0], e + ch.cost.compute_s[1], c + ch.cost.compute_s[2]
    return d, e, c
