"""What the tier actors do, as plain classes: Ray wraps them in tiers/actors.py.

Keeping the logic free of Ray lets the oracle tests drive exactly this code in one process,
and keeps the actors to one job: execute; the orchestrator decides.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from tierflow.migration.outcome import MigrationOutcome
from tierflow.tiers.aggregate import WeightedSum
from tierflow.tiers.dataplane import DataPlaneClient, DataPlaneServer, DataPlaneTimeout
from tierflow.tiers.device_group import DeviceGroup, draw_batch, live_state
from tierflow.tiers.engine import EngineChooser
from tierflow.tiers.looped import LoopedSteps, train_interleaved
from tierflow.tiers.memory import ReportsPeakMemory, relax_gc
from tierflow.tiers.models import InputShape
from tierflow.tiers.optim import OptimizerSpec
from tierflow.tiers.session import (
    Session,
    SplitKey,
    StageFactory,
    load_optimizer_state,
    load_partition,
    optimizer_state,
    partition_state,
    state_views,
)
from tierflow.tiers.step import wire_bytes
from tierflow.tiers.train_report import NOT_HOSTED, TrainReport
from tierflow.tiers.upper import (
    UpperGroupReply,
    UpperReply,
    group_reply_to_wire,
    reply_to_wire,
    step_upper,
    step_upper_many,
)


@dataclass(frozen=True)
class DeviceSetup:
    device_id: str
    x: np.ndarray
    y: np.ndarray
    batch_size: int
    seed: int


class BatchSampler:
    """Shuffles the shard each epoch from the device's own RNG: the same batches wherever it trains."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size = n, min(batch_size, n)
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(n)
        self.pos = 0

    def snapshot(self) -> tuple:
        return self.rng.bit_generator.state, self.order.copy(), self.pos

    def restore(self, snapshot: tuple) -> None:
        self.rng.bit_generator.state, self.order, self.pos = snapshot[0], snapshot[1].copy(), snapshot[2]

    def next_indices(self) -> np.ndarray:
        if self.pos + self.batch_size > self.n:
            self.order, self.pos = self.rng.permutation(self.n), 0
        idx = self.order[self.pos:self.pos + self.batch_size]
        self.pos += self.batch_size
        return np.sort(idx)


class _GroupTotals:
    """A device group's running totals over a segment, one row per device."""

    def __init__(self, k: int, steps: int, n_tiers: int):
        self.steps, self.n_tiers = steps, n_tiers
        self.compute = np.zeros((k, 3))
        self.up = np.zeros((k, 2), dtype=np.int64)
        self.down = np.zeros((k, 2), dtype=np.int64)
        self.loss_sum = np.zeros(k)
        self.correct = np.zeros(k, dtype=np.int64)
        self.samples = 0  # per device: every device of a group draws the same batch size
        self.done = 0  # steps completed

    def report(self, k: int, device_id: str, edge_name: str | None, finite: bool) -> TrainReport:
        return TrainReport(device_id, edge_name, self.steps, self.samples, float(self.loss_sum[k]),
                           int(self.correct[k]), tuple(float(c) for c in self.compute[k]),
                           tuple(int(b) for b in self.up[k]), tuple(int(b) for b in self.down[k]), self.n_tiers,
                           finite, engine="vectorized")


@dataclass
class LogicalDevice:
    setup: DeviceSetup
    sampler: BatchSampler
    session: Session | None = None  # the device-side stage, as a session of tier 0
    stats: dict = field(default_factory=dict)


