"""The fleet: the tier actors of one run, and the only place the orchestrator calls Ray.

The round loop and the round policies decide; the fleet carries the decisions to the actors and
brings back typed results. Every Ray call (actor start and stop, ``.remote``, ``ray.get``/``wait``
/``put``/``kill``) of the orchestrator is a method here, so a test can put a fleet with faults in
its place (a subclass that kills an actor before a call) and the rest of the run sees only the
results: failures are data (``TrainBatch.failed``, ``MigrationOutcome.ok``), never a Ray exception.

Edge servers are logical: ``execution.edge_hosts`` actors hold them all (tiers/edge_host.py), and
every edge call here names its edge, so the rest of the orchestrator sees edges by name only.

What the fleet tracks is what only it can know: which actors answer (``lost_hosts``; an edge
that stopped answering is dropped by ``drop_dead_edges``) and where each one's endpoints are.
Where a device's session is, and with which split, is the caller's state, given with each call.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray

from tierflow.migration.outcome import MigrationOutcome
from tierflow.orchestrator.aggregation import restrict
from tierflow.orchestrator.scenario import CLOUD_EDGE, Scenario
from tierflow.tiers.actors import CloudActor, DeviceHostActor, EdgeHostActor, actor_options
from tierflow.tiers.aggregate import WeightedSum
from tierflow.tiers.edge_host import assign_edges
from tierflow.tiers.hosts import DeviceSetup
from tierflow.tiers.session import SplitKey
from tierflow.tiers.train_report import TrainReport
from tierflow.tiers.upper import route

State = Mapping[str, np.ndarray]
CLOUD = "cloud"  # the cloud tier's server, as a server name beside the edges'
DEVICE_HOST_RESTARTS = 3  # Ray restarts a dead device host this many times; its devices then rejoin


@dataclass(frozen=True)
class Shared:
    """A model state placed once in the object store, to be read by many actors."""

    ref: Any


@dataclass(frozen=True)
class StageOpening:
    """Build a device's stages for ``key``: on its host, and on ``edge`` (and the cloud) as the split
    says. ``optimizer_state`` carries each layer's optimizer state over a re-split."""

    device_id: str
    key: SplitKey
    edge: str | None
    weight: float
    optimizer_state: dict | None = None


@dataclass(frozen=True)
class TrainJob:
    device_id: str
    steps: int
    edge: str | None  # the edge holding the session the device steps against
    session_id: str | None = None  # a session not the device's own (a ring's)


@dataclass(frozen=True)
class TrainBatch:
    reports: list[TrainReport]
    failed: dict[str, str]  # device -> why its segment failed (its others' work counts)


@dataclass(frozen=True)
class CarriedStage:
    """A device-side stage exported by its host and left in the object store, to travel to the next
    member of a ring without passing through the orchestrator."""

    meta: Any
    arrays: Any


@dataclass(frozen=True)
class SessionMove:
    session_id: str
    src: str
    dst: str


@dataclass(frozen=True)
class ActorsSnapshot:
    """What the actors hold at a checkpoint: devices' stages and samplers, servers' sessions."""

    devices: dict[str, Any]
    sessions: dict[str, Any]  # server (edge name or "cloud") -> its exported sessions


# ----- the connection (made before the run directory is claimed; orchestrator/cluster.py decides where) -----
def connected_address() -> str | None:
    """The cluster this process is connected to already (an embedding program, a test session)."""
    return ray.get_runtime_context().gcs_address if ray.is_initialized() else None


def connect_ray(address: str, local_cpus: int | None) -> None:
    """Join the cluster at ``address`` or, with ``local_cpus``, start a private instance there;
    any failure is a ConnectionError with Ray's reason."""
    try:
        if local_cpus is None:
            ray.init(address=address, logging_level="WARNING", log_to_driver=True)
        else:
            ray.init(address=address, num_cpus=local_cpus, include_dashboard=False, logging_level="WARNING",
                     configure_logging=True)
    except (ConnectionError, RuntimeError, ValueError, OSError, ray.exceptions.RayError) as exc:
        raise ConnectionError(str(exc).strip() or type(exc).__name__) from exc


