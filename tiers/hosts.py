"""What the tier actors do, as plain classes: Ray wraps them in tiers/actors.py.

Keeping the logic free of Ray lets the oracle tests drive exactly this code in one process,
and keeps the actors to one job: execute; the orchestrator decides.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from tierflow.migration.outcome import MigrationOutcome
from tierflow.tiers.aggregate import WeightedSum
from tierflow.tiers.dataplane import DataPlaneClient, DataPlaneServer
from tierflow.tiers.memory import ReportsPeakMemory
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
)
from tierflow.tiers.step import wire_bytes


def call(target, method: str, *args):
    """Call ``target.method(*args)`` whether target is a Ray actor handle or a plain object."""
    bound = getattr(target, method)
    if hasattr(bound, "remote"):
        import ray

        return ray.get(bound.remote(*args))
    return bound(*args)


@dataclass(frozen=True)
class UpperReply:
    """What the tier above answers to one step: input gradients and what the step cost up there."""

    grads: list[np.ndarray]
    loss: float
    correct: int
    compute_s: tuple[float, ...]  # per tier above the caller
    bytes_up: tuple[int, ...]  # per link above the caller
    bytes_down: tuple[int, ...]


def _reply_to_wire(reply: UpperReply) -> tuple[dict, dict[str, np.ndarray]]:
    meta = {"correct": reply.correct, "compute_s": list(reply.compute_s),
            "bytes_up": list(reply.bytes_up), "bytes_down": list(reply.bytes_down), "n": len(reply.grads)}
    arrays = {f"g{i}": g for i, g in enumerate(reply.grads)}
    arrays["loss"] = np.array(reply.loss)  # an array, not JSON: a poisoned step's loss is NaN
    return meta, arrays


def _reply_from_wire(meta: dict, arrays: dict[str, np.ndarray]) -> UpperReply:
    grads = [arrays[f"g{i}"] for i in range(int(meta["n"]))]
    return UpperReply(grads, float(arrays["loss"]), int(meta["correct"]), tuple(meta["compute_s"]),
                      tuple(meta["bytes_up"]), tuple(meta["bytes_down"]))


def step_upper(link, client: DataPlaneClient | None, device_id: str, arrays: list[np.ndarray],
               labels: np.ndarray) -> UpperReply:
    """One step on the tier above: over the pyzmq data plane when ``link`` is an endpoint."""
    if isinstance(link, str):
        payload = {f"a{i}": a for i, a in enumerate(arrays)}
        payload["labels"] = labels
        meta, out = client.request(link, {"op": "step", "device": device_id, "n": len(arrays)}, payload)
        return _reply_from_wire(meta, out)
    return call(link, "step", device_id, arrays, labels)


NOT_HOSTED = "device not hosted here (its host restarted and lost it)"


@dataclass(frozen=True)
class TrainReport:
    """One device's local training since the last report: the clock and the metrics read it."""

    device_id: str
    edge: str | None
    steps: int
    samples: int
    loss_sum: float
    correct: int
    compute_s: tuple[float, float, float]  # device, edge, cloud
    bytes_up: tuple[int, int]  # device-edge, edge-cloud
    bytes_down: tuple[int, int]
    n_tiers: int
    finite: bool = True
    error: str = ""  # non-empty: the segment failed (e.g. its edge stopped answering); not aggregated
    not_hosted: bool = False  # the host restarted and lost the device: it must be given its devices again


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

    def next_indices(self) -> np.ndarray:
        if self.pos + self.batch_size > self.n:
            self.order, self.pos = self.rng.permutation(self.n), 0
        idx = self.order[self.pos:self.pos + self.batch_size]
        self.pos += self.batch_size
        return np.sort(idx)


@dataclass
class LogicalDevice:
    setup: DeviceSetup
    sampler: BatchSampler
    session: Session | None = None  # the device-side stage, as a session of tier 0
    stats: dict = field(default_factory=dict)