class DeviceHost(ReportsPeakMemory):
    """Hosts many logical devices in one process; trains each against its edge server."""

    def __init__(self, host_id: str, model_name: str, shape: InputShape, optimizer: OptimizerSpec,
                 threads: int = 1, token: str = "", step_timeout_s: float = 60.0, engine: str = "looped"):
        torch.set_num_threads(threads)
        relax_gc()  # thousands of devices' stages live here
        self.host_id = host_id
        self.client = DataPlaneClient(token, step_timeout_s)
        self.factory = StageFactory(model_name, shape)
        self.optimizer = optimizer
        self.devices: dict[str, LogicalDevice] = {}
        self.engines = EngineChooser(engine, self.factory, optimizer)

    def ping(self) -> str:
        return self.host_id

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def add_devices(self, setups: Sequence[DeviceSetup]) -> int:
        for s in setups:
            self.devices[s.device_id] = LogicalDevice(s, BatchSampler(len(s.y), s.batch_size, s.seed))
        return len(self.devices)

    def configure(self, device_id: str, key: SplitKey, state: Mapping[str, np.ndarray], fresh: bool = False,
                  optimizer_states: Mapping | None = None) -> None:
        """(Re)build a device's stage for a split, loading its part of the model from ``state``;
        ``fresh`` also starts its optimizer state afresh (a ring's first hop, like its session);
        ``optimizer_states`` carries its layers' optimizer state over a re-split."""
        device = self.devices[device_id]
        old = device.session
        if old is None or old.key != key or fresh:
            runner = self.factory.runner(key, 0, self.optimizer)
            device.session = Session(device_id, 0, key, runner, float(len(device.setup.y)))
        load_partition(device.session.runner, state)
        if optimizer_states:
            load_optimizer_state(device.session.runner, optimizer_states)

    def configure_many(self, configs: Sequence[tuple[str, SplitKey, Mapping | None]],
                       state: Mapping[str, np.ndarray], fresh: bool = False) -> None:
        """``configure`` for many devices from one ``state``, each ``(device_id, key, optimizer
        states)``: one call (and one copy of the model out of Ray's store) instead of one per device."""
        for device_id, key, optimizer_states in configs:
            self.configure(device_id, key, state, fresh, optimizer_states)

    def optimizer_state(self, device_id: str) -> dict:
        return optimizer_state(self.devices[device_id].session.runner)

    def load_weights(self, device_ids: Sequence[str], state: Mapping[str, np.ndarray]) -> None:
        for d in device_ids:
            load_partition(self.devices[d].session.runner, state)

    def train(self, device_id: str, steps: int, edge, edge_name: str | None,
              session_id: str | None = None) -> TrainReport:
        """Run ``steps`` split-training steps; ``edge`` is the edge actor (None: device-only).

        ``session_id`` names the server-side session to step against when it is not the device's
        own (a capability ring's shared session)."""
        run = self._looped(device_id, steps)
        upper_id = session_id or device_id
        for _ in range(steps):
            if run.n_tiers == 1:
                run.local_step()
            else:
                acts, y = run.forward()
                run.backward(step_upper(edge, self.client, upper_id, acts, y))
        return run.report(device_id, edge_name)

    def _looped(self, device_id: str, steps: int) -> LoopedSteps:
        device = self.devices[device_id]
        return LoopedSteps(device.session, device.sampler, device.setup.x, device.setup.y, steps)

    def train_many(self, jobs: Sequence[tuple]) -> list[TrainReport]:
        """Train every job (device, steps, edge link, edge name[, session id]); reports in job order.

        Jobs that step against their own sessions and share a split, an edge (none for device-only
        splits), a batch shape and a step count form a group; where the host's engine for that
        split and batch is ``vectorized``, the group trains as one DeviceGroup. Looped devices
        over the data plane train with their steps interleaved (tiers/looped.py). The rest (a
        ring's shared session: members train one after another on one state) train in turn.
        One device's failure is reported as data; the others still train."""
        out: list[TrainReport | None] = [None] * len(jobs)
        groups: dict[tuple, list[int]] = {}
        for i, job in enumerate(jobs):
            device_id, steps, link = job[0], job[1], job[2]
            device = self.devices.get(device_id)
            if device is None:  # this host restarted and has not been given its devices again
                out[i] = TrainReport(device_id, job[3], 0, 0, 0.0, 0, (0.0, 0.0, 0.0), (0, 0), (0, 0), 0, True,
                                     NOT_HOSTED, not_hosted=True)
                continue
            if (job[4] if len(job) > 4 else None) in (None, device_id):
                key, batch = device.session.key, device.sampler.batch_size
                groups.setdefault((key, link if key.n_tiers > 1 else None, batch, steps), []).append(i)
        interleaved = []
        for (key, link, batch, _), members in groups.items():
            engine = self.engines.engine(key, batch, len(members))
            if engine == "vectorized":
                for i, report in zip(members, self._train_group([jobs[i] for i in members], link), strict=True):
                    out[i] = report
            elif isinstance(link, str):  # over the data plane: steps of several devices in flight at once
                interleaved += members
            else:
                for i in members:
                    out[i] = replace(self._train_one(jobs[i]), engine=engine)
        for i, report in zip(interleaved, self._train_interleaved([jobs[i] for i in interleaved]), strict=True):
            out[i] = report
        for i, job in enumerate(jobs):
            if out[i] is None:
                out[i] = self._train_one(job)
        return out

    def _train_interleaved(self, jobs: Sequence[tuple]) -> list[TrainReport]:
        """Looped devices that step against their own sessions over data-plane links, their steps
        interleaved (tiers/looped.py); one device's failure is its own."""
        runs = [self._looped(job[0], job[1]) for job in jobs]
        errors = train_interleaved(runs, [job[2] for job in jobs], [job[0] for job in jobs], self.client)
        return [run.report(job[0], job[3]) if exc is None else self._failed(job, exc)
                for job, run, exc in zip(jobs, runs, errors, strict=True)]

    def _train_one(self, job: tuple) -> TrainReport:
        try:
            return self.train(*job)
        except Exception as exc:  # a dead edge, a refused step: a failure of this device only
            return self._failed(job, exc)

    def _failed(self, job: tuple, exc: Exception) -> TrainReport:
        device_id, edge_name = job[0], job[3]
        n_tiers = self.devices[device_id].session.key.n_tiers
        return TrainReport(device_id, edge_name, 0, 0, 0.0, 0, (0.0, 0.0, 0.0), (0, 0), (0, 0), n_tiers, True,
                           f"{type(exc).__name__}: {exc}")

    def _train_group(self, jobs: Sequence[tuple], link) -> list[TrainReport]:
        """The jobs of one group as a DeviceGroup; each device's session gets its own state back.

        A refusal the edge answers before anything has stepped (a session it does not hold) says
        nothing about the other devices, so the group is retried device by device, as the loop
        would have met it, and those devices report the engine that trained them, ``looped``; any
        other failure (a dead edge) fails the group's devices."""
        ids = [j[0] for j in jobs]
        devices = [self.devices[d] for d in ids]
        sessions = [d.session for d in devices]
        group = DeviceGroup(self.factory, sessions[0].key, self.optimizer,
                            {d: live_state(s.runner) for d, s in zip(ids, sessions, strict=True)})
        samplers = [d.sampler.snapshot() for d in devices]
        totals = _GroupTotals(len(group), int(jobs[0][1]), group.key.n_tiers)
        try:
            self._step_group(group, devices, totals, link)
        except DataPlaneTimeout as exc:
            return [replace(self._failed(j, exc), engine="vectorized") for j in jobs]
        except Exception as exc:
            if totals.done == 0:  # nothing stepped: draw the same batches again, one device at a time
                for d, snap in zip(devices, samplers, strict=True):
                    d.sampler.restore(snap)
                return [replace(self._train_one(j), engine="looped") for j in jobs]
            return [replace(self._failed(j, exc), engine="vectorized") for j in jobs]
        group.store_into([s.runner for s in sessions])
        finite = np.isfinite(totals.loss_sum) & group.finite()
        reports = []
        for k, (job, s) in enumerate(zip(jobs, sessions, strict=True)):
            s.steps_done += totals.steps
            reports.append(totals.report(k, job[0], job[3], bool(finite[k])))
        return reports

    def _step_group(self, group: DeviceGroup, devices: Sequence[LogicalDevice], totals: _GroupTotals, link) -> None:
        k, n_tiers = len(group), group.key.n_tiers
        for _ in range(totals.steps):
            x, y = draw_batch(devices)
            if n_tiers == 1:
                t0 = time.perf_counter()
                _, result = group.forward_loss_backward([x], y, track_input_grad=False)
                totals.compute[:, 0] += (time.perf_counter() - t0) / k  # the group's wall time, shared
                loss, correct = result.loss, result.correct
            else:
                t0 = time.perf_counter()
                acts = group.forward([x])
                totals.compute[:, 0] += (time.perf_counter() - t0) / k
                # Per device exactly what its own step sends: its slice of every array, and its labels.
                totals.up[:, 0] += sum(a[0].nbytes for a in acts) + y[0].nbytes
                reply = step_upper_many(link, self.client, group.device_ids, acts, y)
                totals.down[:, 0] += sum(g[0].nbytes for g in reply.grads)
                t0 = time.perf_counter()
                group.backward(reply.grads)
                totals.compute[:, 0] += (time.perf_counter() - t0) / k
                totals.compute[:, 1:1 + reply.compute_s.shape[1]] += reply.compute_s
                totals.up[:, 1:1 + reply.bytes_up.shape[1]] += reply.bytes_up
                totals.down[:, 1:1 + reply.bytes_down.shape[1]] += reply.bytes_down
                loss, correct = reply.loss, reply.correct
            totals.loss_sum += np.asarray(loss, dtype=np.float64) * y.shape[1]
            totals.correct += np.asarray(correct, dtype=np.int64)
            totals.samples += y.shape[1]
            totals.done += 1

    def export_stage(self, device_id: str) -> tuple[dict, dict[str, np.ndarray]]:
        """The device-side stage (weights and optimizer state): what a ring passes member to member."""
        return self.devices[device_id].session.export()

    def import_stage(self, device_id: str, meta: dict, arrays: Mapping[str, np.ndarray]) -> None:
        session = Session.from_export(meta, arrays, self.factory, self.optimizer)
        session.device_id = device_id
        self.devices[device_id].session = session

    # ----- checkpoints: a device's state as plain arrays (never pickle) -----
    def export_devices(self) -> dict[str, tuple[dict, dict[str, np.ndarray]]]:
        """Per device: its stage session (weights, optimizer) and its batch sampler's position."""
        out = {}
        for device_id, device in sorted(self.devices.items()):
            meta, arrays = device.session.export()
            sampler = device.sampler
            meta["sampler"] = {"rng": sampler.rng.bit_generator.state, "pos": sampler.pos}
            arrays["sampler/order"] = sampler.order.copy()
            out[device_id] = (meta, arrays)
        return out

    def import_devices(self, exported: Mapping[str, tuple[dict, Mapping[str, np.ndarray]]]) -> None:
        for device_id, (meta, arrays) in exported.items():
            device = self.devices[device_id]
            state = {k: v for k, v in arrays.items() if not k.startswith("sampler/")}
            device.session = Session.from_export(meta, state, self.factory, self.optimizer)
            device.sampler.rng.bit_generator.state = meta["sampler"]["rng"]
            device.sampler.order = np.array(arrays["sampler/order"])
            device.sampler.pos = int(meta["sampler"]["pos"])

    def weighted_sums(self, groups: Mapping[str, Sequence[str]]) -> dict[str, WeightedSum]:
        """Per group (an edge, or 'all'), the FedAvg partial sum of the device-side parts."""
        out = {}
        for group, device_ids in groups.items():
            acc = WeightedSum()
            for d in device_ids:
                session = self.devices[d].session
                acc.add(state_views(session.runner), session.weight)
            out[group] = acc
        return out


