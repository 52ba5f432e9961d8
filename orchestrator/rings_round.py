"""Capability rings as a round policy (FedHiSyn's idea, in split learning).

Devices are grouped into rings of similar predicted round time (placement/rings.py: optimal 1-D
k-means, each ring ordered as a cycle so members on the same edge are adjacent). Inside a ring the
device-side model (weights and optimizer state) passes member to member; each member trains
``local_steps`` steps on its own data against the ring's one server-side session, which sits on
the edge of the member training now (and on the cloud for 3-tier splits). Rings run side by side.

Every round is one interval: each ring makes as many hops as its *predicted* hop times fit in the
interval (the predicted time of the slowest device's synchronous round), at least one; the count
comes from the planner's cost model, not from measured times, so a resumed run replays the same
schedule. Fast rings make more hops. At the interval's end every ring uploads; the global model is
the average of the ring models weighted by the samples each trained this round.

One split per ring: its members have similar capability, so the ring trains the plan of its slowest
member (adaptive placement) or its first member's fixed split.

When the next member sits on another edge, the ring session moves there: with
``policy.handover: migrate`` over the real migration channel (bytes and pause charged to the ring's
virtual time); with ``restart`` it cannot follow, so a fresh session is opened there from the
round's starting model (the server side's progress this round is lost). Handovers are checked
between hops; a member out of coverage or on a lost host sits its turn out.

Virtual time of a ring: the sum of its hops, each charged by the orchestrator's clock (measured
compute scaled to the tier speeds of the moment, bytes / bandwidth, and the device-side model
down and up the member's link, which is the ring's pass from member to member), plus the ring
session's moves. A round lasts as long as its slowest ring, or its busiest edge's compute.
Ring sessions hold no state across rounds: they are opened from the global model every round.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import ray

from orchestrator.mobility import edge_to_edge_bps
from orchestrator.rounds import RoundResult
from placement.cost import round_time_s
from placement.rings import form_rings
from tiers.aggregate import weighted_average
from tiers.hosts import TrainReport
from tiers.session import SplitKey

if TYPE_CHECKING:
    from orchestrator.runner import Orchestrator


@dataclass(frozen=True)
class PlannedRing:
    ring_id: str
    members: tuple[str, ...]  # visit order
    key: SplitKey  # the ring's split
    hop_s: tuple[float, ...]  # predicted seconds of each member's hop
    hops: int  # hops this round


@dataclass(frozen=True)
class RingRoundPlan:
    """Who trains what, in which order, how many times: printable and testable without Ray."""

    rings: tuple[PlannedRing, ...]
    interval_s: float

    def __str__(self) -> str:
        lines = [f"interval {self.interval_s:.3f} s"]
        for r in self.rings:
            lines.append(f"{r.ring_id}: {r.hops} hops over {' -> '.join(r.members)}")
        return "\n".join(lines)


def hops_in_interval(hop_s: tuple[float, ...], interval_s: float, max_hops: int = 10_000) -> int:
    """Hops (members in ring order, cycling) whose predicted times fit in the interval; at least one."""
    total, hops = 0.0, 0
    while hops < max_hops:
        nxt = hop_s[hops % len(hop_s)]
        if hops > 0 and total + nxt > interval_s * (1 + 1e-9):
            break
        total += nxt
        hops += 1
    return hops


def plan_ring_round(rings: list[tuple[str, tuple[str, ...], SplitKey, tuple[float, ...]]],
                    interval_s: float) -> RingRoundPlan:
    return RingRoundPlan(tuple(PlannedRing(rid, members, key, hop_s, hops_in_interval(hop_s, interval_s))
                               for rid, members, key, hop_s in rings), interval_s)


def ring_average(models: list[tuple[dict[str, np.ndarray], float]]) -> dict[str, np.ndarray]:
    """FedAvg over rings, weighted by samples trained this round (rings that trained nothing drop out)."""
    kept = [(m, w) for m, w in models if w > 0]
    assert kept, "no ring trained this round"
    return weighted_average(kept)


class RingRounds:
    name = "rings"

    def __init__(self) -> None:
        self.signature: str | None = None
        self.formed: list[tuple[str, tuple[str, ...], SplitKey]] = []

    def export_state(self) -> dict:
        """The rings as formed (a checkpoint keeps them: they were formed from earlier speeds)."""
        return {"signature": self.signature,
                "formed": [[rid, list(ms), [list(t) for t in key.tiers], key.n_tiers] for rid, ms, key in self.formed]}

    def import_state(self, state: dict) -> None:
        self.signature = state["signature"]
        self.formed = [(rid, tuple(ms), SplitKey(tuple((str(n), int(t)) for n, t in tiers), int(n_tiers)))
                       for rid, ms, tiers, n_tiers in state["formed"]]

    # ----- forming rings -----
    def _profile(self, orch: Orchestrator, device: str, key_edge: str):
        from orchestrator.planning import profile_for, shares_for

        seen = orch.observed.get(device)
        observed = seen[1] if seen and seen[0] == key_edge else None
        profile = profile_for(orch.scenario, orch.devices[device], key_edge, observed=observed,
                              shares=shares_for(orch.session_at)[device])
        return replace(profile, steps_per_round=orch.scenario.training.local_steps)

    def predicted_hop_s(self, orch: Orchestrator, device: str, key: SplitKey) -> float:
        return round_time_s(orch.graph, key.assignment(), self._profile(orch, device, orch.session_at[device]))

    def form(self, orch: Orchestrator, members: list[str]) -> None:
        sc = orch.scenario
        times = {d: self.predicted_hop_s(orch, d, orch.splits[d]) for d in members}
        k = None if sc.policy.rings == "auto" else int(sc.policy.rings)

        def latency(a: str, b: str) -> float:  # keep a ring's members on one edge next to each other
            return 0.0 if orch.session_at[a] == orch.session_at[b] else 1.0

        self.formed = []
        for i, ring in enumerate(form_rings(times, k, latency)):
            key = self.ring_key(orch, ring.members)
            self.formed.append((f"ring:{i}", ring.members, key))
        orch.log.emit({"event": "rings_formed", "round": orch.round, "virtual_time_s": orch.virtual_time_s,
                       "rings": {rid: list(m) for rid, m, _ in self.formed}})

    def ring_key(self, orch: Orchestrator, members: tuple[str, ...]) -> SplitKey:
        if orch.scenario.policy.placement != "adaptive":
            return orch.splits[members[0]]
        from orchestrator.planning import plan_device, shares_for

        slowest = max(members, key=lambda d: self.predicted_hop_s(orch, d, orch.splits[d]))
        seen = orch.observed.get(slowest)
        edge = orch.session_at[slowest]
        observed = seen[1] if seen and seen[0] == edge else None
        shares = shares_for(orch.session_at)[slowest]
        return plan_device(orch.scenario, orch.graph, orch.devices[slowest], edge, observed=observed,
                           shares=shares).key

    def plan(self, orch: Orchestrator) -> RingRoundPlan:
        members = sorted(d for d in orch.devices if orch.available(d))
        if not members:
            return RingRoundPlan((), 0.0)
        signature = json.dumps([members, [[d, list(map(list, orch.splits[d].tiers))] for d in members],
                                [orch.session_at[d] for d in members]])
        if signature != self.signature:  # first round, a re-plan, a move, a loss: re-form
            self.form(orch, members)
            self.signature = signature
        sc = orch.scenario
        sync_round = max(self.predicted_hop_s(orch, d, orch.splits[d]) for d in members) \
            * sc.aggregation.cloud_every
        rings = [(rid, ms, key, tuple(self.predicted_hop_s(orch, d, key) for d in ms))
                 for rid, ms, key in self.formed]
        return plan_ring_round(rings, sync_round)

    # ----- one round -----
    def run_round(self, orch: Orchestrator) -> RoundResult:
        orch.recover_hosts()
        plan = self.plan(orch)
        if not plan.rings:
            return RoundResult([], 0.0, {})
        sc = orch.scenario
        start = ray.put(orch.global_state)
        at: dict[str, str] = {}
        for ring in plan.rings:
            at[ring.ring_id] = orch.session_at[ring.members[0]]
            self._open(orch, ring, at[ring.ring_id], start)
        carried: dict[str, tuple[dict, dict] | None] = {r.ring_id: None for r in plan.rings}
        clock = {r.ring_id: 0.0 for r in plan.rings}
        samples = {r.ring_id: 0 for r in plan.rings}
        poisoned: set[str] = set()
        reports: list[TrainReport] = []
        edge_busy: dict[str, float] = {}
        for hop in range(max(r.hops for r in plan.rings)):
            turn: dict[str, PlannedRing] = {}
            for ring in plan.rings:
                if hop >= ring.hops:
                    continue
                member = ring.members[hop % len(ring.members)]
                if not orch.available(member):
                    continue  # out of coverage or on a lost host: it sits its turn out
                clock[ring.ring_id] += self._follow(orch, ring, member, at, start)
                self._load_device_side(orch, ring, member, carried[ring.ring_id], start)
                turn[member] = ring
            if not turn:
                continue
            done, failed = orch.train_segment({m: sc.training.local_steps for m in turn},
                                              {m: r.ring_id for m, r in turn.items()})
            for m, why in sorted(failed.items()):
                orch.fail_device(m, why)
            exports = ray.get([orch.hosts[orch.host_of[r.device_id]].export_stage.remote(r.device_id) for r in done])
            for r, export in zip(done, exports, strict=True):
                ring = turn[r.device_id]
                reports.append(r)
                if not orch.healthy([r]):
                    poisoned.add(ring.ring_id)
                carried[ring.ring_id] = export
                samples[ring.ring_id] += r.samples
                # The clock's model-sync term (device-side parameters down and up the member's link)
                # is the ring's pass: the model arrives from the previous member and leaves for the next.
                clock[ring.ring_id] += orch.round_clock([r], None, clock[ring.ring_id])
                t = orch.virtual_time_s + clock[ring.ring_id]
                edge_busy[r.edge] = edge_busy.get(r.edge, 0.0) + \
                    r.compute_s[1] * orch.host_speed / orch.resources.edge_flops_per_s(r.edge, t)
                edge_busy["@cloud-tier"] = edge_busy.get("@cloud-tier", 0.0) + \
                    r.compute_s[2] * orch.host_speed / sc.cloud.flops_per_s
            self._check_handovers(orch, min(clock.values()) if clock else 0.0)
        models = []
        for ring in plan.rings:
            if carried[ring.ring_id] is None or ring.ring_id in poisoned:
                continue
            models.append((self._ring_model(orch, ring, at[ring.ring_id], carried[ring.ring_id]),
                           float(samples[ring.ring_id])))
        for ring in plan.rings:
            self._close(orch, ring, at[ring.ring_id])
        if models:
            orch.global_state = ring_average(models)
        self._push(orch, orch.global_state)
        virtual = max([*clock.values(), *edge_busy.values(), 0.0])
        return RoundResult(reports, virtual, {r.ring_id: list(r.members) for r in plan.rings})

    # ----- the ring session and the device-side model -----
    def _open(self, orch: Orchestrator, ring: PlannedRing, edge: str, state_ref) -> None:
        calls = []
        if ring.key.n_tiers >= 2:
            calls.append(orch.edges[edge].open_session.remote(ring.ring_id, ring.key, state_ref, 1.0))
        if ring.key.n_tiers == 3:
            calls.append(orch.cloud.open_session.remote(ring.ring_id, ring.key, state_ref, 1.0))
        ray.get(calls)

    def _close(self, orch: Orchestrator, ring: PlannedRing, edge: str) -> None:
        calls = []
        if ring.key.n_tiers >= 2 and edge in orch.edges:
            calls.append(orch.edges[edge].close_session.remote(ring.ring_id))
        if ring.key.n_tiers == 3:
            calls.append(orch.cloud.close_session.remote(ring.ring_id))
        ray.get(calls)

    def _follow(self, orch: Orchestrator, ring: PlannedRing, member: str, at: dict[str, str], start) -> float:
        """Bring the ring session to the member's edge; returns the virtual seconds that cost."""
        src, dst = at[ring.ring_id], orch.session_at[member]
        if src == dst or ring.key.n_tiers == 1:
            at[ring.ring_id] = dst
            return 0.0
        sc = orch.scenario
        if sc.policy.handover == "migrate":
            out = ray.get(orch.edges[src].migrate_out.remote(ring.ring_id, orch.receivers[dst], orch.migration_key,
                                                             sc.policy.migration_timeout_s))
            if out["ok"]:
                ray.get(orch.edges[src].close_session.remote(ring.ring_id))
                at[ring.ring_id] = dst
                orch.counters["migrations"] += 1
                orch.counters["migration_bytes"] += out["bytes"]
                orch.counters["migration_time_s"] += out["duration_s"]
                orch.log.emit({"event": "migration", "round": orch.round, "virtual_time_s": orch.virtual_time_s,
                               "device": ring.ring_id, "from_edge": src, "to_edge": dst, "policy": "migrate",
                               "bytes": out["bytes"], "duration_s": out["duration_s"], "ok": True})
                return out["duration_s"] + 8 * out["bytes"] / edge_to_edge_bps(sc, src, dst)
            orch.counters["failed_migrations"] += 1
            orch.log.emit({"event": "failure", "round": orch.round, "virtual_time_s": orch.virtual_time_s,
                           "kind": "migration", "entity": dst, "detail": f"{ring.ring_id}: {out['error']}"})
        # restart (or a failed move): a fresh session at the member's edge from the round's start
        ray.get(orch.edges[src].close_session.remote(ring.ring_id)) if src in orch.edges else None
        if ring.key.n_tiers >= 2:
            ray.get(orch.edges[dst].open_session.remote(ring.ring_id, ring.key, start, 1.0))
        at[ring.ring_id] = dst
        orch.counters["restarts"] += 1
        orch.log.emit({"event": "migration", "round": orch.round, "virtual_time_s": orch.virtual_time_s,
                       "device": ring.ring_id, "from_edge": src, "to_edge": dst, "policy": "restart",
                       "bytes": 0, "duration_s": 0.0, "ok": True})
        return 0.0

    def _load_device_side(self, orch: Orchestrator, ring: PlannedRing, member: str, carried, start) -> None:
        host = orch.hosts[orch.host_of[member]]
        if carried is None:  # the ring's first hop this round: the global model
            ray.get(host.configure.remote(member, ring.key, start, True))
        else:
            ray.get(host.import_stage.remote(member, *carried))

    def _ring_model(self, orch: Orchestrator, ring: PlannedRing, edge: str, carried) -> dict[str, np.ndarray]:
        meta, arrays = carried
        model = {k.removeprefix("state/"): v for k, v in arrays.items() if k.startswith("state/")}
        parts = []
        if ring.key.n_tiers >= 2:
            parts.append(orch.edges[edge].session_state.remote(ring.ring_id))
        if ring.key.n_tiers == 3:
            parts.append(orch.cloud.session_state.remote(ring.ring_id))
        for part in ray.get(parts):
            model.update(part)
        assert set(model) == set(orch.global_state), "a ring's parts must make up the whole model"
        return model

    def _push(self, orch: Orchestrator, state: dict[str, np.ndarray]) -> None:
        """Every device's stage gets the new global model (ring sessions are rebuilt next round)."""
        ref = ray.put(state)
        for d in orch.devices:
            orch.last_pushed[d] = state
        calls = []
        for h, host in enumerate(orch.hosts):
            mine = [d for d in orch.devices if orch.host_of[d] == h]
            if mine and h not in orch.lost_hosts:
                calls.append(host.load_weights.remote(mine, ref))
        ray.get(calls)

    def _check_handovers(self, orch: Orchestrator, elapsed_s: float) -> None:
        """Between hops: devices that moved are on their new edge for their next turn."""
        now_s = orch.mobility_time(elapsed_s, 0.0)
        for h in orch.detector.update(now_s, orch.mobility.positions(now_s)):
            orch.counters["handovers"] += 1
            orch.log.emit({"event": "handover", "round": orch.round, "virtual_time_s": orch.virtual_time_s,
                           "device": h.device, "from_edge": h.from_edge, "to_edge": h.to_edge})
            orch.edge_of[h.device] = h.to_edge
            if h.to_edge is not None:
                orch.session_at[h.device] = h.to_edge
