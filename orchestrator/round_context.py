"""What a round policy may use of the run loop around it, written down as one protocol.

Round policies (orchestrator/rounds.py, orchestrator/rings_round.py) are given the loop as a
``RoundHost`` rather than importing the loop's class: they depend on this list, the loop satisfies
it structurally, and no policy module imports the loop (so there is no import cycle between them).
Every name here is a coupling between a policy and the loop; the list is the place to shrink it.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from tierflow.migration.handover import HandoverDetector
from tierflow.orchestrator.aggregation import AggregationPolicy
from tierflow.orchestrator.clock import CostModel
from tierflow.orchestrator.events import EventLog
from tierflow.orchestrator.handover_policies import HandoverPolicy, MoveResult
from tierflow.orchestrator.planning import DevicePlan
from tierflow.orchestrator.resources import ResourceModel
from tierflow.orchestrator.scenario import DeviceSpec, Scenario
from tierflow.orchestrator.trajectories import TrajectoryRecorder
from tierflow.orchestrator.world import World
from tierflow.placement.cost import Charge
from tierflow.tiers.aggregate import WeightedSum
from tierflow.tiers.hosts import TrainReport
from tierflow.tiers.session import SplitKey

State = dict[str, np.ndarray]


class RoundHost(Protocol):
    # ----- the scenario and its world (read only) -----
    scenario: Scenario
    world: World
    devices: dict[str, DeviceSpec]
    batch_of: dict[str, int]
    host_of: dict[str, int]  # device -> index of its device host
    cost: CostModel
    resources: ResourceModel
    aggregation: AggregationPolicy
    migration_key: bytes
    # ----- Ray actors (handles) -----
    cloud: Any
    edges: dict[str, Any]
    hosts: list[Any]
    receivers: dict[str, str]  # edge -> its migration receiver's endpoint
    lost_hosts: set[int]
    # ----- the run's state, which a policy advances -----
    round: int
    period: int
    virtual_time_s: float
    global_state: State
    splits: dict[str, SplitKey]
    plans: dict[str, DevicePlan]
    edge_of: dict[str, str | None]  # where each device is connected now (None: out of coverage)
    session_at: dict[str, str]  # which edge holds each device's session
    last_pushed: dict[str, State]
    counters: dict[str, float]
    log: EventLog
    mobility: Any
    detector: HandoverDetector
    handover: HandoverPolicy
    trajectories: TrajectoryRecorder  # where every device was at each mobility check (the city map)

    # ----- what the loop does for a policy -----
    def available(self, device_id: str) -> bool: ...

    def run_period(self, virtual_before_s: float) -> tuple[list[TrainReport], dict[str, float]]: ...

    def train_segment(self, steps: dict[str, int], session_ids: dict[str, str] | None = None
                      ) -> tuple[list[TrainReport], dict[str, str]]: ...

    def charges(self, reports: list[TrainReport], extra_s: dict[str, float] | None = None,
                offset_s: float = 0.0) -> list[Charge]: ...

    def predicted_period_s(self, with_pending: bool = True) -> float: ...

    def healthy(self, reports: list[TrainReport]) -> set[str]: ...

    def partial_sums(self, groups: dict[str, list[str]]) -> dict[str, WeightedSum]: ...

    def push(self, state: State, device_ids: list[str]) -> None: ...

    def mobility_time(self, round_elapsed_s: float, period_progress: float) -> float: ...

    def fail_device(self, device_id: str, why: str) -> None: ...

    def note_handover(self, h) -> None: ...

    def note_move(self, device_id: str, src: str, dst: str, result: MoveResult, ring: str | None = None) -> None: ...

    def recover_hosts(self) -> None: ...

    def drop_dead_edges(self, remaining: dict[str, int]) -> set[str]: ...