class ServesPorts:
    """A process's data-plane and migration ports (a SessionHost's, or an EdgeHost's shared by its
    edges): needs ``token``, ``server``, ``receiver``, ``_on_message`` and ``_accept_session``."""

    def start_dataplane(self, host: str | None = "127.0.0.1") -> str:
        """Serve steps over pyzmq; ``host=None`` binds this node's address (multi-node clusters)."""
        if host is None:
            import ray

            host = ray.util.get_node_ip_address()
        if self.server is None:
            self.server = DataPlaneServer(self._on_message, self.token, host)
        return self.server.endpoint

    def refused_counts(self) -> dict[str, dict[str, int]]:
        """Messages this host's zmq ports refused since they started, by port and reason (for the metrics)."""
        out = {}
        for port, server in (("dataplane", self.server), ("migration", self.receiver)):
            if server is not None and server.refusals.total:
                out[port] = server.refusals.counts()
        return out

    def start_migration_receiver(self, key: bytes, host: str | None = "127.0.0.1") -> str:
        from tierflow.migration.channel import MigrationReceiver

        if host is None:
            import ray

            host = ray.util.get_node_ip_address()
        if self.receiver is None:
            self.receiver = MigrationReceiver(key, self._accept_session, host=host)
        return self.receiver.endpoint


