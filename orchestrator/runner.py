"""The round loop: start the tier actors, train, aggregate, evaluate, log.

One round is one cloud aggregation: ``cloud_every`` periods of ``local_steps`` steps per device,
with an edge aggregation after each period (HierFAVG). The orchestrator decides; the tier actors
execute (conventions: controller and replicas).
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import astuple, dataclass
from pathlib import Path

import numpy as np
import ray
import torch
import torch.nn.functional as F
from tqdm import tqdm

from tierflow.migration.handover import nearest_covering
from tierflow.orchestrator.aggregation import AGGREGATIONS, restrict
from tierflow.orchestrator.checkpoint import Checkpoint, load_checkpoint, save_checkpoint, scenario_fingerprint
from tierflow.orchestrator.clock import build_cost_model, session_move_s, tier_speeds
from tierflow.orchestrator.cluster import ensure_ray
from tierflow.orchestrator.errors import TierflowError
from tierflow.orchestrator.events import EventLog
from tierflow.orchestrator.handover_policies import HANDOVER_POLICIES, MoveResult
from tierflow.orchestrator.mobility import build_detector, build_mobility, edge_sites
from tierflow.orchestrator.model_files import write_final_model
from tierflow.orchestrator.planning import DevicePlan, Observed, Planner, device_flops_per_step
from tierflow.orchestrator.profiles import PROFILE_FILE, profile_digest, write_profile
from tierflow.orchestrator.refused import RefusalReporter
from tierflow.orchestrator.resources import ResourceModel
from tierflow.orchestrator.round_policies import round_policy_for
from tierflow.orchestrator.run_dir import EVENTS, EventsDigest, claim_run_dir
from tierflow.orchestrator.scenario import CLOUD_EDGE, Scenario
from tierflow.orchestrator.trajectories import TrajectoryRecorder
from tierflow.orchestrator.world import World, build_world
from tierflow.placement.cost import Charge, TierSpeeds, makespan_s
from tierflow.placement.profile import LayerProfile
from tierflow.tiers.actors import CloudActor, DeviceHostActor, EdgeActor, actor_options
from tierflow.tiers.aggregate import WeightedSum
from tierflow.tiers.hosts import NOT_HOSTED, DeviceSetup, TrainReport
from tierflow.tiers.models import build_model
from tierflow.tiers.session import SplitKey, StageFactory

LINKS = ("device-edge", "edge-cloud")
DEVICE_HOST_RESTARTS = 3  # Ray restarts a dead device host this many times; its devices then rejoin


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


def dataplane_host() -> str | None:
    """Loopback when every Ray node is this machine; otherwise each actor binds its node's address."""
    addresses = {n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive")}
    return "127.0.0.1" if addresses <= {ray.util.get_node_ip_address(), "127.0.0.1"} else None


class Orchestrator:
    def __init__(self, scenario: Scenario, options: RunOptions):
        self.scenario = scenario
        self.options = options
        self.world: World = build_world(scenario)
        self.shape = self.world.dataset.shape
        self.aggregation = AGGREGATIONS[scenario.aggregation.schedule]()
        self.round_policy = round_policy_for(scenario.policy.rings)
        self.global_state = dict(self.world.initial_state)
        self.splits: dict[str, SplitKey] = dict(self.world.splits)
        # Where each device is connected now (None: out of coverage), and which edge holds its session.
        self.edge_of: dict[str, str | None] = {d.name: d.edge for d in scenario.devices}
        self.session_at: dict[str, str] = {d.name: d.edge for d in scenario.devices}
        self.mobility = build_mobility(scenario)  # reads trace files: fails before Ray starts
        self.detector = build_detector(scenario, self.edge_of)
        self.trajectories = TrajectoryRecorder.for_scenario(scenario, self.mobility, self.edge_of)  # the city map
        self.handover = HANDOVER_POLICIES[scenario.policy.handover]()
        self.migration_key = secrets.token_bytes(32)
        self.refusals = RefusalReporter()  # what the actors' zmq ports refused, to the metrics each round
        self.last_pushed: dict[str, dict[str, np.ndarray]] = {}
        self.counters = {"handovers": 0, "migrations": 0, "migration_bytes": 0, "migration_time_s": 0.0,
                         "failed_migrations": 0, "restarts": 0, "switches": 0, "replan_saved_s": 0.0,
                         "ring_passes": 0, "ring_pass_bytes": 0, "ring_pass_time_s": 0.0}  # a ring's session moving
        self.round = 0
        self.period = 0
        self.time_to_target: dict[str, float] | None = None
        self.wall_before_s = 0.0  # wall seconds run before a resume
        self.resume_from: Checkpoint | None = None
        self.lost_hosts: set[int] = set()  # device hosts that died or missed a deadline, until they answer
        self.round_failures = 0
        self.mobility_t = 0.0
        self.measured_flops: dict[str, float] = {}
        self.observed: dict[str, tuple] = {}  # device -> (edge, planning.Observed), smoothed per round
        # One cost model prices the plan and charges the clock (orchestrator/clock.py).
        self.cost, self.profile = build_cost_model(scenario, self.shape, options.profile, options.profile_path)
        self.graph = self.cost.graph
        self.pending_extra_s: dict[str, float] = {}  # charged in a device's next period (a re-split's transfer)
        self.switch_from: dict[str, SplitKey] = {}  # the split a device left at its last switch
        self.devices = {d.name: d for d in scenario.devices}
        self.weights = {d.name: float(len(s)) for d, s in zip(scenario.devices, self.world.shards, strict=True)}
        self.batch_of = self.world.batch_sizes()
        n_hosts = min(scenario.execution.device_hosts, len(scenario.devices))
        self.host_of = {d.name: i % n_hosts for i, d in enumerate(scenario.devices)}  # devices dealt to hosts
        self.factory = StageFactory(scenario.model.name, self.shape)
        self._param_bytes: dict[SplitKey, int] = {}
        self.eval_model = build_model(scenario.model.name, self.shape)
        self.bytes_total = {link: {"up": 0, "down": 0} for link in LINKS}
        self.virtual_time_s = 0.0
        self.resources = ResourceModel(scenario)  # reads nothing: the trace was loaded with the scenario
        self.plans: dict[str, DevicePlan] = {}
        if scenario.policy.placement == "adaptive":
            self.planner = Planner(scenario, self.cost, self.batch_of)
            self.plans = self.planner.initial_plan()
            self.splits = {d: p.key for d, p in self.plans.items()}

    # ----- actors -----
    def start_actors(self) -> None:
        sc = self.scenario
        opt = sc.training.optimizer
        model = sc.model.name
        timeout = sc.policy.step_timeout_s
        token = secrets.token_hex(16)  # per run: data-plane messages without it are refused
        self.cloud = CloudActor.options(**actor_options("cloud")).remote("cloud", model, self.shape, opt, 1, token,
                                                                          timeout)
        self.edges = {
            e.name: EdgeActor.options(**actor_options("edge")).remote(e.name, model, self.shape, opt, self.cloud, 1,
                                                                      token, timeout)
            for e in sc.edges
        }
        n_hosts = min(sc.execution.device_hosts, len(sc.devices))
        # A device host holds no state the orchestrator cannot give it again, so Ray may restart it;
        # its devices then rejoin at the next period (see recover_hosts).
        self.hosts = [
            DeviceHostActor.options(**actor_options("device", max_restarts=DEVICE_HOST_RESTARTS)).remote(
                f"host{i}", model, self.shape, opt, 1, token, timeout)
            for i in range(n_hosts)
        ]
        bind = self.bind = dataplane_host()
        cloud_endpoint = self.cloud_endpoint = ray.get(self.cloud.start_dataplane.remote(bind))
        self.token = token
        names = list(self.edges)
        endpoints = ray.get([self.edges[n].start_dataplane.remote(bind) for n in names])
        self.endpoints = dict(zip(names, endpoints, strict=True))
        ray.get([edge.set_cloud_endpoint.remote(cloud_endpoint) for edge in self.edges.values()])
        receivers = ray.get([self.edges[n].start_migration_receiver.remote(self.migration_key, bind) for n in names])
        self.receivers = dict(zip(names, receivers, strict=True))
        ray.get([host.add_devices.remote(self.setups_for(h)) for h, host in enumerate(self.hosts)])
        state_ref = ray.put(self.global_state)
        self.last_pushed = {d.name: self.global_state for d in sc.devices}
        calls = []
        for d in sc.devices:
            calls.extend(self._open_device(d.name, self.splits[d.name], state_ref))
        ray.get(calls)
        self.actor_nodes = dict(zip(
            ["cloud", *(f"edge:{n}" for n in names), *(f"devices:{i}" for i in range(n_hosts))],
            ray.get([a.node_id.remote() for a in [self.cloud, *self.edges.values(), *self.hosts]]), strict=True))

    def setups_for(self, host: int) -> list[DeviceSetup]:
        """The devices a host runs, with their data shards (what a restarted host is given again)."""
        sc, ds = self.scenario, self.world.dataset
        return [
            DeviceSetup(d.name, ds.x_train[idx], ds.y_train[idx], sc.training.batch_size,
                        sc.training.seed * 100_003 + i)
            for i, (d, idx) in enumerate(zip(sc.devices, self.world.shards, strict=True))
            if self.host_of[d.name] == host
        ]

    def _open_device(self, device_id: str, key: SplitKey, state_ref, optimizer_state: dict | None = None) -> list:
        """Build a device's stages on every tier of ``key``, weights from ``state_ref`` (and, after a
        re-split, each layer's optimizer state)."""
        host = self.hosts[self.host_of[device_id]]
        calls = [host.configure.remote(device_id, key, state_ref, False, optimizer_state)]
        edge = self.session_at[device_id]
        w = self.weights[device_id]
        if key.n_tiers >= 2 and edge is not None:
            calls.append(self.edges[edge].open_session.remote(device_id, key, state_ref, w, optimizer_state))
        if key.n_tiers == 3:
            calls.append(self.cloud.open_session.remote(device_id, key, state_ref, w, optimizer_state))
        return calls

    # ----- one round -----
    def train_segment(self, steps: dict[str, int], session_ids: dict[str, str] | None = None
                      ) -> tuple[list[TrainReport], dict[str, str]]:
        """Train each listed device for its number of steps, all hosts at once.

        Returns the reports and the devices that failed, with why: a host that died or did not
        answer within ``policy.round_deadline_s``, or a device whose steps were refused (failures
        are data: the others' work counts).
        """
        jobs: list[list] = [[] for _ in self.hosts]
        for device_id, n in sorted(steps.items()):
            edge = self.session_at[device_id]
            jobs[self.host_of[device_id]].append((device_id, n, self.endpoints[edge], edge,
                                                  (session_ids or {}).get(device_id)))
        calls = {h: self.hosts[h].train_many.remote(j) for h, j in enumerate(jobs) if j}
        ready, _ = ray.wait(list(calls.values()), num_returns=len(calls),
                            timeout=self.scenario.policy.round_deadline_s)
        done = set(ready)
        reports: list[TrainReport] = []
        failed: dict[str, str] = {}
        for h, ref in calls.items():
            why = ""
            if ref not in done:
                why = f"device host {h} did not answer within the round deadline"
            else:
                try:
                    batch = ray.get(ref)
                except ray.exceptions.RayActorError as exc:
                    why = f"device host {h} died ({type(exc).__name__})"
            if why:
                self.lost_hosts.add(h)
                failed.update({job[0]: why for job in jobs[h]})
                continue
            for r in batch:
                if r.error == NOT_HOSTED:
                    self.lost_hosts.add(h)
                if r.error:
                    failed[r.device_id] = r.error
                else:
                    reports.append(r)
        return reports, failed

    def fail_device(self, device_id: str, why: str) -> None:
        self.round_failures += 1
        self.log.emit({"event": "failure", "round": self.round, "virtual_time_s": self.virtual_time_s,
                       "kind": "device", "entity": device_id, "detail": why})

    def recover_hosts(self) -> None:
        """Give a device host that is back (restarted by Ray, or late) its devices again, from the
        model they were last given; a host still gone keeps its devices out of this period."""
        for h in sorted(self.lost_hosts):
            try:
                ray.get(self.hosts[h].ping.remote(), timeout=self.scenario.policy.step_timeout_s)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                continue
            mine = [d for d, hh in sorted(self.host_of.items()) if hh == h]
            ray.get(self.hosts[h].add_devices.remote(self.setups_for(h)))
            ray.get([self.hosts[h].configure.remote(d, self.splits[d], ray.put(self.last_pushed[d])) for d in mine])
            self.lost_hosts.discard(h)
            self.log.emit({"event": "rejoin", "round": self.round, "virtual_time_s": self.virtual_time_s,
                           "entity": f"host{h}", "devices": mine})

    def available(self, device_id: str) -> bool:
        return self.edge_of[device_id] is not None and self.host_of[device_id] not in self.lost_hosts

    def run_period(self, virtual_before_s: float) -> tuple[list[TrainReport], dict[str, float]]:
        """One period of local steps, in segments between handover checks; returns merged reports."""
        sc = self.scenario
        steps = sc.training.local_steps
        check = sc.mobility.check_every_steps or steps
        self.recover_hosts()
        remaining = {d: steps for d in self.devices}
        dropped: set[str] = set()
        done: dict[str, list[TrainReport]] = {}
        extra_s, self.pending_extra_s = self.pending_extra_s, {}  # a re-split's transfer opens the period
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
            if failed:
                rehomed = self.drop_dead_edges(remaining)
                for d, why in sorted(failed.items()):
                    self.fail_device(d, why)
                    done.pop(d, None)  # a failed device's partial period is not aggregated
                    if d not in rehomed:
                        dropped.add(d)
                for d in rehomed:
                    done.pop(d, None)  # they start their period over at the new edge
            merged = [merge_reports(rs) for rs in done.values()]
            elapsed = virtual_before_s + self.round_clock(merged, extra_s, virtual_before_s)
            # A restart makes the period longer, but mobility stays inside the period's share of the
            # round: devices re-running steps do so where the period ends. (Unclamped, each restart
            # moved mobility on, which made more handovers and more restarts: the city raced ahead.)
            progress = min(1.0, elapsed_steps / steps)
            now_s = self.mobility_time(elapsed, progress)
            positions = self.mobility.positions(now_s)
            moves = self.detector.update(now_s, positions)
            for h in moves:
                self.on_handover(h, remaining, dropped, extra_s)
            self.trajectories.record(self.round, now_s, positions, self.edge_of, moves)
        return [merge_reports(rs) for rs in done.values()], extra_s

    def mobility_time(self, round_elapsed_s: float, period_progress: float) -> float:
        """Mobility runs on the run's clock, or on a fixed time per round if the scenario sets one."""
        per_round = self.scenario.mobility.round_duration_s
        if per_round is None:
            t = self.virtual_time_s + round_elapsed_s
        else:
            periods = self.scenario.aggregation.cloud_every
            t = per_round * (self.round - 1 + (self.period + period_progress) / periods)
        self.mobility_t = max(self.mobility_t, t)  # time never runs backwards, even after a long period
        return self.mobility_t

    def note_handover(self, h) -> None:
        """A device changed edge (or left coverage): counted, logged, and where it is connected now."""
        self.counters["handovers"] += 1
        self.log.emit({"event": "handover", "round": self.round, "virtual_time_s": self.virtual_time_s,
                       "device": h.device, "from_edge": h.from_edge, "to_edge": h.to_edge})
        self.edge_of[h.device] = h.to_edge

    def note_move(self, device_id: str, src: str, dst: str, result: MoveResult, ring: str | None = None) -> None:
        """A session moved by the handover policy (a device's own, or ``ring``'s): event and counters."""
        event = {"event": "migration", "round": self.round, "virtual_time_s": self.virtual_time_s,
                 "device": device_id, "from_edge": src, "to_edge": dst, "policy": self.handover.name,
                 "bytes": result.bytes_, "wall_duration_s": result.duration_s, "ok": result.ok,
                 "charged_s": result.virtual_s}
        if ring is not None:
            event["ring"] = ring
        self.log.emit(event)
        if not result.ok:
            self.counters["failed_migrations"] += 1
            self.log.emit({"event": "failure", "round": self.round, "virtual_time_s": self.virtual_time_s,
                           "kind": "migration", "entity": dst, "detail": f"{ring or device_id}: {result.error}"})
        elif result.restarted:
            self.counters["restarts"] += 1
        else:
            self.counters["migrations"] += 1
            self.counters["migration_bytes"] += result.bytes_
            self.counters["migration_time_s"] += result.duration_s

    def on_handover(self, h, remaining: dict[str, int], dropped: set[str], extra_s: dict[str, float]) -> None:
        d = h.device
        self.note_handover(h)
        if h.to_edge is None:
            if self.scenario.policy.disconnected == "drop":
                dropped.add(d)
            return
        src = self.session_at[d]
        if src == h.to_edge:
            return
        if self.splits[d].n_tiers == 1:  # nothing offloaded: nothing to move
            self.session_at[d] = h.to_edge
            return
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
        self.edge_of[d] = src
        alive = set(self.edges)
        self.detector = build_detector(self.scenario, {k: (v if v in alive else None)
                                                       for k, v in self.edge_of.items()}, alive)

    def migrate_session(self, device_id: str, src: str, dst: str) -> MoveResult:
        """Two-phase handoff: copy, destination verifies and ACKs, re-route, then drop the source copy."""
        self.before_migration(device_id, src, dst)
        out = ray.get(self.edges[src].migrate_out.remote(device_id, self.receivers[dst], self.migration_key,
                                                         self.scenario.policy.migration_timeout_s))
        if not out["ok"]:
            return MoveResult(False, 0, out["duration_s"], 0.0, error=out["error"])
        self.session_at[device_id] = dst
        ray.get(self.edges[src].close_session.remote(device_id))
        moved = self.cost.session_bytes(self.splits[device_id], 1, self.scenario.training.optimizer)
        return MoveResult(True, out["bytes"], out["duration_s"], session_move_s(self.scenario, src, dst, moved))

    def restart_session(self, device_id: str, src: str, dst: str) -> MoveResult:
        """The baseline: drop the session, start the device's period over at ``dst``."""
        t0 = time.perf_counter()
        state = ray.put(self.last_pushed[device_id])
        ray.get(self.edges[src].close_session.remote(device_id))
        self.session_at[device_id] = dst
        ray.get(self._open_device(device_id, self.splits[device_id], state))
        return MoveResult(True, 0, time.perf_counter() - t0, 0.0, restarted=True)

    def measure_speeds(self, reports: list[TrainReport]) -> None:
        """Real time only: each device's FLOP/s as measured this round, smoothed (EWMA, 1/2).

        In emulated time a device's speed is its profile by construction, so there is nothing to
        measure; there re-planning follows handovers (and the resource traces of the scenario).
        """
        if self.scenario.execution.time != "real":
            return
        for r in reports:
            flops = device_flops_per_step(self.cost, self.splits[r.device_id], self.batch_of[r.device_id])
            if flops <= 0 or r.compute_s[0] <= 0:
                continue
            measured = flops * r.steps / r.compute_s[0]
            old = self.measured_flops.get(r.device_id)
            self.measured_flops[r.device_id] = measured if old is None else 0.5 * (old + measured)

    def observe(self) -> None:
        """Each round: every device's speeds and links as observed now.

        In emulated time they are exactly the scenario's resources at the current virtual time
        (traces, random processes); in real time the device's FLOP/s is what it measured
        (measure_speeds), smoothed (EWMA in log space), and a device that changed edge starts its
        edge-side figures afresh.
        """

        t, res = self.virtual_time_s, self.resources
        for d in self.devices:
            edge = self.session_at[d]
            flops = self.measured_flops.get(d) if self.scenario.execution.time == "real" else None
            now = Observed(flops or res.device_flops_per_s(d, t), res.device_bandwidth_bps(d, t),
                           res.edge_flops_per_s(edge, t), res.edge_cloud_bandwidth_bps(edge, t))
            old = self.observed.get(d)
            # Emulated time knows the resources exactly; smoothing is for measured (noisy) figures.
            exact = self.scenario.execution.time == "emulated"
            self.observed[d] = (edge, now if exact or old is None or old[0] != edge else old[1].smoothed(now))

    def speeds_now(self, device_id: str) -> TierSpeeds:
        """The tier chain the planner prices a device with: exact resources in emulated time, the
        measured (smoothed) figures in real time."""
        if self.scenario.execution.time == "emulated":
            return tier_speeds(self.scenario, self.resources, device_id, self.session_at[device_id],
                               self.virtual_time_s)
        return self.observed[device_id][1].speeds(self.scenario.cloud.flops_per_s)

    def replan(self) -> None:
        """Adaptive placement (FedAdapt's idea, an exact cost model and a makespan planner): plan
        every connected device again at the resources of now, and switch the devices whose switch
        the new makespan needs when the saving pays for the switch (orchestrator/planning.py).

        A switched device's new stages start from the global model it just received, and the
        optimizer state of every layer travels with the layer to its new tier; the transfer is
        charged to the device in its next period.
        """
        self.observe()
        devices = [d for d in self.devices if self.available(d)]
        speeds = {d: self.speeds_now(d) for d in devices}
        rings = self.scenario.policy.rings != "off"
        decision, plans = self.planner.replan(devices, self.session_at, speeds, self.splits,
                                              self.scenario.training.rounds - self.round, switch_cost=not rings)
        self.plans.update(plans)
        if decision.adopted:
            self.restage(list(decision.changed), {d: plans[d].key for d in decision.changed})
            if not rings:  # a ring re-opens its sessions each round from the global model: nothing moves
                opt = self.scenario.training.optimizer
                for d in decision.changed:
                    self.pending_extra_s[d] = self.cost.switch_s(self.switch_from[d], self.splits[d], speeds[d], opt)
            self.counters["switches"] += len(decision.changed)
            self.counters["replan_saved_s"] += (decision.before_s - decision.after_s) * \
                self.scenario.aggregation.cloud_every
        self.log.emit({"event": "replan", "round": self.round, "virtual_time_s": self.virtual_time_s,
                       "changed": len(decision.changed), "adopted": decision.adopted,
                       "predicted_before_s": decision.before_s, "predicted_after_s": decision.after_s,
                       "switch_s": decision.switch_s})

    def restage(self, devices: list[str], keys: dict[str, SplitKey]) -> None:
        """Re-split devices: new stages on every tier from the global model, each layer's optimizer
        state carried over from wherever it lived (tiers/session.py optimizer_state)."""
        state = ray.put(self.global_state)
        parts = []
        for d in devices:
            old = self.splits[d]
            calls = [self.hosts[self.host_of[d]].optimizer_state.remote(d)]
            if old.n_tiers >= 2:
                calls.append(self.edges[self.session_at[d]].optimizer_state.remote(d))
            if old.n_tiers == 3:
                calls.append(self.cloud.optimizer_state.remote(d))
            parts.append(calls)
        got = ray.get([c for calls in parts for c in calls])
        carried, i = {}, 0
        for d, calls in zip(devices, parts, strict=True):
            merged: dict = {}
            for part in got[i:i + len(calls)]:
                merged.update(part)
            i += len(calls)
            carried[d] = merged
        ray.get([c for d in devices for c in (self.edges[self.session_at[d]].close_session.remote(d),
                                              self.cloud.close_session.remote(d))])
        for d in devices:
            self.switch_from[d] = self.splits[d]
            self.splits[d] = keys[d]
        ray.get([c for d in devices for c in self._open_device(d, self.splits[d], state, carried[d])])

    # ----- checkpoints: an orchestrator that dies loses no completed round -----
    def save_checkpoint(self, log: EventLog, wall_s: float) -> None:
        """Everything the next round depends on, taken at the round boundary."""
        self.trajectories.save(self.options.out_dir)  # not needed to resume; kept so the map survives one
        hosts = [h for h in range(len(self.hosts)) if h not in self.lost_hosts]
        names = list(self.edges)
        parts = ray.get([self.hosts[h].export_devices.remote() for h in hosts]
                        + [self.edges[n].export_sessions.remote() for n in names]
                        + [self.cloud.export_sessions.remote()])
        devices: dict = {}
        for part in parts[:len(hosts)]:
            devices.update(part)
        sessions = dict(zip([*names, "cloud"], parts[len(hosts):], strict=True))
        log.flush()
        events_bytes, events_sha256 = self.events_digest.advance()
        state = {
            "round": self.round, "scenario_fingerprint": scenario_fingerprint(self.scenario),
            "scenario_path": str(Path(self.scenario.source).resolve()),
            "events_bytes": events_bytes, "events_sha256": events_sha256,
            "wall_time_s": wall_s, "virtual_time_s": self.virtual_time_s, "mobility_t": self.mobility_t,
            "counters": self.counters, "bytes_total": self.bytes_total, "time_to_target": self.time_to_target,
            "session_at": self.session_at, "edge_of": self.edge_of, "detector": self.detector.current,
            "edges": names, "lost_hosts": sorted(self.lost_hosts), "measured_flops": self.measured_flops,
            "splits": {d: {"tiers": [list(t) for t in k.tiers], "n_tiers": k.n_tiers} for d, k in self.splits.items()},
            "plans": {d: {"edge": p.edge, "period_s": p.period_s} for d, p in self.plans.items()},
            "pending_extra_s": self.pending_extra_s,
            "switch_from": {d: {"tiers": [list(t) for t in k.tiers], "n_tiers": k.n_tiers}
                            for d, k in self.switch_from.items()},
            "observed": {d: [edge, list(astuple(o))] for d, (edge, o) in self.observed.items()},
            "profile_digest": profile_digest(self.profile),
            "round_policy": self.round_policy.export_state(),
        }
        save_checkpoint(self.options.out_dir, Checkpoint(state, self.global_state, devices, sessions))

    def restore(self, ckpt: Checkpoint) -> None:
        """Put the orchestrator and every actor back in the state the checkpoint recorded."""
        st = ckpt.state
        self.round = ckpt.round
        self.wall_before_s = float(st["wall_time_s"])
        self.virtual_time_s, self.mobility_t = float(st["virtual_time_s"]), float(st["mobility_t"])
        self.counters, self.bytes_total = dict(st["counters"]), st["bytes_total"]
        self.time_to_target, self.measured_flops = st["time_to_target"], dict(st["measured_flops"])
        self.global_state = dict(ckpt.global_model)
        self.last_pushed = {d: self.global_state for d in self.devices}
        self.splits = {d: SplitKey(tuple((str(n), int(t)) for n, t in v["tiers"]), int(v["n_tiers"]))
                       for d, v in st["splits"].items()}
        self.session_at, self.edge_of = dict(st["session_at"]), dict(st["edge_of"])
        self.plans = {d: DevicePlan(d, p["edge"], self.splits[d], float(p["period_s"]))
                      for d, p in st["plans"].items()}
        self.pending_extra_s = {d: float(v) for d, v in st["pending_extra_s"].items()}
        self.switch_from = {d: SplitKey(tuple((str(n), int(t)) for n, t in v["tiers"]), int(v["n_tiers"]))
                            for d, v in st["switch_from"].items()}
        self.observed = {d: (edge, Observed(*o)) for d, (edge, o) in st["observed"].items()}
        if st.get("profile_digest") != profile_digest(self.profile):
            raise TierflowError(f"{self.options.out_dir}: the layer profile differs from the one the interrupted run "
                                f"charged; resume with --profile {self.options.out_dir / PROFILE_FILE}")
        self.round_policy.import_state(st["round_policy"])
        self.trajectories.resume(self.options.out_dir, ckpt.round)
        alive = set(st["edges"])
        if CLOUD_EDGE in alive:
            self.cloud_edge()
        for name in list(self.edges):
            if name not in alive:
                ray.kill(self.edges.pop(name))
        self.detector = build_detector(self.scenario, self.edge_of, alive - {CLOUD_EDGE})
        self.detector.current = dict(st["detector"])
        state_ref = ray.put(self.global_state)
        calls = []
        for h, host in enumerate(self.hosts):
            mine = [d for d, hh in self.host_of.items() if hh == h]
            calls.append(host.import_devices.remote({d: ckpt.devices[d] for d in mine if d in ckpt.devices}))
            # A device whose host was lost at the checkpoint starts from the global model, as on rejoin.
            calls.extend(host.configure.remote(d, self.splits[d], state_ref) for d in mine if d not in ckpt.devices)
        for name, edge in self.edges.items():
            calls.append(edge.import_sessions.remote(ckpt.sessions.get(name, {})))
        calls.append(self.cloud.import_sessions.remote(ckpt.sessions.get("cloud", {})))
        ray.get(calls)

    def before_migration(self, device_id: str, src: str, dst: str) -> None:
        """A hook for fault-injection tests; does nothing in a run."""

    def drop_dead_edges(self, remaining: dict[str, int]) -> set[str]:
        """Forget edges whose actor is gone; their devices re-home to the nearest live edge, their
        sessions restored from the model they were last given (the last aggregation boundary), and
        start their period over. Returns the devices that re-homed."""
        for name, edge in list(self.edges.items()):
            try:
                ray.get(edge.ping.remote(), timeout=5)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                del self.edges[name]
                self.log.emit({"event": "failure", "round": self.round, "virtual_time_s": self.virtual_time_s,
                               "kind": "edge", "entity": name, "detail": "edge actor is gone"})
        alive = set(self.edges)
        rehomed = set()
        for d, edge in sorted(self.session_at.items()):
            if edge in alive:
                continue
            here = self.mobility.positions(self.mobility_t)[d]
            new = nearest_covering(edge_sites(self.scenario, alive - {CLOUD_EDGE}), here) or self.cloud_edge()
            self.session_at[d] = self.edge_of[d] = new
            if self.host_of[d] not in self.lost_hosts:
                ray.get(self._open_device(d, self.splits[d], ray.put(self.last_pushed[d])))
            remaining[d] = self.scenario.training.local_steps
            rehomed.add(d)
            self.log.emit({"event": "rehome", "round": self.round, "virtual_time_s": self.virtual_time_s,
                           "device": d, "from_edge": edge, "to_edge": new})
        if rehomed:
            # A device served by the cloud is out of every live edge's coverage: the detector sees
            # it as unattached and hands it over (a migration from the cloud) once an edge covers it.
            self.detector = build_detector(self.scenario, dict(self.edge_of), set(self.edges) - {CLOUD_EDGE})
        return rehomed

    def cloud_edge(self) -> str:
        """Start (once) the cloud's own edge-tier actor: the server of last resort for re-homed devices."""
        if CLOUD_EDGE not in self.edges:
            sc = self.scenario
            actor = EdgeActor.options(**actor_options("cloud")).remote(
                CLOUD_EDGE, sc.model.name, self.shape, sc.training.optimizer, self.cloud, 1, self.token,
                sc.policy.step_timeout_s)
            self.endpoints[CLOUD_EDGE] = ray.get(actor.start_dataplane.remote(self.bind))
            ray.get(actor.set_cloud_endpoint.remote(self.cloud_endpoint))
            self.receivers[CLOUD_EDGE] = ray.get(actor.start_migration_receiver.remote(self.migration_key, self.bind))
            self.edges[CLOUD_EDGE] = actor
        return CLOUD_EDGE

    def partial_sums(self, groups: dict[str, list[str]]) -> dict[str, WeightedSum]:
        calls = []
        for h, host in enumerate(self.hosts):
            mine = {d for d, hh in self.host_of.items() if hh == h}
            if h not in self.lost_hosts:
                calls.append(host.weighted_sums.remote(restrict(groups, mine)))
        for edge_name, edge in self.edges.items():
            served = {d for d, e in self.session_at.items() if e == edge_name}
            calls.append(edge.weighted_sums.remote(restrict(groups, served)))
        calls.append(self.cloud.weighted_sums.remote(groups))
        totals = {g: WeightedSum() for g in groups}
        for part in ray.get(calls):
            for g, s in part.items():
                totals[g].merge(s)
        return totals

    def push(self, state: dict[str, np.ndarray], device_ids: list[str]) -> None:
        ref = ray.put(state)
        for d in device_ids:
            self.last_pushed[d] = state
        calls = []
        chosen = set(device_ids)
        for h, host in enumerate(self.hosts):
            mine = [d for d in device_ids if self.host_of[d] == h]
            if mine and h not in self.lost_hosts:
                calls.append(host.load_weights.remote(mine, ref))
        for edge_name, edge in self.edges.items():
            served = [d for d, e in self.session_at.items() if e == edge_name and d in chosen
                      and self.splits[d].n_tiers >= 2]
            if served:
                calls.append(edge.load_weights.remote(served, ref))
        three = [d for d in device_ids if self.splits[d].n_tiers == 3]
        if three:
            calls.append(self.cloud.load_weights.remote(three, ref))
        ray.get(calls)

    def evaluate(self) -> tuple[float, float]:
        self.eval_model.load_state_dict({k: torch.from_numpy(v) for k, v in self.global_state.items()})
        self.eval_model.eval()
        ds = self.world.dataset
        with torch.no_grad():
            logits = self.eval_model(torch.from_numpy(ds.x_test))
            target = torch.from_numpy(ds.y_test)
            loss = float(F.cross_entropy(logits, target))
            acc = float((logits.argmax(1) == target).float().mean())
        return acc, loss

    def device_param_bytes(self, device_id: str) -> int:
        return self.cost.device_param_bytes(self.splits[device_id])

    def healthy(self, reports: list[TrainReport]) -> set[str]:
        """Devices whose update may be aggregated; a non-finite one is a failure, logged by id."""
        for r in reports:
            if not r.finite:
                self.log.emit({"event": "failure", "round": self.round, "virtual_time_s": self.virtual_time_s,
                               "kind": "poisoned_update", "entity": r.device_id,
                               "detail": "non-finite loss or weights; update left out of aggregation"})
        return {r.device_id for r in reports if r.finite}

    def charges(self, reports: list[TrainReport], extra_s: dict[str, float] | None = None,
                offset_s: float = 0.0) -> list[Charge]:
        """What the cost model charges for the reports' work, every resource as it was at the start of
        the work (``offset_s`` after the round began) and held for that period (orchestrator/resources.py)."""
        t = self.virtual_time_s + offset_s
        sc, extra = self.scenario, extra_s or {}
        return [Charge(r.device_id, r.edge,
                       self.cost.period(self.splits[r.device_id], r.steps, r.samples // r.steps,
                                        tier_speeds(sc, self.resources, r.device_id, r.edge, t),
                                        measured_compute_s=r.compute_s),
                       extra.get(r.device_id, 0.0))
                for r in reports if r.steps > 0]

    def round_clock(self, reports: list[TrainReport], extra_s: dict[str, float] | None = None,
                    offset_s: float = 0.0) -> float:
        """Virtual seconds the reports' work took: the period's makespan under the cost model."""
        return makespan_s(self.charges(reports, extra_s, offset_s))

    def predicted_period_s(self, with_pending: bool = True) -> float:
        """The period the cost model predicts now for every device that can train: its split, its full
        ``local_steps`` and batch, at the resources of this moment (and, ``with_pending``, the transfers
        a re-split left for the next period). Equal to what the clock charges when nothing unforeseen
        (a handover, a failure, a resource change) happens in the period."""
        sc, t = self.scenario, self.virtual_time_s
        steps = sc.training.local_steps
        extra = self.pending_extra_s if with_pending else {}
        return makespan_s(
            Charge(d, self.session_at[d],
                   self.cost.period(self.splits[d], steps, self.batch_of[d],
                                    tier_speeds(sc, self.resources, d, self.session_at[d], t)), extra.get(d, 0.0))
            for d in self.devices if self.available(d))

    # ----- the run -----
    def run(self) -> dict:
        ensure_ray(self.options.address)  # a refused connection fails before the run directory exists
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
            return self._run(log)
        finally:
            log.close()
            if exporter is not None:
                # Keep serving briefly so a scraper that has been watching sees the final values.
                exporter.stop(wait_for_scrape_s=10.0)

    def _run(self, log: EventLog) -> dict:
        sc = self.scenario
        out = self.options.out_dir
        t_start = time.perf_counter()
        self.start_actors()
        self.log = log
        first = 1
        if self.resume_from is not None:
            self.restore(self.resume_from)
            first = self.resume_from.round + 1
            log.emit({"event": "run_resumed", "round": self.resume_from.round, "wall_time_s": self.wall_before_s,
                      "virtual_time_s": self.virtual_time_s})
        else:
            log.emit({"event": "run_start", "wall_time_s": 0.0, "virtual_time_s": 0.0,
                      "time_mode": sc.execution.time, "scenario": sc.name, "devices": len(sc.devices),
                      "edges": [e.name for e in sc.edges], "policy": self.policy_name()})
        t_start -= self.wall_before_s  # wall times in events count the interrupted part too
        accuracy, loss = self.evaluate()
        t_loop = time.perf_counter()
        bar = tqdm(total=sc.training.rounds, initial=first - 1, desc=sc.name, unit="round",
                   disable=not self.options.progress)
        wall_prev = time.perf_counter()
        for rnd in range(first, sc.training.rounds + 1):
            self.round = rnd
            self.round_failures = 0
            result = self.round_policy.run_round(self)
            reports, virtual_round = result.reports, result.virtual_s
            accuracy, loss = self.evaluate()
            now = time.perf_counter()
            wall_round = now - wall_prev
            wall_prev = now
            self.virtual_time_s += virtual_round if sc.execution.time == "emulated" else wall_round
            event = self.round_event(rnd, reports, accuracy, loss, now - t_start,
                                     virtual_round if sc.execution.time == "emulated" else wall_round, result.rings,
                                     result.compute_s)
            event["predicted_s"], event["charged_s"] = result.predicted_s, event["duration_s"]
            log.emit(event)
            self.refusals.report(log.emit, rnd, self.virtual_time_s, {"cloud": self.cloud, **self.edges})
            if sc.policy.placement == "adaptive" and sc.policy.replan:
                self.measure_speeds(reports)
                self.replan()  # after the event, which reports the splits this round trained
            if self.time_to_target is None and accuracy >= sc.training.target_accuracy:
                self.time_to_target = {"virtual_time_s": self.virtual_time_s, "wall_time_s": now - t_start,
                                       "round": rnd}
            bar.set_postfix(loss=f"{loss:.3f}", acc=f"{accuracy:.3f}", train_loss=f"{event['train_loss']:.3f}")
            self.save_checkpoint(log, time.perf_counter() - t_start)
            bar.update(1)
        bar.close()
        loop_s = time.perf_counter() - t_loop
        wall = time.perf_counter() - t_start
        summary = {
            "scenario": sc.name,
            "final_accuracy": accuracy,
            "final_loss": loss,
            "rounds": sc.training.rounds,
            "wall_time_s": wall,
            "round_loop_s": loop_s,
            "virtual_time_s": self.virtual_time_s,
            "time_mode": sc.execution.time,
            "target_accuracy": sc.training.target_accuracy,
            "time_to_target": self.time_to_target,
            "resumed_from_round": None if self.resume_from is None else self.resume_from.round,
            "bytes_up": {link: v["up"] for link, v in self.bytes_total.items()},
            "bytes_down": {link: v["down"] for link, v in self.bytes_total.items()},
            "devices": len(sc.devices),
            "edges": len(sc.edges),
            "policy": self.policy_name(),
            "actor_nodes": self.actor_nodes,
            "handovers": self.counters["handovers"],
            "migrations": self.counters["migrations"],
            "migration_bytes": self.counters["migration_bytes"],
            "migration_time_s": self.counters["migration_time_s"],
            "failed_migrations": self.counters["failed_migrations"],
            "restarts": self.counters["restarts"],
            # Capability rings: the ring session following its members across edges (not handovers).
            "ring_passes": self.counters.get("ring_passes", 0),
            "ring_pass_bytes": self.counters.get("ring_pass_bytes", 0),
            "ring_pass_time_s": self.counters.get("ring_pass_time_s", 0.0),
            # Re-planning: devices switched to a new split, and the predicted seconds per round the
            # adopted re-plans saved when they were made.
            "switches": self.counters["switches"],
            "replan_saved_s": self.counters["replan_saved_s"],
            "compute": sc.execution.compute,
            "profile_spread": None if self.profile is None else self.profile.spread,
        }
        log.emit({"event": "run_end", "wall_time_s": wall, "virtual_time_s": self.virtual_time_s,
                  "final_accuracy": accuracy, "rounds": sc.training.rounds})
        write_final_model(out, self.global_state)  # model.safetensors (no pickle) and model.pt
        self.trajectories.save(out)
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        self.stop_actors()
        return summary


    def stop_actors(self) -> None:
        for actor in [self.cloud, *self.edges.values(), *self.hosts]:
            ray.kill(actor)


    def policy_name(self) -> str:
        p = self.scenario.policy
        return f"{p.placement}+rings={p.rings}+{p.handover}+{self.aggregation.name}"

    def round_event(self, rnd: int, reports: list[TrainReport], accuracy: float, loss: float, wall_s: float,
                    duration_s: float, rings: dict[str, list[str]] | None = None,
                    charged_compute_s: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> dict:
        bytes_round = {link: {"up": 0, "down": 0} for link in LINKS}
        wall_compute = {"device": 0.0, "edge": 0.0, "cloud": 0.0}  # what the steps took on this host
        samples, finite_samples, loss_sum = 0, 0, 0.0
        for r in reports:
            for k, link in enumerate(LINKS):
                bytes_round[link]["up"] += r.bytes_up[k]
                bytes_round[link]["down"] += r.bytes_down[k]
            # Model sync, as the clock charges it: the device-side layers up and the aggregate back.
            sync = self.device_param_bytes(r.device_id)
            bytes_round["device-edge"]["up"] += sync
            bytes_round["device-edge"]["down"] += sync
            for k, tier in enumerate(wall_compute):
                wall_compute[tier] += r.compute_s[k]
            samples += r.samples
            if r.finite:  # a poisoned device's loss is reported as a failure, not averaged in
                loss_sum += r.loss_sum
                finite_samples += r.samples
        # Each edge that trained sends its aggregate to the cloud and gets the global model back.
        model_bytes = sum(int(v.nbytes) for v in self.global_state.values())
        edges_used = len({r.edge for r in reports if r.edge not in (None, CLOUD_EDGE)})
        bytes_round["edge-cloud"]["up"] += model_bytes * edges_used
        bytes_round["edge-cloud"]["down"] += model_bytes * edges_used
        for link in LINKS:
            for direction in ("up", "down"):
                self.bytes_total[link][direction] += bytes_round[link][direction]
        per_edge: dict[str, int] = {e.name: 0 for e in self.scenario.edges}
        for edge in self.session_at.values():
            if edge is not None:
                per_edge[edge] = per_edge.get(edge, 0) + 1
        return {
            "event": "round_end", "round": rnd, "wall_time_s": wall_s, "virtual_time_s": self.virtual_time_s,
            "duration_s": duration_s, "accuracy": accuracy, "loss": loss,
            "train_loss": loss_sum / max(finite_samples, 1), "bytes": bytes_round,
            "compute_s": dict(zip(wall_compute, charged_compute_s, strict=True)), "wall_compute_s": wall_compute,
            "devices_per_edge": per_edge, "devices_per_ring": {r: len(m) for r, m in (rings or {}).items()},
            "splits": {d: self.splits[d].counts() + [0] * (3 - self.splits[d].n_tiers) for d in sorted(self.splits)},
            "samples": samples, "failures": sum(1 for r in reports if not r.finite) + self.round_failures,
        }


def merge_reports(reports: list[TrainReport]) -> TrainReport:
    """One device's segments of a period as one report (the clock and the metrics want totals)."""
    first = reports[-1]
    return TrainReport(
        first.device_id, first.edge, sum(r.steps for r in reports), sum(r.samples for r in reports),
        sum(r.loss_sum for r in reports), sum(r.correct for r in reports),
        tuple(sum(r.compute_s[k] for r in reports) for k in range(3)),
        tuple(sum(r.bytes_up[k] for r in reports) for k in range(2)),
        tuple(sum(r.bytes_down[k] for r in reports) for k in range(2)),
        first.n_tiers, all(r.finite for r in reports))


def run_scenario(scenario: Scenario, options: RunOptions) -> dict:
    return Orchestrator(scenario, options).run()
