"""Where devices are: the scenario's mobility model, and the edge sites that cover them."""

from __future__ import annotations

from tierflow.migration.handover import EdgeSite, HandoverDetector
from tierflow.migration.mobility import RandomWaypoint, StaticMobility, TraceMobility
from tierflow.orchestrator.errors import TierflowError
from tierflow.orchestrator.limits import MIN_AREA_M
from tierflow.orchestrator.scenario import Scenario


class _TraceOverStatic:
    """Devices named in the trace follow it; the others stay where the scenario put them."""

    def __init__(self, trace, static):
        self.trace, self.static = trace, static
        self.ids = static.ids
        where = {d: i for i, d in enumerate(self.ids)}
        self._rows = [(where[d], j) for j, d in enumerate(trace.ids) if d in where]

    def positions(self, t_s: float) -> dict[str, tuple[float, float]]:
        out = self.static.positions(t_s)
        out.update({d: p for d, p in self.trace.positions(t_s).items() if d in out})
        return out

    def positions_array(self, t_s: float):
        xy = self.static.positions_array(t_s)
        if self._rows:
            mine, theirs = zip(*self._rows, strict=True)
            xy[list(mine)] = self.trace.positions_array(t_s)[list(theirs)]
        return xy


def build_mobility(scenario: Scenario):
    spec = scenario.mobility
    start = {d.name: d.position for d in scenario.devices}
    static = StaticMobility(start)
    if spec.model == "static":
        return static
    if spec.model == "trace":
        return _TraceOverStatic(TraceMobility.from_samples(spec.trace_samples), static)  # read with the scenario
    area = spec.area_m
    if area is None:  # the box the edge servers cover
        area = (max(e.position[0] + e.radius_m for e in scenario.edges),
                max(e.position[1] + e.radius_m for e in scenario.edges))
        if min(area) < MIN_AREA_M:
            raise TierflowError(f"{scenario.source}: mobility.area_m: expected two sizes >= {MIN_AREA_M:g} m; the "
                                f"box from (0, 0) the edges cover is {area[0]:g} x {area[1]:g} m (give area_m)")
    return RandomWaypoint(sorted(start), area_m=area, speed_mps=spec.speed_mps, pause_s=spec.pause_s,
                          seed=scenario.training.seed, start=start)


def edge_sites(scenario: Scenario, alive: set[str] | None = None) -> list[EdgeSite]:
    return [EdgeSite(e.name, e.position[0], e.position[1], e.radius_m) for e in scenario.edges
            if alive is None or e.name in alive]


def build_detector(scenario: Scenario, current: dict[str, str | None], alive: set[str] | None = None):
    return HandoverDetector(edge_sites(scenario, alive), scenario.mobility.hysteresis_m, initial=dict(current))