class SessionHost(ReportsPeakMemory, ServesPorts):
    """Common to edge and cloud: sessions keyed by device, loading weights, partial sums."""

    tier: int = 1

    def __init__(self, name: str, model_name: str, shape: InputShape, optimizer: OptimizerSpec, threads: int = 1,
                 token: str = "", step_timeout_s: float = 60.0, engine: str = "looped",
                 peer: SessionHost | None = None):
        """``peer``: a host-mate in the same process (tiers/edge_host.py) whose traced model and
        engine choices this one shares, so a process times and traces once, not once per edge."""
        torch.set_num_threads(threads)
        relax_gc()  # thousands of sessions live here
        self.name = name
        self.factory = peer.factory if peer is not None else StageFactory(model_name, shape)
        self.optimizer = optimizer
        # for the groups it is sent
        self.engines = peer.engines if peer is not None else EngineChooser(engine, self.factory, optimizer, self.tier)
        self.sessions: dict[str, Session] = {}
        self.token = token
        self.client = DataPlaneClient(token, step_timeout_s)
        self.server: DataPlaneServer | None = None
        self.receiver = None  # migration.channel.MigrationReceiver, once started
        # Steps arrive on the data-plane thread; control calls on Ray's. Sessions are shared.
        self.lock = threading.RLock()

    def ping(self) -> str:
        return self.name

    def _on_message(self, meta: dict, arrays: dict[str, np.ndarray]) -> tuple[dict, dict[str, np.ndarray]]:
        op, n = meta.get("op"), int(meta["n"])
        inputs = [arrays[f"a{i}"] for i in range(n)]
        if op == "step":
            return reply_to_wire(self.step(str(meta["device"]), inputs, arrays["labels"]))
        if op == "step_many":
            devices = meta["devices"]
            if not isinstance(devices, list) or not all(isinstance(d, str) for d in devices):
                raise ValueError("step_many: expected a list of device ids")
            return group_reply_to_wire(self.step_many(devices, inputs, arrays["labels"]))
        raise ValueError(f"unknown op {op!r}")

    def step_many(self, device_ids: Sequence[str], arrays: list[np.ndarray], labels: np.ndarray) -> UpperGroupReply:
        """One step of each listed session, inputs stacked on dim 0 in that order, in one call.

        Every session is looked up, and every shape checked, before any is stepped: a refused
        group changes nothing here. Where this tier's engine for the group's split and batch is
        ``vectorized`` the sessions step as one DeviceGroup and get their own state back; else one
        after another (each its own StageRunner). Either way each takes the step ``step`` would
        give it (to float rounding)."""
        k = len(device_ids)
        if k == 0 or len(set(device_ids)) != k:
            raise ValueError("step_many: expected distinct device ids")
        for a in (*arrays, labels):
            if np.ndim(a) == 0 or np.shape(a)[0] != k:
                raise ValueError(f"step_many: expected a leading dimension of {k}, got shape {np.shape(a)}")
        with self.lock:
            sessions = [self.sessions[d] for d in device_ids]
            key = sessions[0].key
            if any(s.key != key for s in sessions):
                raise ValueError("step_many: the group's sessions have different splits")
            if self.engines.engine(key, int(np.shape(labels)[1]), k) == "vectorized":
                return self._step_group(device_ids, sessions, arrays, labels)
            return self._step_many(device_ids, sessions, arrays, labels)

    def _step_group(self, device_ids, sessions, arrays, labels) -> UpperGroupReply:
        """The sessions as one stacked stage: one vmapped step (one message on to the cloud if this
        is a 3-tier split's edge); the sessions are written back only once the step has succeeded."""
        k, key = len(sessions), sessions[0].key
        group = DeviceGroup(self.factory, key, self.optimizer,
                            {d: live_state(s.runner) for d, s in zip(device_ids, sessions, strict=True)}, self.tier)
        above = key.n_tiers - self.tier  # tiers from this one up
        compute = np.zeros((k, above))
        up = np.zeros((k, above - 1), dtype=np.int64)
        down = np.zeros((k, above - 1), dtype=np.int64)
        t0 = time.perf_counter()
        if above == 1:
            grads, result = group.forward_loss_backward(arrays, labels, track_input_grad=True)
            loss, correct = result.loss, result.correct
            own_s = time.perf_counter() - t0
        else:
            outs = group.forward(arrays, track_input_grad=True)
            own_s = time.perf_counter() - t0
            reply = step_upper_many(self.cloud, self.client, device_ids, outs, labels)
            t0 = time.perf_counter()
            grads = group.backward(reply.grads)
            own_s += time.perf_counter() - t0
            loss, correct = reply.loss, reply.correct
            compute[:, 1:] = reply.compute_s
            up[:, 0] = sum(o[0].nbytes for o in outs) + labels[0].nbytes  # per device, as step counts it
            down[:, 0] = sum(g[0].nbytes for g in reply.grads)
        compute[:, 0] = own_s / k  # the group's wall time, shared
        group.store_into([s.runner for s in sessions])
        for s in sessions:
            s.steps_done += 1
        return UpperGroupReply(grads, np.asarray(loss, dtype=np.float64), np.asarray(correct, dtype=np.int64),
                               compute, up, down)

    def _step_many(self, device_ids, sessions, arrays, labels) -> UpperGroupReply:
        raise NotImplementedError  # each tier says how its sessions step

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def open_session(self, device_id: str, key: SplitKey, state: Mapping[str, np.ndarray], weight: float,
                     optimizer_states: Mapping | None = None) -> None:
        runner = self.factory.runner(key, self.tier, self.optimizer, state)
        if optimizer_states:
            load_optimizer_state(runner, optimizer_states)
        with self.lock:
            self.sessions[device_id] = Session(device_id, self.tier, key, runner, weight)

    def open_sessions(self, openings: Sequence[tuple[str, SplitKey, float, Mapping | None]],
                      state: Mapping[str, np.ndarray]) -> None:
        """``open_session`` for many sessions from one ``state``, each ``(session_id, key, weight,
        optimizer states)``: one call per server instead of one per device."""
        for session_id, key, weight, optimizer_states in openings:
            self.open_session(session_id, key, state, weight, optimizer_states)

    def optimizer_state(self, session_id: str) -> dict:
        with self.lock:
            session = self.sessions.get(session_id)
            return {} if session is None else optimizer_state(session.runner)

    def close_session(self, device_id: str) -> bool:
        with self.lock:
            return self.sessions.pop(device_id, None) is not None

    def close_sessions(self, device_ids: Sequence[str]) -> list[bool]:
        """``close_session`` of each, in one call (a check's migrations drop thousands of sources)."""
        with self.lock:
            return [self.sessions.pop(d, None) is not None for d in device_ids]

    def load_weights(self, device_ids: Sequence[str], state: Mapping[str, np.ndarray]) -> None:
        with self.lock:
            for d in device_ids:
                load_partition(self.sessions[d].runner, state)

    def weighted_sums(self, groups: Mapping[str, Sequence[str]]) -> dict[str, WeightedSum]:
        out = {}
        with self.lock:
            for group, device_ids in groups.items():
                acc = WeightedSum()
                for d in device_ids:
                    if d in self.sessions:
                        s = self.sessions[d]
                        acc.add(state_views(s.runner), s.weight)
                out[group] = acc
        return out

    def session_ids(self) -> list[str]:
        return sorted(self.sessions)

    def session_state(self, session_id: str) -> dict[str, np.ndarray]:
        with self.lock:
            return partition_state(self.sessions[session_id].runner)

    def export_sessions(self) -> dict[str, tuple[dict, dict[str, np.ndarray]]]:
        with self.lock:
            return {sid: s.export() for sid, s in sorted(self.sessions.items())}

    def import_sessions(self, exported: Mapping[str, tuple[dict, Mapping[str, np.ndarray]]]) -> None:
        """Replace every session with the exported ones (a checkpoint being restored)."""
        sessions = {sid: Session.from_export(meta, arrays, self.factory, self.optimizer)
                    for sid, (meta, arrays) in exported.items()}
        with self.lock:
            self.sessions = sessions

    def shutdown(self) -> None:
        if self.server is not None:
            self.server.close()
        if self.receiver is not None:
            self.receiver.close()
        self.client.close()

    # ----- migration (FedFly): sessions move edge to edge over pyzmq, in two phases -----
    def _accept_session(self, session_id: str, meta: dict, arrays: dict[str, np.ndarray]) -> None:
        """Phase one at the destination: rebuild and verify the session; raising refuses it (NACK)."""
        if str(meta.get("device_id")) != session_id or int(meta.get("tier", -1)) != self.tier:
            raise ValueError(f"session header does not match {session_id!r} on tier {self.tier}")
        session = Session.from_export(meta, arrays, self.factory, self.optimizer)
        with self.lock:
            self.sessions[session_id] = session

    def migrate_out(self, device_id: str, endpoint: str, key: bytes, timeout_s: float) -> MigrationOutcome:
        """Send a session to another edge; the source copy stays until the orchestrator drops it."""
        from tierflow.migration.channel import send_state
        from tierflow.migration.errors import MigrationError

        t0 = time.perf_counter()
        with self.lock:  # no step of this session can run while it is being copied
            meta, arrays = self.sessions[device_id].export()
            try:
                stats = send_state(endpoint, key, device_id, meta, arrays, timeout_s=timeout_s)
            except MigrationError as exc:
                return MigrationOutcome(False, 0, time.perf_counter() - t0, str(exc))
        return MigrationOutcome(True, int(stats.bytes_), time.perf_counter() - t0)