class DeviceHost(ReportsPeakMemory):
    """Hosts many logical devices in one process; trains each against its edge server."""

    def __init__(self, host_id: str, model_name: str, shape: InputShape, optimizer: OptimizerSpec,
                 threads: int = 1, token: str = "", step_timeout_s: float = 60.0):
        torch.set_num_threads(threads)
        self.host_id = host_id
        self.client = DataPlaneClient(token, step_timeout_s)
        self.factory = StageFactory(model_name, shape)
        self.optimizer = optimizer
        self.devices: dict[str, LogicalDevice] = {}

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
        device = self.devices[device_id]
        upper_id = session_id or device_id
        session = device.session
        runner = session.runner
        n_tiers = session.key.n_tiers
        compute = [0.0, 0.0, 0.0]
        up, down = [0, 0], [0, 0]
        loss_sum, correct, samples = 0.0, 0, 0
        for _ in range(steps):
            idx = device.sampler.next_indices()
            x, y = device.setup.x[idx], device.setup.y[idx]
            if n_tiers == 1:
                t0 = time.perf_counter()
                _, loss, ok = runner.forward_loss_backward([x], y, track_input_grad=False)
                compute[0] += time.perf_counter() - t0
            else:
                t0 = time.perf_counter()
                acts = runner.forward([x], track_input_grad=False)
                compute[0] += time.perf_counter() - t0
                up[0] += wire_bytes(acts) + y.nbytes
                reply = step_upper(edge, self.client, upper_id, acts, y)
                down[0] += wire_bytes(reply.grads)
                t0 = time.perf_counter()
                runner.backward(reply.grads)
                compute[0] += time.perf_counter() - t0
                loss, ok = reply.loss, reply.correct
                for k, c in enumerate(reply.compute_s):
                    compute[1 + k] += c
                for k, b in enumerate(reply.bytes_up):
                    up[1 + k] += b
                for k, b in enumerate(reply.bytes_down):
                    down[1 + k] += b
            loss_sum += loss * len(y)
            correct += ok
            samples += len(y)
            session.steps_done += 1
        finite = bool(np.isfinite(loss_sum)) and all(
            bool(torch.isfinite(p).all()) for p in runner.module.parameters())
        return TrainReport(device_id, edge_name, steps, samples, loss_sum, correct, tuple(compute), tuple(up),
                           tuple(down), n_tiers, finite)

    def train_many(self, jobs: Sequence[tuple[str, int, object, str | None]]) -> list[TrainReport]:
        """Train each job in turn; one device's failure is reported as data, the others still train."""
        out = []
        for job in jobs:
            if job[0] not in self.devices:  # this host restarted and has not been given its devices again
                out.append(TrainReport(job[0], job[3], 0, 0, 0.0, 0, (0.0, 0.0, 0.0), (0, 0), (0, 0), 0, True,
                                       NOT_HOSTED, not_hosted=True))
                continue
            try:
                out.append(self.train(*job))
            except Exception as exc:  # a dead edge, a refused step: a failure of this device only
                device_id, _, _, edge_name = job[:4]
                n_tiers = self.devices[device_id].session.key.n_tiers
                out.append(TrainReport(device_id, edge_name, 0, 0, 0.0, 0, (0.0, 0.0, 0.0), (0, 0), (0, 0),
                                       n_tiers, True, f"{type(exc).__name__}: {exc}"))
        return out

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
                acc.add(partition_state(session.runner), session.weight)
            out[group] = acc
        return out


class SessionHost(ReportsPeakMemory):
    """Common to edge and cloud: sessions keyed by device, loading weights, partial sums."""

    tier: int = 1

    def __init__(self, name: str, model_name: str, shape: InputShape, optimizer: OptimizerSpec, threads: int = 1,
                 token: str = "", step_timeout_s: float = 60.0):
        torch.set_num_threads(threads)
        self.name = name
        self.factory = StageFactory(model_name, shape)
        self.optimizer = optimizer
        self.sessions: dict[str, Session] = {}
        self.token = token
        self.client = DataPlaneClient(token, step_timeout_s)
        self.server: DataPlaneServer | None = None
        self.receiver = None  # migration.channel.MigrationReceiver, once started
        # Steps arrive on the data-plane thread; control calls on Ray's. Sessions are shared.
        self.lock = threading.RLock()

    def ping(self) -> str:
        return self.name

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

    def _on_message(self, meta: dict, arrays: dict[str, np.ndarray]) -> tuple[dict, dict[str, np.ndarray]]:
        if meta.get("op") != "step":
            raise ValueError(f"unknown op {meta.get('op')!r}")
        n = int(meta["n"])
        reply = self.step(str(meta["device"]), [arrays[f"a{i}"] for i in range(n)], arrays["labels"])
        return _reply_to_wire(reply)

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def open_session(self, device_id: str, key: SplitKey, state: Mapping[str, np.ndarray], weight: float,
                     optimizer_states: Mapping | None = None) -> None:
        runner = self.factory.runner(key, self.tier, self.optimizer)
        load_partition(runner, state)
        if optimizer_states:
            load_optimizer_state(runner, optimizer_states)
        with self.lock:
            self.sessions[device_id] = Session(device_id, self.tier, key, runner, weight)

    def optimizer_state(self, session_id: str) -> dict:
        with self.lock:
            session = self.sessions.get(session_id)
            return {} if session is None else optimizer_state(session.runner)

    def close_session(self, device_id: str) -> bool:
        with self.lock:
            return self.sessions.pop(device_id, None) is not None

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
                        acc.add(partition_state(s.runner), s.weight)
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
    def start_migration_receiver(self, key: bytes, host: str | None = "127.0.0.1") -> str:
        from tierflow.migration.channel import MigrationReceiver

        if host is None:
            import ray

            host = ray.util.get_node_ip_address()
        if self.receiver is None:
            self.receiver = MigrationReceiver(key, self._accept_session, host=host)
        return self.receiver.endpoint

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
                 threads: int = 1, token: str = "", step_timeout_s: float = 60.0):
        super().__init__(name, model_name, shape, optimizer, threads, token, step_timeout_s)
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


class Cloud(SessionHost):
    """Trains the cloud-side layers of 3-tier splits; always the top stage, so it computes the loss."""

    tier = 2

    def step(self, device_id: str, arrays: list[np.ndarray], labels: np.ndarray) -> UpperReply:
        with self.lock:
            session = self.sessions[device_id]
            session.steps_done += 1
            t0 = time.perf_counter()
            grads, loss, correct = session.runner.forward_loss_backward(arrays, labels, track_input_grad=True)
            return UpperReply(grads, loss, correct, (time.perf_counter() - t0,), (), ())
