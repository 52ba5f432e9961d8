"""What a round policy is given: one typed context per round, built by the run loop.

Round policies (orchestrator/rounds.py, orchestrator/rings_round.py) and placements
(orchestrator/placements.py) depend on this module, never on the loop: the loop builds a
``RoundContext`` and calls ``policy.run_round(ctx)``; the policy schedules the round with the shared
steps in ``ctx.ops``, reaches actors only through ``ctx.fleet``, and leaves the new global model in
``ctx.state``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from tierflow.orchestrator.aggregation import AggregationPolicy
from tierflow.orchestrator.events import EventLog
from tierflow.orchestrator.fleet import Fleet
from tierflow.orchestrator.round_ops import RoundOps
from tierflow.orchestrator.run_state import RunState
from tierflow.orchestrator.scenario import Scenario
from tierflow.orchestrator.simulation import Simulation
from tierflow.orchestrator.world import World
from tierflow.tiers.session import SplitKey
from tierflow.tiers.train_report import TrainReport


class Placement(Protocol):
    """Where each device's layers run (orchestrator/placements.py has the two)."""

    name: str

    def initial_splits(self) -> dict[str, SplitKey]: ...

    def own_split(self, device_id: str) -> SplitKey:
        """The split the device would train alone (a ring trains one split for all its members)."""

    def after_round(self, ctx: RoundContext, reports: Sequence[TrainReport]) -> None:
        """Called after each round's event: re-plan, if this placement does."""

    def export_state(self) -> dict: ...

    def import_state(self, state: Mapping, splits: Mapping[str, SplitKey]) -> None: ...


@dataclass(frozen=True)
class RoundContext:
    round: int
    scenario: Scenario
    world: World
    fleet: Fleet  # the actors
    sim: Simulation  # the virtual clock, resources and mobility
    state: RunState  # the global model, splits, sessions, counters: what the policy advances
    ops: RoundOps  # the steps every round policy shares
    placement: Placement
    aggregation: AggregationPolicy
    events: EventLog