class EdgeServer(SessionHost):
    """Trains the edge-side layers of each device it serves; forwards to the cloud for 3-tier splits."""

    tier = 1

    def __init__(self, name: str, model_name: str, shape: InputShape, optimizer: OptimizerSpec, cloud=None,
                 threads: int = 1, token: str = "", step_timeout_s: float = 60.0, engine: str = "looped",
                 peer: SessionHost | None = None):
        super().__init__(name, model_name, shape, optimizer, threads, token, step_timeout_s, engine, peer)
        self.cloud = cloud  # a Ray handle, or the cloud's data-plane endpoint once set

    def set_cloud_endpoint(self, endpoint: str) -> None:
        self.cloud = endpoint

    def step(self, device_id: str, arrays: list[np.ndarray], labels: np.ndarray) -> UpperReply:
        with self.lock:
            return self._step(device_id, arrays, labels)

    def _step(self, device_id: str, arrays: list[np.ndarray], labels: np.ndarray) -> UpperReply:
        session = self.sessions[device_id]
        runner = session.runner
        session.steps_done += 1
        if session.key.n_tiers == 2:
            t0 = time.perf_counter()
            grads, loss, correct = runner.forward_loss_backward(arrays, labels, track_input_grad=True)
            return UpperReply(grads, loss, correct, (time.perf_counter() - t0, 0.0), (0,), (0,))
        t0 = time.perf_counter()
        outs = runner.forward(arrays, track_input_grad=True)
        edge_s = time.perf_counter() - t0
        reply = step_upper(self.cloud, self.client, device_id, outs, labels)
        t0 = time.perf_counter()
        grads = runner.backward(reply.grads)
        edge_s += time.perf_counter() - t0
        return UpperReply(grads, reply.loss, reply.correct, (edge_s, reply.compute_s[0]),
                          (wire_bytes(outs) + labels.nbytes,), (wire_bytes(reply.grads),))

    def _step_many(self, device_ids, sessions, arrays, labels) -> UpperGroupReply:
        k = len(sessions)
        if sessions[0].key.n_tiers == 2:
            return _top_step_many(sessions, arrays, labels, 2)
        # 3 tiers: each session's forward, the group's one message to the cloud, each one's backward.
        edge_s = np.zeros(k)
        outs = []
        for i, session in enumerate(sessions):
            session.steps_done += 1
            t0 = time.perf_counter()
            outs.append(session.runner.forward([a[i] for a in arrays], track_input_grad=True))
            edge_s[i] = time.perf_counter() - t0
        stacked = [np.stack([o[j] for o in outs]) for j in range(len(outs[0]))]
        reply = step_upper_many(self.cloud, self.client, device_ids, stacked, labels)
        grads = []
        for i, session in enumerate(sessions):
            t0 = time.perf_counter()
            grads.append(session.runner.backward([g[i] for g in reply.grads]))
            edge_s[i] += time.perf_counter() - t0
        up = np.array([[wire_bytes(o) + labels[i].nbytes] for i, o in enumerate(outs)], dtype=np.int64)
        down = np.array([[wire_bytes([g[i] for g in reply.grads])] for i in range(k)], dtype=np.int64)
        return UpperGroupReply(_stack_grads(grads), reply.loss, reply.correct,
                               np.stack([edge_s, reply.compute_s[:, 0]], axis=1), up, down)


