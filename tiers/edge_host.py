"""Many logical edge servers in one process, as a DeviceHost holds many logical devices.

An actor is a process (~300 MB with torch): a city of edges cannot have one each. An EdgeHost
holds several EdgeServers that share one traced model, one engine choice, one data-plane port and
one migration receiver. Steps name their edge in the message (``upper.route``); migrations name
theirs in the session header (``TO_EDGE``). A move between two edges of one host goes through the
same channel as one across hosts (encode, MAC, ACK over loopback, then the source drops its copy),
so bytes are counted and the MAC checked either way.

Killing a logical edge (``kill``) drops its sessions and makes it refuse everything, as a dead
process would; its host-mates go on. Killing the process kills every edge it holds.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from tierflow.migration.outcome import MigrationOutcome
from tierflow.tiers.dataplane import DataPlaneServer
from tierflow.tiers.hosts import EdgeServer, ServesPorts
from tierflow.tiers.memory import ReportsPeakMemory
from tierflow.tiers.models import InputShape
from tierflow.tiers.optim import OptimizerSpec

TO_EDGE = "to_edge"  # session-header key naming the logical edge a migrated session is for

# What the fleet may ask of one logical edge (``EdgeHost.on``): its SessionHost control calls.
EDGE_CALLS = frozenset({"open_session", "open_sessions", "close_session", "close_sessions", "session_ids",
                        "optimizer_state", "load_weights", "weighted_sums", "session_state", "export_sessions",
                        "import_sessions"})


def assign_edges(names: Sequence[str], hosts: int) -> list[list[str]]:
    """Edges to hosts, round robin in scenario order: deterministic, and balanced to within one."""
    n = max(1, min(hosts, len(names)))
    return [list(names[h::n]) for h in range(n)] if names else []


class EdgeGone(RuntimeError):
    """The logical edge was killed (or never hosted here)."""


class EdgeHost(ReportsPeakMemory, ServesPorts):
    """Hosts the logical edge servers ``names`` in one process."""

    def __init__(self, host_id: str, names: Sequence[str], model_name: str, shape: InputShape,
                 optimizer: OptimizerSpec, cloud=None, threads: int = 1, token: str = "",
                 step_timeout_s: float = 60.0, engine: str = "looped"):
        assert names, "an edge host holds at least one edge"
        self.host_id = host_id
        self.token = token
        self.edges: dict[str, EdgeServer] = {}
        first = None
        for name in names:
            self.edges[name] = EdgeServer(name, model_name, shape, optimizer, cloud, threads, token, step_timeout_s,
                                          engine, peer=first)
            first = first or self.edges[name]
        self.server: DataPlaneServer | None = None
        self.receiver = None  # migration.channel.MigrationReceiver, once started

    def _edge(self, name: str) -> EdgeServer:
        edge = self.edges.get(name) if isinstance(name, str) else None
        if edge is None:
            raise EdgeGone(f"edge {name!r} is not served by {self.host_id}")
        return edge

    # ----- life -----
    def ping(self, name: str | None = None) -> str:
        """The host's id; with ``name``, that edge's name if it is alive here, else ""."""
        if name is None:
            return self.host_id
        return name if name in self.edges else ""

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def kill(self, name: str) -> None:
        """Stop one logical edge as if its process had died: its sessions are gone, it answers nothing."""
        self.edges.pop(name, None)

    def set_cloud_endpoint(self, endpoint: str) -> None:
        for edge in self.edges.values():
            edge.set_cloud_endpoint(endpoint)

    def shutdown(self) -> None:
        for server in (self.server, self.receiver):
            if server is not None:
                server.close()
        for edge in self.edges.values():
            edge.shutdown()

    # ----- routing -----
    def _on_message(self, meta: dict, arrays: dict[str, np.ndarray]) -> tuple[dict, dict[str, np.ndarray]]:
        return self._edge(meta.get("edge"))._on_message(meta, arrays)

    def _accept_session(self, session_id: str, meta: dict, arrays: dict[str, np.ndarray]) -> None:
        meta = dict(meta)
        self._edge(meta.pop(TO_EDGE, None))._accept_session(session_id, meta, arrays)

    def on(self, name: str, method: str, *args):
        """One control call of the logical edge ``name`` (one of ``EDGE_CALLS``)."""
        if method not in EDGE_CALLS:
            raise ValueError(f"{method!r} is not an edge call")
        return getattr(self._edge(name), method)(*args)

    # ----- migration: the moves of one pair of edges as one transfer -----
    def migrate_out(self, src: str, session_ids: Sequence[str], dst: str, endpoint: str, key: bytes,
                    timeout_s: float) -> list[MigrationOutcome]:
        """Send sessions of edge ``src`` to edge ``dst`` behind ``endpoint``: one session as one
        transfer, several as batched transfers of up to ``MAX_BATCH`` each, verified per session.
        The source copies stay until the orchestrator drops them (after the ACKs)."""
        from tierflow.migration.channel import MAX_BATCH

        edge = self._edge(src)
        out: list[MigrationOutcome] = []
        for at in range(0, len(session_ids), MAX_BATCH):
            out.extend(self._send(edge, session_ids[at:at + MAX_BATCH], dst, endpoint, key, timeout_s))
        return out

    def migrate_out_many(self, transfers: Sequence[tuple[str, Sequence[str], str, str]], key: bytes,
                         timeout_s: float) -> list[list[MigrationOutcome]]:
        """Each ``(src, session ids, dst, dst's endpoint)`` as :meth:`migrate_out`, in order: a
        check's transfers from this host's edges in one call. A transfer whose source edge is gone
        fails alone."""
        out = []
        for src, ids, dst, endpoint in transfers:
            try:
                out.append(self.migrate_out(src, ids, dst, endpoint, key, timeout_s))
            except EdgeGone as exc:
                out.append([MigrationOutcome(False, 0, 0.0, str(exc)) for _ in ids])
        return out

    @staticmethod
    def _send(edge: EdgeServer, session_ids: Sequence[str], dst: str, endpoint: str, key: bytes,
              timeout_s: float) -> list[MigrationOutcome]:
        from tierflow.migration.channel import BatchItem, send_state, send_states
        from tierflow.migration.errors import MigrationError

        t0 = time.perf_counter()
        # The lock is held for the copy only, not while waiting for the ACK: an export is a copy
        # (the source session is left as it was), and a sender that held its lock would deadlock
        # with an edge sending to it (each waiting for the other's ACK), so moves would need waves.
        with edge.lock:
            items = []
            for sid in session_ids:
                meta, arrays = edge.sessions[sid].export()
                items.append(BatchItem(sid, {**meta, TO_EDGE: dst}, arrays))
        try:
            if len(items) == 1:
                stats = send_state(endpoint, key, items[0].session_id, items[0].meta, items[0].arrays,
                                   timeout_s=timeout_s)
                return [MigrationOutcome(True, int(stats.bytes_), time.perf_counter() - t0)]
            results = send_states(endpoint, key, items, timeout_s=timeout_s)
        except MigrationError as exc:
            return [MigrationOutcome(False, 0, time.perf_counter() - t0, str(exc)) for _ in items]
        duration = time.perf_counter() - t0
        return [MigrationOutcome(r.ok, r.bytes_ if r.ok else 0, duration, r.error) for r in results]
