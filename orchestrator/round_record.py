"""What a round's result is turned into: the ``round_end`` event and the run's byte totals."""

from __future__ import annotations

from collections.abc import Mapping

from tierflow.orchestrator import event_types as ev
from tierflow.orchestrator.clock import CostModel
from tierflow.orchestrator.rounds import RoundResult
from tierflow.orchestrator.run_state import LINKS, RunState, State, zero_bytes
from tierflow.orchestrator.scenario import CLOUD_EDGE, Scenario


def round_end_event(scenario: Scenario, cost: CostModel, state: RunState, result: RoundResult,
                    accuracy: float, loss: float, wall_s: float, duration_s: float, virtual_time_s: float
                    ) -> ev.RoundEnd:
    """The round's figures (and, as a side effect, the bytes added to ``state.bytes_total``)."""
    reports = result.reports
    bytes_round = zero_bytes()
    wall_compute = {"device": 0.0, "edge": 0.0, "cloud": 0.0}  # what the steps took on this host
    samples, finite_samples, loss_sum = 0, 0, 0.0
    for r in reports:
        for k, link in enumerate(LINKS):
            bytes_round[link]["up"] += r.bytes_up[k]
            bytes_round[link]["down"] += r.bytes_down[k]
        # Model sync, as the clock charges it: the device-side layers up and the aggregate back.
        sync = cost.device_param_bytes(state.splits[r.device_id])
        bytes_round["device-edge"]["up"] += sync
        bytes_round["device-edge"]["down"] += sync
        for k, tier in enumerate(wall_compute):
            wall_compute[tier] += r.compute_s[k]
        samples += r.samples
        if r.finite:  # a poisoned device's loss is reported as a failure, not averaged in
            loss_sum += r.loss_sum
            finite_samples += r.samples
    # Each edge that trained sends its aggregate to the cloud and gets the global model back.
    model_bytes = model_nbytes(state.global_state)
    edges_used = len({r.edge for r in reports if r.edge not in (None, CLOUD_EDGE)})
    bytes_round["edge-cloud"]["up"] += model_bytes * edges_used
    bytes_round["edge-cloud"]["down"] += model_bytes * edges_used
    for link in LINKS:
        for direction in ("up", "down"):
            state.bytes_total[link][direction] += bytes_round[link][direction]
    return ev.RoundEnd(
        round=state.round, wall_time_s=wall_s, virtual_time_s=virtual_time_s, duration_s=duration_s,
        accuracy=accuracy, loss=loss, train_loss=loss_sum / max(finite_samples, 1), bytes=bytes_round,
        compute_s=dict(zip(wall_compute, result.compute_s, strict=True)), wall_compute_s=wall_compute,
        devices_per_edge=devices_per_edge(scenario, state.session_at),
        devices_per_ring={r: len(m) for r, m in (result.rings or {}).items()},
        splits={d: state.splits[d].counts() + [0] * (3 - state.splits[d].n_tiers) for d in sorted(state.splits)},
        samples=samples, failures=sum(1 for r in reports if not r.finite) + state.round_failures,
        predicted_s=result.predicted_s, charged_s=duration_s,
        cohort=None if state.cohort is None else len(state.cohort))


def devices_per_edge(scenario: Scenario, session_at: Mapping[str, str | None]) -> dict[str, int]:
    per_edge: dict[str, int] = {e.name: 0 for e in scenario.edges}
    for edge in session_at.values():
        if edge is not None:
            per_edge[edge] = per_edge.get(edge, 0) + 1
    return per_edge


def model_nbytes(model: State) -> int:
    return sum(int(v.nbytes) for v in model.values())