def _stack_grads(per_session: list[list[np.ndarray]]) -> list[np.ndarray]:
    return [np.stack([g[j] for g in per_session]) for j in range(len(per_session[0]))]


def _top_step_many(sessions: Sequence[Session], arrays: list[np.ndarray], labels: np.ndarray,
                   tiers_above_caller: int) -> UpperGroupReply:
    """The top stage of each session in turn: forward, loss, backward, step (what ``step`` does)."""
    k = len(sessions)
    grads, loss, correct = [], np.zeros(k), np.zeros(k, dtype=np.int64)
    compute = np.zeros((k, tiers_above_caller))
    for i, session in enumerate(sessions):
        session.steps_done += 1
        t0 = time.perf_counter()
        g, loss[i], correct[i] = session.runner.forward_loss_backward([a[i] for a in arrays], labels[i],
                                                                      track_input_grad=True)
        compute[i, 0] = time.perf_counter() - t0
        grads.append(g)
    links = tiers_above_caller - 1
    return UpperGroupReply(_stack_grads(grads), loss, correct, compute, np.zeros((k, links), dtype=np.int64),
                           np.zeros((k, links), dtype=np.int64))


class Cloud(SessionHost):
    """Trains the cloud-side layers of 3-tier splits; always the top stage, so it computes the loss."""

    tier = 2

    def _step_many(self, device_ids, sessions, arrays, labels) -> UpperGroupReply:
        return _top_step_many(sessions, arrays, labels, 1)

    def step(self, device_id: str, arrays: list[np.ndarray], labels: np.ndarray) -> UpperReply:
        with self.lock:
            session = self.sessions[device_id]
            session.steps_done += 1
            t0 = time.perf_counter()
            grads, loss, correct = session.runner.forward_loss_backward(arrays, labels, track_input_grad=True)
            return UpperReply(grads, loss, correct, (time.perf_counter() - t0,), (), ())
