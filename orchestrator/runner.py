"""The run loop: start the fleet, then per round build a context, run the round policy, evaluate, record.

One round is one cloud aggregation: ``cloud_every`` periods of ``local_steps`` steps per device,
with an edge aggregation after each period (HierFAVG). The loop decides nothing about a round
itself: the round policy (``policy.rings``) schedules it, the placement (``policy.placement``)
re-plans after it, the time mode (``execution.time``) says how far the clock moves, and the fleet
(orchestrator/fleet.py) is the only way to the actors (conventions: controller and replicas).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from tierflow.orchestrator import event_types as ev
from tierflow.orchestrator.aggregation import AGGREGATIONS
from tierflow.orchestrator.checkpoint import Checkpoint, load_checkpoint, save_checkpoint, scenario_fingerprint
from tierflow.orchestrator.clock import build_cost_model
from tierflow.orchestrator.cluster import ensure_ray
from tierflow.orchestrator.errors import TierflowError
from tierflow.orchestrator.events import EventLog
from tierflow.orchestrator.fleet import ActorsSnapshot, Fleet
from tierflow.orchestrator.handover_policies import HANDOVER_POLICIES
from tierflow.orchestrator.model_files import write_final_model
from tierflow.orchestrator.placements import PLACEMENTS
from tierflow.orchestrator.profiles import PROFILE_FILE, profile_digest, write_profile
from tierflow.orchestrator.refused import RefusalReporter
from tierflow.orchestrator.round_context import RoundContext
from tierflow.orchestrator.round_ops import RoundOps
from tierflow.orchestrator.round_policies import round_policy_for
from tierflow.orchestrator.round_record import round_end_event
from tierflow.orchestrator.run_checkpoint import RunCheckpoint
from tierflow.orchestrator.run_dir import EVENTS, EventsDigest, claim_run_dir
from tierflow.orchestrator.run_state import RunState
from tierflow.orchestrator.scenario import CLOUD_EDGE, Scenario
from tierflow.orchestrator.simulation import Simulation
from tierflow.orchestrator.startup import StartupTimes
from tierflow.orchestrator.world import World, build_world
from tierflow.placement.profile import LayerProfile
from tierflow.tiers.memory import peak_rss_bytes, relaxed_gc
from tierflow.tiers.models import build_model


@dataclass(frozen=True)
class RunOptions:
    out_dir: Path
    address: str | None = None
    progress: bool = True
    metrics_addr: str | None = None
    event_sinks: tuple = ()  # extra callables that receive every event (tests, embedding programs)
    resume: bool = False  # continue from out_dir's last round-boundary checkpoint
    fresh: bool = False  # out_dir may hold an earlier run: delete it and start over (else that is an error)
    profile: LayerProfile | None = None  # the layer profile to charge (a comparison's); None: profile_path
    profile_path: str | None = None  # a layer profile file; None: this host's cached profile (timed if missing)


class Orchestrator:
    def __init__(self, scenario: Scenario, options: RunOptions, fleet_class: type[Fleet] = Fleet):
        self.startup = StartupTimes()  # summary.json's "startup": where the wait before round 1 went
        self.startup.begin()
        self.scenario = scenario
        self.options = options
        self.world: World = build_world(scenario)
        self.sim = Simulation(scenario)  # reads the traces: a bad one fails before Ray starts
        self.aggregation = AGGREGATIONS[scenario.aggregation.schedule]()
        self.round_policy = round_policy_for(scenario.policy.rings)
        # One cost model prices the plan and charges the clock (orchestrator/clock.py).
        self.cost, self.profile = build_cost_model(scenario, self.world.dataset.shape, options.profile,
                                                   options.profile_path)
        batch_of = self.world.batch_sizes()
        self.placement = PLACEMENTS[scenario.policy.placement](scenario, self.world, self.cost, batch_of)
        n_hosts = min(scenario.execution.device_hosts, len(scenario.devices))
        host_of = {d.name: i % n_hosts for i, d in enumerate(scenario.devices)}  # devices dealt to hosts
        self.fleet = fleet_class(scenario, self.world.dataset.shape, host_of)
        initial = dict(self.world.initial_state)
        self.state = RunState(initial, self.placement.initial_splits(), {d.name: d.edge for d in scenario.devices},
                              {d.name: initial for d in scenario.devices})
        self.ops = RoundOps(scenario, self.world, self.fleet, self.sim, self.state, self.cost,
                            HANDOVER_POLICIES[scenario.policy.handover](), batch_of)
        self.eval_model = build_model(scenario.model.name, self.world.dataset.shape)
        self.refusals = RefusalReporter()  # what the actors' zmq ports refused, to the metrics each round
        self.wall_before_s = 0.0  # wall seconds run before a resume
        self.resume_from: Checkpoint | None = None
        self.startup.lap("world_s")

    def start_fleet(self) -> None:
        self.fleet.start([self.ops.setups_for(h) for h in range(self.fleet.n_hosts)])
        self.startup.lap("actors_s")
        self.fleet.open([self.ops.opening(d) for d in self.ops.devices], self.state.global_state)
        self.actor_nodes = self.fleet.actor_nodes()

    def context(self) -> RoundContext:
        return RoundContext(self.state.round, self.scenario, self.world, self.fleet, self.sim, self.state,
                            self.ops, self.placement, self.aggregation, self.log)

    # ----- checkpoints: an orchestrator that dies loses no completed round -----
    def save_checkpoint(self, log: EventLog, wall_s: float) -> None:
        """Everything the next round depends on, taken at the round boundary."""
        self.sim.trajectories.save(self.options.out_dir)  # not needed to resume; kept so the map survives one
        snapshot = self.fleet.snapshot()
        log.flush()
        events_bytes, events_sha256 = self.events_digest.advance()
        st, sim = self.state, self.sim
        doc = RunCheckpoint(
            round=st.round, scenario_fingerprint=scenario_fingerprint(self.scenario),
            scenario_path=str(Path(self.scenario.source).resolve()),
            events_bytes=events_bytes, events_sha256=events_sha256, wall_time_s=wall_s,
            virtual_time_s=sim.virtual_time_s, mobility_t=sim.mobility_t, edge_of=dict(sim.edge_of),
            detector=dict(sim.detector.current),
            counters=st.counters, bytes_total=st.bytes_total, time_to_target=st.time_to_target,
            session_at=st.session_at, splits=st.splits, pending_extra_s=st.pending_extra_s,
            edges=list(self.fleet.edges), lost_hosts=sorted(self.fleet.lost_hosts),
            **self.placement.export_state(),
            profile_digest=profile_digest(self.profile), round_policy=self.round_policy.export_state(),
            cohort=None if st.cohort is None else sorted(st.cohort), engines=self.ops.export_engines())
        save_checkpoint(self.options.out_dir,
                        Checkpoint(doc.to_json(), st.global_state, snapshot.devices, snapshot.sessions))

    def restore(self, ckpt: Checkpoint) -> None:
        """Put the run and every actor back in the state the checkpoint recorded."""
        doc, st = RunCheckpoint.from_json(ckpt.state), self.state
        if doc.profile_digest != profile_digest(self.profile):
            raise TierflowError(f"{self.options.out_dir}: the layer profile differs from the one the interrupted run "
                                f"charged; resume with --profile {self.options.out_dir / PROFILE_FILE}")
        st.round = doc.round
        self.wall_before_s = float(doc.wall_time_s)
        st.counters, st.bytes_total, st.time_to_target = doc.counters, doc.bytes_total, doc.time_to_target
        st.global_state = dict(ckpt.global_model)
        st.last_pushed = dict.fromkeys(self.ops.devices, st.global_state)
        st.splits, st.session_at = dict(doc.splits), dict(doc.session_at)
        st.pending_extra_s = {d: float(v) for d, v in doc.pending_extra_s.items()}
        st.cohort = None if doc.cohort is None else frozenset(doc.cohort)
        self.ops.import_engines(doc.engines)
        self.placement.import_state(ckpt.state, st.splits)
        self.round_policy.import_state(doc.round_policy)
        self.sim.trajectories.resume(self.options.out_dir, doc.round)
        alive = set(doc.edges)
        if CLOUD_EDGE in alive:
            self.fleet.ensure_cloud_edge()
        for name in list(self.fleet.edges):
            if name not in alive:
                self.fleet.kill_edge(name)
        self.sim.import_state(doc, alive - {CLOUD_EDGE})
        missing = {d: st.splits[d] for d in self.ops.devices if d not in ckpt.devices}
        self.fleet.restore(ActorsSnapshot(ckpt.devices, ckpt.sessions), missing, st.global_state)

    def evaluate(self) -> tuple[float, float]:
        self.eval_model.load_state_dict({k: torch.from_numpy(v) for k, v in self.state.global_state.items()})
        self.eval_model.eval()
        ds = self.world.dataset
        with torch.no_grad():
            logits = self.eval_model(torch.from_numpy(ds.x_test))
            target = torch.from_numpy(ds.y_test)
            loss = float(F.cross_entropy(logits, target))
            acc = float((logits.argmax(1) == target).float().mean())
        return acc, loss

    # ----- the run -----
    def run(self) -> dict:
        ensure_ray(self.options.address)  # a refused connection fails before the run directory exists
        self.startup.lap("ray_s")
        out = self.options.out_dir
        events_path = out / EVENTS
        claim_run_dir(out, self.options.resume, self.options.fresh)  # one run per directory, never mixed
        self.resume_from = None
        if self.options.resume:  # checked before anything is written
            self.resume_from = load_checkpoint(out)
            state = self.resume_from.state
            if state["scenario_fingerprint"] != scenario_fingerprint(self.scenario):
                raise TierflowError(f"{out}: the checkpoint was written by a different scenario than "
                                    f"{self.scenario.source} as it is now; resume needs the same one")
            # Events of the round the crash interrupted are dropped: that round runs again.
            self.events_digest = EventsDigest.continuing(events_path, state["events_bytes"], state["events_sha256"])
        out.mkdir(parents=True, exist_ok=True)
        exporter = None
        sinks = list(self.options.event_sinks)
        if self.options.metrics_addr:
            from tierflow.orchestrator.metrics import MetricsExporter

            exporter = MetricsExporter(self.options.metrics_addr).start()
            sinks.append(exporter.observe)
        if self.profile is not None:
            write_profile(out, self.profile)  # the figures this run charges: reusable with --profile
        if not self.options.resume:
            events_path.write_text("")
            self.events_digest = EventsDigest(events_path)
        log = EventLog(events_path, sinks)
        try:
            with relaxed_gc():  # the driver holds every device's state and a round's reports
                return self._run(log)
        finally:
            log.close()
            if exporter is not None:
                # Keep serving briefly so a scraper that has been watching sees the final values.
                exporter.stop(wait_for_scrape_s=10.0)

    def _run(self, log: EventLog) -> dict:
        sc, st, sim = self.scenario, self.state, self.sim
        out = self.options.out_dir
        t_start = time.perf_counter()
        self.start_fleet()
        self.log = self.ops.events = log
        first = 1
        if self.resume_from is not None:
            self.restore(self.resume_from)
            first = self.resume_from.round + 1
            log.emit(ev.RunResumed(round=self.resume_from.round, wall_time_s=self.wall_before_s,
                                   virtual_time_s=sim.virtual_time_s))
        else:
            log.emit(ev.RunStart(wall_time_s=0.0, virtual_time_s=0.0, time_mode=sc.execution.time, scenario=sc.name,
                                 devices=len(sc.devices), edges=[e.name for e in sc.edges], policy=self.policy_name()))
        if self.resume_from is None:
            self.ops.draw_cohort(first)
        t_start -= self.wall_before_s  # wall times in events count the interrupted part too
        self.startup.lap("open_s")
        accuracy, loss = self.evaluate()
        self.startup.lap("first_eval_s")
        t_loop = time.perf_counter()
        bar = tqdm(total=sc.training.rounds, initial=first - 1, desc=sc.name, unit="round",
                   disable=not self.options.progress)
        wall_prev = time.perf_counter()
        for rnd in range(first, sc.training.rounds + 1):
            st.round, st.round_failures = rnd, 0
            ctx = self.context()
            result = self.round_policy.run_round(ctx)
            accuracy, loss = self.evaluate()
            now = time.perf_counter()
            wall_round, wall_prev = now - wall_prev, now
            round_s = sim.time_mode.round_s(result.virtual_s, wall_round)
            sim.advance(round_s)
            event = round_end_event(sc, self.cost, st, result, accuracy, loss, now - t_start, round_s,
                                    sim.virtual_time_s)
            log.emit(event)
            self.refusals.report(log.emit, rnd, sim.virtual_time_s,
                                 self.fleet.refused_counts(self.refusals.timeout_s))
            self.ops.draw_cohort(rnd + 1)  # before re-planning, which plans the next round's cohort
            self.placement.after_round(ctx, result.reports)  # after the event, which reports the splits trained
            if st.time_to_target is None and accuracy >= sc.training.target_accuracy:
                st.time_to_target = {"virtual_time_s": sim.virtual_time_s, "wall_time_s": now - t_start, "round": rnd}
            bar.set_postfix(loss=f"{loss:.3f}", acc=f"{accuracy:.3f}", train_loss=f"{event.train_loss:.3f}")
            if rnd % sc.checkpoints.every_rounds == 0 or rnd == sc.training.rounds:
                self.save_checkpoint(log, time.perf_counter() - t_start)
            bar.update(1)
        bar.close()
        loop_s = time.perf_counter() - t_loop
        wall = time.perf_counter() - t_start
        summary = self.summary(accuracy, loss, wall, loop_s)
        summary["peak_rss_mb"] = peak_memory_mb(self.fleet.peak_rss_bytes(timeout_s=10.0))
        log.emit(ev.RunEnd(wall_time_s=wall, virtual_time_s=sim.virtual_time_s, final_accuracy=accuracy,
                           rounds=sc.training.rounds))
        write_final_model(out, st.global_state)  # model.safetensors (no pickle) and model.pt
        sim.trajectories.save(out)
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        self.fleet.stop()
        return summary

    def summary(self, accuracy: float, loss: float, wall_s: float, loop_s: float) -> dict:
        sc, st = self.scenario, self.state
        c = st.counters
        return {
            "scenario": sc.name,
            "final_accuracy": accuracy,
            "final_loss": loss,
            "rounds": sc.training.rounds,
            "wall_time_s": wall_s,
            "round_loop_s": loop_s,
            "startup": self.startup.to_json(),
            "virtual_time_s": self.sim.virtual_time_s,
            "time_mode": sc.execution.time,
            "target_accuracy": sc.training.target_accuracy,
            "time_to_target": st.time_to_target,
            "resumed_from_round": None if self.resume_from is None else self.resume_from.round,
            "bytes_up": {link: v["up"] for link, v in st.bytes_total.items()},
            "bytes_down": {link: v["down"] for link, v in st.bytes_total.items()},
            "devices": len(sc.devices),
            "edges": len(sc.edges),
            "policy": self.policy_name(),
            "actor_nodes": self.actor_nodes,
            "handovers": c.handovers,
            "migrations": c.migrations,
            "migration_bytes": c.migration_bytes,
            "migration_time_s": c.migration_time_s,
            "failed_migrations": c.failed_migrations,
            "restarts": c.restarts,
            # Capability rings: the ring session following its members across edges (not handovers).
            "ring_passes": c.ring_passes,
            "ring_pass_bytes": c.ring_pass_bytes,
            "ring_pass_time_s": c.ring_pass_time_s,
            # Re-planning: devices switched to a new split, and the predicted seconds per round the
            # adopted re-plans saved when they were made.
            "switches": c.switches,
            "replan_saved_s": c.replan_saved_s,
            "compute": sc.execution.compute,
            "engine": self.ops.engine_summary(),  # model|[cuts]|batch -> the engine the device hosts chose
            "profile_spread": None if self.profile is None else self.profile.spread,
        }

    def policy_name(self) -> str:
        p = self.scenario.policy
        return f"{p.placement}+rings={p.rings}+{p.handover}+{self.aggregation.name}"


def peak_memory_mb(actors: dict[str, int]) -> dict[str, float]:
    """The driver's and each actor's peak resident memory in MiB (what a bigger scenario would need)."""
    return {name: round(b / 2**20, 1) for name, b in {"driver": peak_rss_bytes(), **actors}.items()}


def run_scenario(scenario: Scenario, options: RunOptions) -> dict:
    return Orchestrator(scenario, options).run()
