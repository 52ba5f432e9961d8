"""What every round policy does the same way: train a segment, meet handovers, aggregate, price.

A round policy (orchestrator/rounds.py, orchestrator/rings_round.py) schedules; these are the
steps it schedules. They read and advance the run's state (orchestrator/run_state.py) and the
simulation (orchestrator/simulation.py), and reach the actors only through the fleet.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np

from tierflow.migration.handover import Handover
from tierflow.migration.outcome import MigrationOutcome
from tierflow.orchestrator import event_types as ev
from tierflow.orchestrator.clock import CostModel, PricedPeriod, session_move_s, tier_speed_arrays
from tierflow.orchestrator.cohort import draw_cohort
from tierflow.orchestrator.events import EventLog
from tierflow.orchestrator.fleet import CLOUD, Fleet, SessionMove, StageOpening, TrainJob
from tierflow.orchestrator.handover_policies import HandoverPolicy, MoveResult
from tierflow.orchestrator.run_state import RunState, State
from tierflow.orchestrator.scenario import CLOUD_EDGE, Scenario
from tierflow.orchestrator.simulation import Simulation
from tierflow.orchestrator.world import World
from tierflow.placement.cost import Charge
from tierflow.tiers.aggregate import WeightedSum
from tierflow.tiers.engine import engine_label
from tierflow.tiers.hosts import DeviceSetup
from tierflow.tiers.session import SplitKey
from tierflow.tiers.train_report import TrainReport


class RoundOps:
    def __init__(self, scenario: Scenario, world: World, fleet: Fleet, sim: Simulation, state: RunState,
                 cost: CostModel, handover: HandoverPolicy, batch_of: Mapping[str, int]):
        self.scenario, self.world, self.fleet, self.sim, self.state = scenario, world, fleet, sim, state
        self.cost, self.handover, self.batch_of = cost, handover, batch_of
        self.devices = {d.name: d for d in scenario.devices}
        self.weights = {d.name: float(len(s)) for d, s in zip(scenario.devices, world.shards, strict=True)}
        self.events: EventLog | None = None  # set when the run opens its log
        self.engines_seen: dict[tuple[str, str], str] = {}  # (host, engine label) -> engine

    def emit(self, event: ev.EventRecord) -> None:
        self.events.emit(event)

    def stamp(self) -> dict:
        return {"round": self.state.round, "virtual_time_s": self.sim.virtual_time_s}

    # ----- devices and their hosts -----
    def setups_for(self, host: int) -> list[DeviceSetup]:
        """The devices a host runs, with their data shards (what a restarted host is given again)."""
        sc, ds = self.scenario, self.world.dataset
        return [
            DeviceSetup(d.name, ds.x_train[idx], ds.y_train[idx], sc.training.batch_size,
                        sc.training.seed * 100_003 + i)
            for i, (d, idx) in enumerate(zip(sc.devices, self.world.shards, strict=True))
            if self.fleet.host_of[d.name] == host
        ]

    def opening(self, device_id: str, optimizer_state: dict | None = None) -> StageOpening:
        """A device's stages under its current split, its session on the edge that holds it."""
        return StageOpening(device_id, self.state.splits[device_id], self.state.session_at[device_id],
                            self.weights[device_id], optimizer_state)

    def connected(self, device_id: str) -> bool:
        return self.sim.edge_of[device_id] is not None and self.fleet.is_hosted(device_id)

    def available(self, device_id: str) -> bool:
        """The device can train now and is in the round's cohort."""
        cohort = self.state.cohort
        return self.connected(device_id) and (cohort is None or device_id in cohort)

    def draw_cohort(self, round_: int) -> None:
        """The cohort of ``round_``, among the devices connected now."""
        tr = self.scenario.training
        self.state.cohort = draw_cohort(tr.devices_per_round, tr.seed, round_, filter(self.connected, self.devices))

    def train_segment(self, steps: Mapping[str, int], session_ids: Mapping[str, str] | None = None
                      ) -> tuple[list[TrainReport], dict[str, str]]:
        """Train each listed device for its number of steps, all hosts at once.

        Returns the reports and the devices that failed, with why: a host that died or did not
        answer within ``policy.round_deadline_s``, or a device whose steps were refused (failures
        are data: the others' work counts).
        """
        ids = session_ids or {}
        batch = self.fleet.train(TrainJob(d, n, self.state.session_at[d], ids.get(d)) for d, n in steps.items())
        self.note_engines(batch.reports)
        return batch.reports, batch.failed

    def note_engines(self, reports: list[TrainReport]) -> None:
        """The first time a host trains a split and batch shape here: which engine it chose (a
        capability ring's members always train looped, one after another on the ring's state)."""
        for r in reports:
            if r.steps == 0:
                continue
            host = f"host{self.fleet.host_of[r.device_id]}"
            label = engine_label(self.scenario.model.name, self.state.splits[r.device_id], r.samples // r.steps)
            if (host, label) in self.engines_seen:
                continue
            self.engines_seen[(host, label)] = r.engine
            self.emit(ev.EngineChoice(**self.stamp(), host=host, key=label, engine=r.engine))

    def export_engines(self) -> dict[str, dict[str, str]]:
        """The choices announced so far (host -> label -> engine), for a checkpoint: a resumed run
        neither announces them again nor forgets them in its summary."""
        out: dict[str, dict[str, str]] = {}
        for (host, label), engine in sorted(self.engines_seen.items()):
            out.setdefault(host, {})[label] = engine
        return out

    def import_engines(self, engines: dict[str, dict[str, str]]) -> None:
        self.engines_seen = {(host, label): engine for host, by_label in engines.items()
                             for label, engine in by_label.items()}

    def engine_summary(self) -> dict[str, str]:
        """Per split and batch shape, the engine every host chose ("mixed: ..." where they differ)."""
        by_label: dict[str, dict[str, str]] = {}
        for (host, label), engine in sorted(self.engines_seen.items()):
            by_label.setdefault(label, {})[host] = engine
        return {label: next(iter(set(hosts.values()))) if len(set(hosts.values())) == 1
                else "mixed: " + ", ".join(f"{h}={e}" for h, e in hosts.items())
                for label, hosts in by_label.items()}

    def fail_device(self, device_id: str, why: str) -> None:
        self.state.round_failures += 1
        self.emit(ev.Failure(**self.stamp(), failure_kind="device", entity=device_id, detail=why))

    def recover_hosts(self) -> None:
        """Give a device host that is back (restarted by Ray, or late) its devices again, from the
        model they were last given; a host still gone keeps its devices out of this period."""
        for h in sorted(self.fleet.lost_hosts):
            if not self.fleet.host_answers(h):
                continue
            mine = [d for d, hh in sorted(self.fleet.host_of.items()) if hh == h]
            self.fleet.rejoin_host(h, self.setups_for(h),
                                   {d: (self.state.splits[d], self.state.last_pushed[d]) for d in mine})
            self.emit(ev.Rejoin(**self.stamp(), entity=f"host{h}", devices=mine))

    # ----- a synchronous period -----
    def run_period(self, virtual_before_s: float) -> tuple[list[TrainReport], dict[str, float]]:
        """One period of local steps, in segments between handover checks; returns merged reports."""
        sc, state = self.scenario, self.state
        steps = sc.training.local_steps
        check = sc.mobility.check_every_steps or steps
        self.recover_hosts()
        remaining = {d: steps for d in self.devices}
        dropped: set[str] = set()
        done: dict[str, list[TrainReport]] = {}
        merged_of: dict[str, TrainReport | None] = {}  # merge_reports(done[d]), None while stale
        extra_s, state.pending_extra_s = state.pending_extra_s, {}  # a re-split's transfer opens the period
        elapsed_steps = 0
        while True:
            ready = {d: min(check, n) for d, n in remaining.items()
                     if n > 0 and d not in dropped and self.available(d)}
            if not ready:
                break
            elapsed_steps += max(ready.values())
            reports, failed = self.train_segment(ready)
            for r in reports:
                remaining[r.device_id] -= r.steps
                done.setdefault(r.device_id, []).append(r)
                merged_of[r.device_id] = None  # to merge again (kept in the order of ``done``)
            if failed:
                rehomed = self.drop_dead_edges(remaining)
                for d, why in sorted(failed.items()):
                    self.fail_device(d, why)
                    done.pop(d, None)  # a failed device's partial period is not aggregated
                    merged_of.pop(d, None)
                    if d not in rehomed:
                        dropped.add(d)
                for d in rehomed:
                    done.pop(d, None)  # they start their period over at the new edge
                    merged_of.pop(d, None)
            # Only the devices that trained in this segment merge again: 10,000 merges per segment
            # were the largest part of the driver's round.
            merged_of.update({d: merge_reports(done[d]) for d, m in merged_of.items() if m is None})
            elapsed = virtual_before_s + self.round_clock(list(merged_of.values()), extra_s, virtual_before_s)
            # A restart makes the period longer, but mobility stays inside the period's share of the
            # round: devices re-running steps do so where the period ends. (Unclamped, each restart
            # moved mobility on, which made more handovers and more restarts: the city raced ahead.)
            progress = min(1.0, elapsed_steps / steps)
            now_s = self.sim.mobility_time(state.round, state.period, elapsed, progress)
            moves = self.sim.sense(now_s)
            made = self.migrate_together(moves)
            for h in moves:
                self.on_handover(h, remaining, dropped, extra_s, made)
            self.sim.record(state.round, now_s, moves)
        assert list(merged_of) == list(done)
        return list(merged_of.values()), extra_s

    # ----- handovers: one path for every round policy -----
    def note_handover(self, h: Handover) -> None:
        """A device changed edge (or left coverage): counted, logged, and where it is connected now."""
        self.state.counters.handovers += 1
        self.emit(ev.Handover(**self.stamp(), device=h.device, from_edge=h.from_edge, to_edge=h.to_edge))
        self.sim.edge_of[h.device] = h.to_edge

    def note_move(self, device_id: str, src: str, dst: str, result: MoveResult, ring: str | None = None) -> None:
        """A session moved by the handover policy (a device's own, or ``ring``'s): event and counters."""
        self.emit(ev.Migration(**self.stamp(), device=device_id, from_edge=src, to_edge=dst, policy=self.handover.name,
                               bytes=result.bytes_, wall_duration_s=result.duration_s, ok=result.ok,
                               charged_s=result.virtual_s, ring=ring))
        c = self.state.counters
        if not result.ok:
            c.failed_migrations += 1
            self.emit(ev.Failure(**self.stamp(), failure_kind="migration", entity=dst,
                                 detail=f"{ring or device_id}: {result.error}"))
        elif result.restarted:
            c.restarts += 1
        else:
            c.migrations += 1
            c.migration_bytes += result.bytes_
            c.migration_time_s += result.duration_s

    def migrate_together(self, moves: list[Handover]) -> dict[str, tuple[SessionMove, MigrationOutcome]]:
        """The session migrations one check's handovers call for, made together before the
        handovers are handled (in their order, as before): the moves between a pair of edges then
        travel as one batched transfer, instead of one Ray call and one transfer per device. Only
        the migrate policy's moves between live edges, each device's first; the rest, and any move
        whose source has changed by the time its handover is handled (an edge died), go one by one."""
        if self.handover.name != "migrate" or len(moves) < 2:
            return {}
        state, alive, planned, seen = self.state, set(self.fleet.edges), [], set()
        for h in moves:
            d = h.device
            if d in seen or h.to_edge is None:
                continue
            seen.add(d)
            src = state.session_at.get(d)
            if src != h.to_edge and src in alive and h.to_edge in alive and state.splits[d].n_tiers > 1:
                planned.append(SessionMove(d, src, h.to_edge))
        if len(planned) < 2:
            return {}
        return {m.session_id: (m, out) for m, out in zip(planned, self.fleet.migrate_many(planned), strict=True)}

    def on_handover(self, h: Handover, remaining: dict[str, int], dropped: set[str], extra_s: dict[str, float],
                    made: Mapping[str, tuple[SessionMove, MigrationOutcome]] = {}) -> None:
        d, state = h.device, self.state
        self.note_handover(h)
        if h.to_edge is None:
            if self.scenario.policy.disconnected == "drop":
                dropped.add(d)
            return
        src = state.session_at[d]
        if src == h.to_edge:
            return
        if state.splits[d].n_tiers == 1:  # nothing offloaded: nothing to move
            state.session_at[d] = h.to_edge
            return
        already = made.get(d)
        if already is not None and (already[0].src, already[0].dst) == (src, h.to_edge):
            result = self.migrated(d, src, h.to_edge, already[1])
        else:
            result = self.handover.move(self, d, src, h.to_edge)
        self.note_move(d, src, h.to_edge, result)
        if result.ok:
            extra_s[d] = extra_s.get(d, 0.0) + result.virtual_s
            if result.restarted:
                remaining[d] = self.scenario.training.local_steps
            return
        self.drop_dead_edges(remaining)
        # The source still holds the session: the device keeps training there, and the detector
        # will hand it over again (a retry) if a live edge is still the better one.
        self.sim.edge_of[d] = src
        alive = set(self.fleet.edges)
        self.sim.watch({k: (v if v in alive else None) for k, v in self.sim.edge_of.items()}, alive)

    def migrate_session(self, device_id: str, src: str, dst: str) -> MoveResult:
        """Two-phase handoff: copy, destination verifies and ACKs, re-route, then drop the source copy."""
        return self.migrated(device_id, src, dst, self.fleet.migrate(SessionMove(device_id, src, dst)))

    def migrated(self, device_id: str, src: str, dst: str, out: MigrationOutcome) -> MoveResult:
        """What a finished migration means for the run: the device is served at ``dst`` if it landed."""
        if not out.ok:
            return MoveResult(False, 0, out.duration_s, 0.0, error=out.error)
        self.state.session_at[device_id] = dst
        moved = self.cost.session_bytes(self.state.splits[device_id], 1, self.scenario.training.optimizer)
        return MoveResult(True, out.bytes_, out.duration_s, session_move_s(self.scenario, src, dst, moved))

    def restart_session(self, device_id: str, src: str, dst: str) -> MoveResult:
        """The baseline: drop the session, start the device's period over at ``dst``."""
        t0 = time.perf_counter()
        self.fleet.close_sessions([(src, device_id)])
        self.state.session_at[device_id] = dst
        self.fleet.open([self.opening(device_id)], self.state.last_pushed[device_id])
        return MoveResult(True, 0, time.perf_counter() - t0, 0.0, restarted=True)

    def drop_dead_edges(self, remaining: dict[str, int]) -> set[str]:
        """Forget edges whose actor is gone; their devices re-home to the nearest live edge, their
        sessions restored from the model they were last given (the last aggregation boundary), and
        start their period over. Returns the devices that re-homed."""
        for name in self.fleet.drop_dead_edges():
            self.emit(ev.Failure(**self.stamp(), failure_kind="edge", entity=name, detail="edge actor is gone"))
        alive = set(self.fleet.edges)
        rehomed = set()
        state = self.state
        for d, edge in sorted(state.session_at.items()):
            if edge in alive:
                continue
            new = self.sim.nearest_live_edge(d, alive - {CLOUD_EDGE}) or self.fleet.ensure_cloud_edge()
            state.session_at[d] = self.sim.edge_of[d] = new
            if self.fleet.is_hosted(d):
                self.fleet.open([self.opening(d)], state.last_pushed[d])
            remaining[d] = self.scenario.training.local_steps
            rehomed.add(d)
            self.emit(ev.Rehome(**self.stamp(), device=d, from_edge=edge, to_edge=new))
        if rehomed:
            # A device served by the cloud is out of every live edge's coverage: the detector sees
            # it as unattached and hands it over (a migration from the cloud) once an edge covers it.
            self.sim.watch(self.sim.edge_of, set(self.fleet.edges) - {CLOUD_EDGE})
        return rehomed

    # ----- re-splitting -----
    def restage(self, devices: list[str], keys: Mapping[str, SplitKey]) -> None:
        """Re-split devices: new stages on every tier from the global model, each layer's optimizer
        state carried over from wherever it lived (tiers/session.py optimizer_state)."""
        state = self.state
        places = {d: ["host", *([state.session_at[d]] if state.splits[d].n_tiers >= 2 else []),
                      *([CLOUD] if state.splits[d].n_tiers == 3 else [])] for d in devices}
        carried = self.fleet.optimizer_states(places)
        self.fleet.close_sessions([pair for d in devices for pair in ((state.session_at[d], d), (CLOUD, d))])
        for d in devices:
            state.splits[d] = keys[d]
        self.fleet.open([self.opening(d, carried[d]) for d in devices], state.global_state)

    # ----- aggregation -----
    def partial_sums(self, groups: dict[str, list[str]]) -> dict[str, WeightedSum]:
        return self.fleet.weighted_sums(groups, self.state.session_at)

    def push(self, model: State, device_ids: list[str]) -> None:
        """Give devices a model: their stages on their hosts and their sessions on the servers."""
        state = self.state
        for d in device_ids:
            state.last_pushed[d] = model
        chosen = set(device_ids)
        served: dict[str, list[str]] = {}
        for d, e in state.session_at.items():
            if d in chosen and e in self.fleet.edges and state.splits[d].n_tiers >= 2:
                served.setdefault(e, []).append(d)
        served = {e: served[e] for e in self.fleet.edges if e in served}
        three = [d for d in device_ids if state.splits[d].n_tiers == 3]
        if three:
            served[CLOUD] = three
        self.fleet.load_weights(model, device_ids, served)

    def healthy(self, reports: list[TrainReport]) -> set[str]:
        """Devices whose update may be aggregated; a non-finite one is a failure, logged by id."""
        for r in reports:
            if not r.finite:
                self.emit(ev.Failure(**self.stamp(), failure_kind="poisoned_update", entity=r.device_id,
                                     detail="non-finite loss or weights; update left out of aggregation"))
        return {r.device_id for r in reports if r.finite}

    # ----- the clock -----
    def priced(self, reports: list[TrainReport], extra_s: Mapping[str, float] | None = None,
               offset_s: float = 0.0) -> PricedPeriod:
        """What the cost model charges for the reports' work, every resource as it was at the start of
        the work (``offset_s`` after the round began) and held for that period (orchestrator/resources.py)."""
        worked = [r for r in reports if r.steps > 0]
        return self._price([r.device_id for r in worked], [r.edge for r in worked], [r.steps for r in worked],
                           [r.samples // r.steps for r in worked], self.sim.virtual_time_s + offset_s, extra_s or {},
                           np.array([r.compute_s for r in worked], dtype=np.float64).reshape(len(worked), 3))

    def _price(self, ids: list[str], edges: list[str | None], steps: list[int], batches: list[int], t: float,
               extra_s: Mapping[str, float], measured_compute_s: np.ndarray | None = None) -> PricedPeriod:
        """The devices' periods under their splits at the resources of virtual time ``t``."""
        speeds = tier_speed_arrays(self.scenario, self.sim.resources, ids, edges, t)
        costs = self.cost.periods([self.state.splits[d] for d in ids], steps, batches, speeds, measured_compute_s)
        return PricedPeriod(ids, edges, costs, np.array([extra_s.get(d, 0.0) for d in ids], dtype=np.float64))

    def charges(self, reports: list[TrainReport], extra_s: Mapping[str, float] | None = None,
                offset_s: float = 0.0) -> list[Charge]:
        """:meth:`priced` as one ``Charge`` per device that worked."""
        return self.priced(reports, extra_s, offset_s).charges()

    def round_clock(self, reports: list[TrainReport], extra_s: Mapping[str, float] | None = None,
                    offset_s: float = 0.0) -> float:
        """Virtual seconds the reports' work took: the period's makespan under the cost model."""
        return self.priced(reports, extra_s, offset_s).makespan_s()

    def predicted_period_s(self, with_pending: bool = True) -> float:
        """The period the cost model predicts now for every device that can train: its split, its full
        ``local_steps`` and batch, at the resources of this moment (and, ``with_pending``, the transfers
        a re-split left for the next period). Equal to what the clock charges when nothing unforeseen
        (a handover, a failure, a resource change) happens in the period."""
        state = self.state
        ids = [d for d in self.devices if self.available(d)]
        return self._price(ids, [state.session_at[d] for d in ids], [self.scenario.training.local_steps] * len(ids),
                           [self.batch_of[d] for d in ids], self.sim.virtual_time_s,
                           state.pending_extra_s if with_pending else {}).makespan_s()


def merge_reports(reports: list[TrainReport]) -> TrainReport:
    """One device's segments of a period as one report (the clock and the metrics want totals);
    summed in segment order, one pass (20,000 merges a metro round)."""
    if len(reports) == 1:
        return reports[0]
    steps = samples = correct = 0
    loss = 0.0
    c0 = c1 = c2 = 0.0
    u0 = u1 = d0 = d1 = 0
    finite = True
    for r in reports:
        steps += r.steps
        samples += r.samples
        loss += r.loss_sum
        correct += r.correct
        c0, c1, c2 = c0 + r.compute_s[0], c1 + r.compute_s[1], c2 + r.compute_s[2]
        u0, u1 = u0 + r.bytes_up[0], u1 + r.bytes_up[1]
        d0, d1 = d0 + r.bytes_down[0], d1 + r.bytes_down[1]
        finite = finite and r.finite
    last = reports[-1]
    return TrainReport(last.device_id, last.edge, steps, samples, loss, correct, (c0, c1, c2), (u0, u1), (d0, d1),
                       last.n_tiers, finite)
