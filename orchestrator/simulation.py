"""What a run emulates beside the training: the virtual clock, the resources, where devices are.

The loop advances it (``advance`` after each round); round policies read the clock and the
resources and ask it where devices are (``sense``). Everything here is a function of the scenario
and the virtual time, so two identical runs see the same world; nothing here talks to an actor.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from tierflow.migration.handover import Handover, nearest_covering
from tierflow.orchestrator.mobility import build_detector, build_mobility, edge_sites
from tierflow.orchestrator.resources import ResourceModel
from tierflow.orchestrator.run_checkpoint import RunCheckpoint
from tierflow.orchestrator.scenario import Scenario
from tierflow.orchestrator.time_modes import TIME_MODES
from tierflow.orchestrator.trajectories import TrajectoryRecorder


class Simulation:
    def __init__(self, scenario: Scenario):
        self.scenario = scenario
        self.time_mode = TIME_MODES[scenario.execution.time]()
        self.resources = ResourceModel(scenario)  # reads nothing: the trace was loaded with the scenario
        self.mobility = build_mobility(scenario)  # reads trace files: fails before Ray starts
        # Where each device is connected now (None: out of coverage).
        self.edge_of: dict[str, str | None] = {d.name: d.edge for d in scenario.devices}
        self.detector = build_detector(scenario, self.edge_of)
        self.trajectories = TrajectoryRecorder.for_scenario(scenario, self.mobility, self.edge_of)  # the city map
        self.virtual_time_s = 0.0
        self.mobility_t = 0.0  # the latest time mobility was sensed at
        self._positions = None  # [N, 2] in the order of mobility.ids, from the last sense
        # The trajectory recorder lists devices in the scenario's order; mobility in its own.
        where = {d: i for i, d in enumerate(self.mobility.ids)}
        self._to_recorder = np.array([where[d] for d in self.trajectories.devices], dtype=np.intp)

    def advance(self, seconds: float) -> None:
        self.virtual_time_s += seconds

    def mobility_time(self, round_: int, period: int, round_elapsed_s: float, period_progress: float) -> float:
        """Mobility runs on the run's clock, or on a fixed time per round if the scenario sets one."""
        per_round = self.scenario.mobility.round_duration_s
        if per_round is None:
            t = self.virtual_time_s + round_elapsed_s
        else:
            periods = self.scenario.aggregation.cloud_every
            t = per_round * (round_ - 1 + (period + period_progress) / periods)
        self.mobility_t = max(self.mobility_t, t)  # time never runs backwards, even after a long period
        return self.mobility_t

    def sense(self, now_s: float) -> list[Handover]:
        """Where every device is at ``now_s``, and who should change edge (the detector's decisions)."""
        self._positions = self.mobility.positions_array(now_s)
        return self.detector.update_array(now_s, self.mobility.ids, self._positions)

    def record(self, round_: int, now_s: float, moves: list[Handover]) -> None:
        """The last ``sense`` on the city map, with the edges the moves left devices on."""
        self.trajectories.record_array(round_, now_s, self._positions[self._to_recorder], self.edge_of, moves)

    def nearest_live_edge(self, device_id: str, alive: set[str]) -> str | None:
        xy = self.mobility.positions_array(self.mobility_t)[self.mobility.ids.index(device_id)]
        return nearest_covering(edge_sites(self.scenario, alive), (float(xy[0]), float(xy[1])))

    def watch(self, attached: Mapping[str, str | None], alive: set[str]) -> None:
        """Detect handovers afresh among the ``alive`` edges, each device seen as ``attached``."""
        self.detector = build_detector(self.scenario, dict(attached), alive)

    # ----- checkpoints -----
    def import_state(self, saved: RunCheckpoint, alive: set[str]) -> None:
        self.virtual_time_s, self.mobility_t = float(saved.virtual_time_s), float(saved.mobility_t)
        self.edge_of = dict(saved.edge_of)
        self.watch(self.edge_of, alive)
        self.detector.current = dict(saved.detector)