def reload_ray_config() -> None:
    """Ray reads its authentication mode from its config, which must be re-read after the variable changes."""
    try:
        from ray._raylet import Config
    except ImportError:
        return
    Config.initialize("")


def dataplane_host() -> str | None:
    """Loopback when every Ray node is this machine; otherwise each actor binds its node's address."""
    addresses = {n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive")}
    return "127.0.0.1" if addresses <= {ray.util.get_node_ip_address(), "127.0.0.1"} else None


class Fleet:
    """One cloud actor, ``execution.edge_hosts`` edge hosts holding the logical edge servers, and
    ``execution.device_hosts`` device hosts."""

    def __init__(self, scenario: Scenario, shape, host_of: Mapping[str, int]):
        self.scenario = scenario
        self.shape = shape
        self.host_of = dict(host_of)
        self.n_hosts = max(self.host_of.values(), default=-1) + 1
        self.migration_key = secrets.token_bytes(32)  # per run: the edges' migration channel
        self.token = secrets.token_hex(16)  # per run: data-plane messages without it are refused
        self.lost_hosts: set[int] = set()  # device hosts that died or missed a deadline, until they answer
        self.edges: dict[str, Any] = {}  # live logical edge -> the actor of its host
        self.endpoints: dict[str, str] = {}  # logical edge -> its host's data-plane endpoint
        self.receivers: dict[str, str] = {}  # logical edge -> its host's migration receiver
        self.edge_hosts: list[Any] = []
        self.edge_names: list[list[str]] = []  # per edge host, the logical edges it was started with

    # ----- life -----
    def start(self, setups: Sequence[Sequence[DeviceSetup]]) -> None:
        """Start every actor, their data planes and migration receivers, and give each host its devices.

        Every call is sent before any is awaited, and one ``ray.get`` waits for them all: the actors'
        processes start and import torch side by side, and a call that needs another actor's answer
        (an edge's cloud endpoint) takes it as an object ref, which Ray resolves before running it."""
        sc = self.scenario
        opt, model, timeout = sc.training.optimizer, sc.model.name, sc.policy.step_timeout_s
        self.cloud = CloudActor.options(**actor_options("cloud")).remote(
            CLOUD, model, self.shape, opt, 1, self.token, timeout, sc.execution.engine)
        self.edge_names = assign_edges([e.name for e in sc.edges], sc.execution.edge_hosts)
        self.edge_hosts = [EdgeHostActor.options(**actor_options("edge")).remote(
            f"edges{h}", names, model, self.shape, opt, self.cloud, 1, self.token, timeout, sc.execution.engine)
            for h, names in enumerate(self.edge_names)]
        # A device host holds no state the orchestrator cannot give it again, so Ray may restart it;
        # its devices then rejoin at the next period.
        self.hosts = [DeviceHostActor.options(**actor_options("device", max_restarts=DEVICE_HOST_RESTARTS)).remote(
            f"host{i}", model, self.shape, opt, 1, self.token, timeout, sc.execution.engine)
            for i in range(self.n_hosts)]
        self.bind = dataplane_host()
        cloud_endpoint = self.cloud.start_dataplane.remote(self.bind)
        wiring = [self._wire_edge_calls(actor, cloud_endpoint) for actor in self.edge_hosts]
        added = [host.add_devices.remote(list(setups[h])) for h, host in enumerate(self.hosts)]
        got = ray.get([cloud_endpoint, *(c for calls in wiring for c in calls), *added])
        self.cloud_endpoint = got[0]
        for k, actor in enumerate(self.edge_hosts):
            self._add_edges(self.edge_names[k], actor, got[1 + 3 * k], got[3 + 3 * k])

    def _add_edges(self, names: Sequence[str], actor, endpoint: str, receiver: str) -> None:
        for name in names:
            self.edges[name], self.endpoints[name], self.receivers[name] = actor, endpoint, receiver

    def _edge(self, name: str, method: str, *args):
        """One control call of the logical edge ``name``, sent to its host."""
        return self.edges[name].on.remote(name, method, *args)

    def _wire_edge_calls(self, actor, cloud_endpoint) -> list:
        """An edge host's data plane, its link to the cloud's and its migration receiver: three calls in flight."""
        return [actor.start_dataplane.remote(self.bind), actor.set_cloud_endpoint.remote(cloud_endpoint),
                actor.start_migration_receiver.remote(self.migration_key, self.bind)]

    def ensure_cloud_edge(self) -> str:
        """Start (once) the cloud's own edge-tier host: the server of last resort for re-homed devices."""
        if CLOUD_EDGE not in self.edges:
            sc = self.scenario
            actor = EdgeHostActor.options(**actor_options("cloud")).remote(
                f"edges{len(self.edge_hosts)}", [CLOUD_EDGE], sc.model.name, self.shape, sc.training.optimizer,
                self.cloud, 1, self.token, sc.policy.step_timeout_s, sc.execution.engine)
            endpoint, _, receiver = ray.get(self._wire_edge_calls(actor, self.cloud_endpoint))
            self.edge_hosts.append(actor)
            self.edge_names.append([CLOUD_EDGE])
            self._add_edges([CLOUD_EDGE], actor, endpoint, receiver)
        return CLOUD_EDGE

    def _per_edge(self, method: str, timeout_s: float | None = None) -> dict[str, Any]:
        """``method()`` of each live edge's host, asked once per host; an edge's answer is its host's
        (what a logical edge shares with its host-mates: its process, its node, its ports)."""
        hosts: dict[Any, list[str]] = {}
        for name, actor in self.edges.items():
            hosts.setdefault(actor, []).append(name)
        refs = {getattr(actor, method).remote(): names for actor, names in hosts.items()}
        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
        out = {}
        for ref in ready:
            try:
                value = ray.get(ref)
            except ray.exceptions.RayError:  # a dead host: its failure is reported where it is found
                continue
            out.update(dict.fromkeys(refs[ref], value))
        return out

    def actor_nodes(self) -> dict[str, str]:
        """Which Ray node each actor runs on (the summary shows where a cluster put them); an edge's
        is its host's."""
        edges = self._per_edge("node_id")
        names = ["cloud", *(f"devices:{i}" for i in range(self.n_hosts))]
        got = dict(zip(names, ray.get([a.node_id.remote() for a in [self.cloud, *self.hosts]]), strict=True))
        return {"cloud": got["cloud"], **{f"edge:{n}": edges[n] for n in self.edges},
                **{n: got[n] for n in names[1:]}}

    def stop(self) -> None:
        for actor in [self.cloud, *self.edge_hosts, *self.hosts]:
            ray.kill(actor)

    def share(self, state: State) -> Shared:
        return Shared(ray.put(dict(state)))

    def _ref(self, state: State | Shared):
        return state.ref if isinstance(state, Shared) else ray.put(dict(state))

    def _server_call(self, name: str, method: str, *args):
        """A SessionHost call on the cloud or on a logical edge."""
        return getattr(self.cloud, method).remote(*args) if name == CLOUD else self._edge(name, method, *args)

    def is_hosted(self, device_id: str) -> bool:
        return self.host_of[device_id] not in self.lost_hosts

    # ----- stages and sessions -----
    def open(self, openings: Iterable[StageOpening], state: State | Shared, fresh: bool = False,
             servers: bool = True) -> None:
        """Build devices' stages from ``state``: on their hosts (``fresh``: optimizer state too) and,
        with ``servers``, their edge and cloud sessions. One call per host and per server, not per
        device: a metro opens 20,000 stages at start."""
        openings = list(openings)
        ref = self._ref(state)
        by_host: dict[int, list[tuple]] = {}
        for o in openings:
            by_host.setdefault(self.host_of[o.device_id], []).append((o.device_id, o.key, o.optimizer_state))
        calls = [self.hosts[h].configure_many.remote(configs, ref, fresh) for h, configs in by_host.items()]
        if servers:
            calls.extend(self._open_server_calls(openings, ref))
        ray.get(calls)

    def open_sessions(self, openings: Iterable[StageOpening], state: State | Shared) -> None:
        """Server-side sessions only (a ring's, keyed by its id)."""
        ray.get(self._open_server_calls(list(openings), self._ref(state)))

    def _open_server_calls(self, openings: Sequence[StageOpening], ref) -> list:
        """The openings' edge and cloud sessions, one call per server."""
        by_server: dict[str, list[tuple]] = {}
        for o in openings:
            entry = (o.device_id, o.key, o.weight, o.optimizer_state)
            if o.key.n_tiers >= 2 and o.edge is not None:
                by_server.setdefault(o.edge, []).append(entry)
            if o.key.n_tiers == 3:
                by_server.setdefault(CLOUD, []).append(entry)
        return [self._server_call(server, "open_sessions", entries, ref) for server, entries in by_server.items()]

    def close_sessions(self, where: Iterable[tuple[str, str]]) -> None:
        """Drop sessions, each named by (server, session id); a server that is gone holds nothing."""
        by_server: dict[str, list[str]] = {}
        for server, sid in where:
            if server == CLOUD or server in self.edges:
                by_server.setdefault(server, []).append(sid)
        ray.get([self._server_call(server, "close_sessions", ids) for server, ids in by_server.items()])

    def session_ids(self) -> dict[str, list[str]]:
        """Every server's open sessions."""
        names = [*self.edges, CLOUD]
        return dict(zip(names, ray.get([self._server_call(n, "session_ids") for n in names]), strict=True))

    def optimizer_states(self, parts: Mapping[str, Sequence[str]]) -> dict[str, dict]:
        """Each device's optimizer state, merged over the places listed for it ("host", an edge, "cloud")."""
        refs = {d: [self.hosts[self.host_of[d]].optimizer_state.remote(d) if p == "host"
                    else self._server_call(p, "optimizer_state", d) for p in places]
                for d, places in parts.items()}
        got = iter(ray.get([r for rs in refs.values() for r in rs]))
        out: dict[str, dict] = {}
        for d, rs in refs.items():
            merged: dict = {}
            for _ in rs:
                merged.update(next(got))
            out[d] = merged
        return out

    def load_weights(self, state: State | Shared, devices: Sequence[str],
                     served: Mapping[str, Sequence[str]] = {}) -> None:
        """Load ``state`` into the listed devices' stages (on hosts that answer) and into the server
        sessions ``served`` lists (server -> session ids)."""
        ref = self._ref(state)
        calls = []
        for h, host in enumerate(self.hosts):
            mine = [d for d in devices if self.host_of[d] == h]
            if mine and h not in self.lost_hosts:
                calls.append(host.load_weights.remote(mine, ref))
        for server, ids in served.items():
            if ids:
                calls.append(self._server_call(server, "load_weights", list(ids), ref))
        ray.get(calls)

    def weighted_sums(self, groups: Mapping[str, Sequence[str]], session_at: Mapping[str, str | None]
                      ) -> dict[str, WeightedSum]:
        """Each group's sample-weighted parameter sums, gathered from every tier that holds a part."""
        calls = []
        for h, host in enumerate(self.hosts):
            if h not in self.lost_hosts:
                mine = {d for d, hh in self.host_of.items() if hh == h}
                calls.append(host.weighted_sums.remote(restrict(groups, mine)))
        for name in self.edges:
            served = {d for d, e in session_at.items() if e == name}
            calls.append(self._edge(name, "weighted_sums", restrict(groups, served)))
        calls.append(self.cloud.weighted_sums.remote(dict(groups)))
        totals = {g: WeightedSum() for g in groups}
        for part in ray.get(calls):
            for g, s in part.items():
                totals[g].merge(s)
        return totals

    # ----- training -----
    def train(self, jobs: Iterable[TrainJob]) -> TrainBatch:
        """Train each job, all hosts at once; a host that died or did not answer within
        ``policy.round_deadline_s`` fails its jobs and is lost until it answers again."""
        by_host: dict[int, list[TrainJob]] = {}
        for job in sorted(jobs, key=lambda j: j.device_id):
            by_host.setdefault(self.host_of[job.device_id], []).append(job)
        calls = {h: self.hosts[h].train_many.remote(
            [(j.device_id, j.steps, route(self.endpoints[j.edge], j.edge), j.edge, j.session_id) for j in js])
            for h, js in by_host.items()}
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
                failed.update({j.device_id: why for j in by_host[h]})
                continue
            for r in batch:
                if r.not_hosted:
                    self.lost_hosts.add(h)
                if r.error:
                    failed[r.device_id] = r.error
                else:
                    reports.append(r)
        return TrainBatch(reports, failed)

    def export_stages(self, devices: Iterable[str]) -> dict[str, CarriedStage]:
        out = {}
        for d in devices:
            meta, arrays = self.hosts[self.host_of[d]].export_stage.options(num_returns=2).remote(d)
            out[d] = CarriedStage(meta, arrays)
        return out

    def load_stages(self, fresh: Sequence[StageOpening], state: State | Shared,
                    carried: Mapping[str, CarriedStage]) -> None:
        """Device-side stages for a ring's hop: ``fresh`` ones built from ``state`` with a fresh
        optimizer, the others imported from the stage the ring's last hop exported."""
        ref = self._ref(state) if fresh else None
        ray.get([self.hosts[self.host_of[o.device_id]].configure.remote(o.device_id, o.key, ref, True)
                 for o in fresh]
                + [self.hosts[self.host_of[d]].import_stage.remote(d, s.meta, s.arrays) for d, s in carried.items()])

    def fetch(self, stages: Sequence[CarriedStage], sessions: Sequence[tuple[str, str]]
              ) -> tuple[list[dict], list[dict]]:
        """The arrays of carried stages, and the state of server sessions named (server, session id)."""
        got = ray.get([s.arrays for s in stages] + [self._server_call(srv, "session_state", sid)
                                                    for srv, sid in sessions])
        return got[:len(stages)], got[len(stages):]

    # ----- moving sessions between edges (two-phase, over the migration channel) -----
    def migrate(self, move: SessionMove) -> MigrationOutcome:
        """Copy a session to ``dst``, which verifies and acknowledges it; only then drop it at ``src``."""
        return self.migrate_many([move])[0]

    def migrate_many(self, moves: Sequence[SessionMove]) -> list[MigrationOutcome]:
        """Several moves at once (each session moved once), outcomes in the order of ``moves``.

        The moves between one pair of edges travel as one batched transfer, verified per session; a
        move between two edges of one host goes over the same channel, through the host's own
        receiver. One call per edge host carries all its edges' transfers. Any edge may send and
        receive among them: a sender holds its lock only while it copies its sessions out."""
        timeout = self.scenario.policy.migration_timeout_s
        pairs: dict[tuple[str, str], list[int]] = {}
        for i, m in enumerate(moves):
            pairs.setdefault((m.src, m.dst), []).append(i)
        by_host: dict[int, tuple[Any, list[tuple[str, str]]]] = {}
        for pair in pairs:
            actor = self.edges[pair[0]]
            by_host.setdefault(id(actor), (actor, []))[1].append(pair)
        calls = [(host_pairs, actor.migrate_out_many.remote(
            [(src, [moves[i].session_id for i in pairs[(src, dst)]], dst, self.receivers[dst])
             for src, dst in host_pairs], self.migration_key, timeout)) for actor, host_pairs in by_host.values()]
        outs: list[MigrationOutcome | None] = [None] * len(moves)
        for (host_pairs, _), got in zip(calls, ray.get([ref for _, ref in calls]), strict=True):
            for pair, pair_outs in zip(host_pairs, got, strict=True):
                for i, out in zip(pairs[pair], pair_outs, strict=True):
                    outs[i] = out
        self.close_sessions((m.src, m.session_id) for m, out in zip(moves, outs, strict=True) if out.ok)
        return outs

    # ----- faults -----
    def host_answers(self, host: int) -> bool:
        try:
            ray.get(self.hosts[host].ping.remote(), timeout=self.scenario.policy.step_timeout_s)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            return False
        return True

    def rejoin_host(self, host: int, setups: Sequence[DeviceSetup], configs: Mapping[str, tuple[SplitKey, State]]
                    ) -> None:
        """Give a host that answers again its devices, each stage built from the state given."""
        actor = self.hosts[host]
        ray.get(actor.add_devices.remote(list(setups)))
        ray.get([actor.configure.remote(d, key, ray.put(dict(state))) for d, (key, state) in configs.items()])
        self.lost_hosts.discard(host)

    def drop_dead_edges(self) -> list[str]:
        """Forget the edges that are gone (their host died, or they were killed in it); returns their names."""
        dead = []
        pings = {name: edge.ping.remote(name) for name, edge in self.edges.items()}  # all in flight at once
        for name, ref in pings.items():
            try:
                alive = ray.get(ref, timeout=5) == name
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                alive = False
            if not alive:
                del self.edges[name]
                dead.append(name)
        return dead

    def crash_edge(self, name: str) -> None:
        """Fault injection: edge ``name`` stops as if its process died, and stays listed until
        :meth:`drop_dead_edges` notices. Alone in its host, the host is killed; sharing it, the host
        drops that edge (its sessions are gone, its messages refused) and its host-mates go on."""
        actor = self.edges[name]
        if [n for n, a in self.edges.items() if a == actor] == [name]:
            ray.kill(actor)
        else:
            ray.get(actor.kill.remote(name))

    def kill_edge(self, name: str) -> None:
        """Stop edge ``name`` (see :meth:`crash_edge`) and forget it."""
        self.crash_edge(name)
        del self.edges[name]

    def refused_counts(self, timeout_s: float) -> dict[str, dict]:
        """Each answering server's cumulative counts of messages its zmq ports refused; an edge host's
        ports are shared, so they are counted once, under the first edge it was started with (a
        fixed name, as the counts are cumulative), while any of its edges is alive."""
        actors = {CLOUD: self.cloud, **{names[0]: actor for actor, names in zip(self.edge_hosts, self.edge_names,
                                                                               strict=True)
                                        if any(n in self.edges for n in names)}}
        refs = {actors[name].refused_counts.remote(): name for name in actors}
        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
        out = {}
        for ref in ready:
            try:
                out[refs[ref]] = ray.get(ref)
            except ray.exceptions.RayError:  # a dead edge: its failure is reported where it is found
                continue
        return out

    def peak_rss_bytes(self, timeout_s: float) -> dict[str, int]:
        """Each answering actor's peak resident memory, named as in :meth:`actor_nodes`."""
        named = {"cloud": self.cloud,
                 **{f"devices:{i}": a for i, a in enumerate(self.hosts) if i not in self.lost_hosts}}
        refs = {actor.peak_rss_bytes.remote(): name for name, actor in named.items()}
        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
        out = {f"edge:{n}": b for n, b in self._per_edge("peak_rss_bytes", timeout_s).items()}
        for ref in ready:
            try:
                out[refs[ref]] = ray.get(ref)
            except ray.exceptions.RayError:  # an actor lost at the end: nothing to report for it
                continue
        return dict(sorted(out.items()))

    # ----- checkpoints -----
    def snapshot(self) -> ActorsSnapshot:
        hosts = [h for h in range(self.n_hosts) if h not in self.lost_hosts]
        names = list(self.edges)
        parts = ray.get([self.hosts[h].export_devices.remote() for h in hosts]
                        + [self._edge(n, "export_sessions") for n in names]
                        + [self.cloud.export_sessions.remote()])
        devices: dict = {}
        for part in parts[:len(hosts)]:
            devices.update(part)
        return ActorsSnapshot(devices, dict(zip([*names, CLOUD], parts[len(hosts):], strict=True)))

    def restore(self, snapshot: ActorsSnapshot, missing: Mapping[str, SplitKey], state: State) -> None:
        """Put every actor back as ``snapshot`` holds it; a device it lacks (its host was lost at the
        checkpoint) starts from ``state``, as on rejoin."""
        ref = ray.put(dict(state))
        calls = []
        for h, host in enumerate(self.hosts):
            mine = [d for d, hh in self.host_of.items() if hh == h]
            calls.append(host.import_devices.remote({d: snapshot.devices[d] for d in mine if d in snapshot.devices}))
            calls.extend(host.configure.remote(d, missing[d], ref) for d in mine if d in missing)
        for name in self.edges:
            calls.append(self._edge(name, "import_sessions", snapshot.sessions.get(name, {})))
        calls.append(self.cloud.import_sessions.remote(snapshot.sessions.get(CLOUD, {})))
        ray.get(calls)
