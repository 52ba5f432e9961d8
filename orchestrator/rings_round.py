"""Capability rings as a round policy (FedHiSyn's idea, in split learning).

Forming. Every connected device's synchronous round is predicted by the planner's cost model
(placement/cost.py) under its own split (its plan under adaptive placement, its fixed split
otherwise); placement/rings.py groups the devices into K rings by that time (optimal 1-D k-means;
``policy.rings: auto`` lets it choose K) and orders each ring as a cycle, fastest member first,
members on one edge next to each other. Rings are kept from round to round and formed again when
the planner re-planned a device, a device changed edge, or a device joined or left coverage; each
forming is a ``rings_formed`` event.

One split per ring. Its members have similar capability, so the ring trains one split: under
adaptive placement the plan of its slowest member (orchestrator/planning.py),
under fixed placement its first member's fixed split. While rings are on, ``ctx.state.splits[d]`` is the
split d trains, its ring's (so events and the clock's byte counts are true).

A hop. One member trains ``training.local_steps`` steps on its own data (its own BatchSampler)
against the ring's server-side session: one per ring on the edge of the member training now, and on
the cloud for 3-tier splits, keyed by the ring id. The device-side stage, weights and optimizer
state (Session.export, numpy, no pickle), passes to the next member. Within a ring hops are
sequential; rings run side by side, one Ray batch of hops at a time.

The interval (FedHiSyn's fixed time interval) is one round: each ring makes as many hops as its
members' *predicted* hops fit in it, at least one, so the schedule (``RingRoundPlan``) is data that a
resumed run replays exactly; measured times never change a hop count. A predicted hop is the
member's training (the cost model's batches plus the device-side stage in and out) plus, when the
member before it sits on another edge, the ring session's pass (edge-side weights and optimizer
state over the edge-to-edge backhaul): on a slow backhaul a ring spread over edges makes few hops. Default interval: the
predicted synchronous round of the slowest connected device, so the slowest ring makes one round's
worth of hops and fast rings make several. A ring's visits go on from round to round where the last
round stopped, so every member gets its turns even when a ring makes fewer hops than it has members.
A move the plan could not foresee (a handover) can make a ring's later hops dearer: its session and
a member now sit on different edges, so hops pay passes. Before each hop a ring is charged as things
stand (the member's planned hop plus the pass it now needs); a ring whose next hop would end past the
interval stops there, so a round lasts its interval whatever moves (a ring's first hop always runs).

Ring passes and handovers. When the next member sits on another edge, the ring session moves there
over the migration channel (``migrate_out`` to the destination's receiver, then the source copy is
dropped), whatever ``policy.handover`` says: that is how a ring works, not a handover. Passes are
counted apart (``ring_pass`` events, ``ring_passes``/``ring_pass_bytes`` in the summary); a turn's
passes go in one call (passes crossing in opposite directions too: a sender holds its lock only
while it copies the session out, not while it waits for the ACK). A pass that fails ends that
ring's round where it is (its work so far still counts). Handovers are checked between hops on the
runner's detector. If the member that just trained (the active member: the handover fell in its hop)
moved to another edge, ``migrate`` moves the ring session to it (a handover migration) and the ring
goes on; ``restart`` (the FedFly baseline) drops the ring's work this round: its session starts over
from the round's global model at the new edge, and the ring's next hop starts from that model. The
hop count stays as planned, so a restarted ring contributes less, not later.

Checks follow time, not hop numbers, and the in-round schedule runs on the plan's *predicted*
clocks (so it replays exactly): each step checks mobility at the earliest predicted clock of the
rings still running, then runs (in one Ray batch) the rings whose predicted clock is within one
predicted hop of it. A slow ring never runs its next hop on positions older than one short hop, and
the detector's time never goes back. The mobility time of a check is the round's predicted progress
when ``mobility.round_duration_s`` is set (replayable, like run_period's step progress), else the
run's clock (the least charged ring clock of the rings still running). A handover found at a check
counts against a ring's active member when that member's hop is predicted to end at or after the
check; it is applied at the hop boundary (checks are between hops), an approximation of at most one
hop, as run_period's checks between segments are.

Virtual time of a ring: the sum of its hops, each charged by the cost model (the runner's charges:
the hop's batches at the tier speeds of the moment, its activations, labels and gradients over the
links, and one model sync: the device-side stage coming in from the previous member and leaving for
the next), plus ring-session moves (the modelled pause plus the session's modelled size over the
slower backhaul, orchestrator/clock.py ``session_move_s``). The round lasts as long as its slowest
ring, and no less than any edge's (or the cloud's) summed compute. A hop's prediction is the same
function at the round's start, so a round in which nothing unforeseen happens is charged exactly
what its plan predicted (``ring_round``: ``predicted_s`` and ``ring_s``).

Aggregation: at the interval's end every ring uploads (device side from its last member, server
side from the ring sessions); the global model is the ring models' average weighted by the samples
each trained this round. A ring with a non-finite hop or a failed member is left out this round.
The global model then goes to every device; ring sessions are closed and opened afresh next round,
so they hold no state across rounds (momentum included: a ring's optimizer lives one round). The
per-device server sessions the runner opens are closed: rings never use them (and ctx.push, which
loads them, is not used for that reason).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from tierflow.orchestrator import event_types as ev
from tierflow.orchestrator.clock import session_move_s, tier_speeds
from tierflow.orchestrator.fleet import CLOUD, CarriedStage, SessionMove, Shared, StageOpening
from tierflow.orchestrator.handover_policies import MoveResult
from tierflow.orchestrator.round_context import RoundContext
from tierflow.orchestrator.rounds import RoundResult, add_compute
from tierflow.placement.cost import PeriodCost
from tierflow.placement.rings import form_rings
from tierflow.tiers.aggregate import weighted_average
from tierflow.tiers.session import SplitKey
from tierflow.tiers.train_report import TrainReport


# ----- the plan: pure data -----
@dataclass(frozen=True)
class PlannedRing:
    ring_id: str
    members: tuple[str, ...]  # visit order, a cycle
    key: SplitKey  # the ring's one split
    hop_s: tuple[float, ...]  # predicted seconds of each member's hop under that split
    hops: int  # hops this round
    pass_s: tuple[float, ...] = ()  # predicted seconds to bring the ring session to each member from the one before
    first: int = 0  # index of the member this round's visits start at (where the last round stopped)
    server_s: tuple[tuple[float, float], ...] = ()  # predicted edge and cloud compute of each member's hop

    def member(self, hop: int) -> str:
        return self.members[(self.first + hop) % len(self.members)]

    def cost_s(self, hop: int) -> float:
        return hop_cost_s(self.hop_s, self.pass_s, hop, self.first)

    @property
    def predicted_s(self) -> float:
        return sum(self.cost_s(h) for h in range(self.hops))


@dataclass(frozen=True)
class RingRoundPlan:
    """Who trains with which split, in which order, how many times: printable, testable without Ray."""

    rings: tuple[PlannedRing, ...]
    interval_s: float
    left_out: tuple[str, ...] = ()  # not in any ring this round (out of coverage, host lost)
    reformed: bool = True  # the rings were formed for this round (not kept from the last)

    def predicted_round_s(self, edge_of: Mapping[str, str | None]) -> float:
        """The round as the clock will charge it if nothing unforeseen happens: the slowest ring, or
        an edge (or the cloud) doing every planned hop's server work back to back."""
        busy: dict[str, float] = {}
        for r in self.rings:
            for h in range(r.hops if r.server_s else 0):
                edge_s, cloud_s = r.server_s[(r.first + h) % len(r.members)]
                edge = edge_of.get(r.member(h))
                if edge is not None:
                    busy[edge] = busy.get(edge, 0.0) + edge_s
                busy["@cloud-tier"] = busy.get("@cloud-tier", 0.0) + cloud_s
        return max([*(r.predicted_s for r in self.rings), *busy.values(), 0.0])

    def __str__(self) -> str:
        lines = [f"interval {self.interval_s:.3f} s" + (f"; left out: {', '.join(self.left_out)}"
                                                        if self.left_out else "")]
        for r in self.rings:
            split = "|".join(str(n) for n in r.key.counts())
            visits = " -> ".join(r.member(h) for h in range(min(r.hops, 12))) + (" ..." if r.hops > 12 else "")
            lines.append(f"{r.ring_id} [{split}] {r.hops} hops, {r.predicted_s:.3f} s predicted: {visits}")
        return "\n".join(lines)


def hop_cost_s(hop_s: Sequence[float], pass_s: Sequence[float], hop: int, first: int = 0) -> float:
    """Hop ``hop`` of a round that starts at member ``first``: the member's training, plus the ring
    session's pass to it (a round's first hop needs none: the session opens where that member is)."""
    i = (first + hop) % len(hop_s)
    return hop_s[i] + (pass_s[i] if hop > 0 and pass_s else 0.0)


def hops_in_interval(hop_s: Sequence[float], interval_s: float, pass_s: Sequence[float] = (), first: int = 0,
                     max_hops: int = 10_000) -> int:
    """Hops (members in ring order from ``first``, cycling) whose predicted times fit in the interval;
    at least one."""
    total, hops = 0.0, 0
    while hops < max_hops:
        nxt = hop_cost_s(hop_s, pass_s, hops, first)
        if hops > 0 and total + nxt > interval_s * (1 + 1e-9):
            break
        total += nxt
        hops += 1
    return hops


def form_ring_groups(round_time_s: Mapping[str, float], edge_of: Mapping[str, str | None],
                     k: int | None) -> tuple[tuple[str, ...], ...]:
    """Rings over the connected devices (edge not None) by predicted round time, fastest ring first;
    within a ring, members on one edge are adjacent (a hop between edges moves the ring session)."""
    times = {d: t for d, t in round_time_s.items() if edge_of.get(d) is not None}
    sites = {d: edge_of[d] for d in times}
    return tuple(r.members for r in form_rings(times, k, site_of=sites))


def ring_ids(n: int, taken: Collection[str] = ()) -> list[str]:
    """``ring:0``, ``ring:1``, ...; a ring id shares the servers' session namespace with device names."""
    out = []
    for i in range(n):
        rid = f"ring:{i}"
        while rid in taken:
            rid = "@" + rid
        out.append(rid)
    return out


def plan_ring_round(round_time_s: Mapping[str, float], edge_of: Mapping[str, str | None], k: int | None,
                    ring_split: Callable[[tuple[str, ...]], SplitKey],
                    hop_time_s: Callable[[str, SplitKey], float], interval_s: float | None = None,
                    formed: Sequence[tuple[tuple[str, ...], SplitKey]] | None = None,
                    taken: Collection[str] = (),
                    pass_time_s: Callable[[str, str, SplitKey], float] | None = None,
                    firsts: Sequence[int] | None = None,
                    server_time_s: Callable[[str, SplitKey], tuple[float, float]] | None = None) -> RingRoundPlan:
    """One round's schedule.

    ``round_time_s``: each device's predicted synchronous round (grouping, and the default interval);
    ``edge_of``: None for a device that cannot train this round; ``ring_split(members)``: the ring's
    split; ``hop_time_s(device, split)``: one predicted hop; ``pass_time_s(from, to, split)``: moving
    the ring session between two members' edges; ``formed``: rings to keep, used only while they
    still cover exactly the connected devices (otherwise rings are formed afresh); ``firsts``: where
    each kept ring's visits start (where its last round stopped; a ring formed afresh starts at its
    first, fastest member). Without it, a ring making fewer hops than it has members would train the
    same members every round. ``server_time_s(device, split)``: the edge and cloud compute of one
    hop (what the round's shared servers must do).
    """
    devices = sorted(round_time_s)
    connected = [d for d in devices if edge_of.get(d) is not None]
    left_out = tuple(d for d in devices if edge_of.get(d) is None)
    if not connected:
        return RingRoundPlan((), 0.0, left_out)
    if interval_s is None:
        interval_s = max(round_time_s[d] for d in connected)
    reformed = formed is None or sorted(m for members, _ in formed for m in members) != connected
    if reformed:
        formed = [(members, ring_split(members)) for members in form_ring_groups(round_time_s, edge_of, k)]
    starts = [0] * len(formed) if reformed or firsts is None else list(firsts)
    rings = []
    for rid, (members, key), first in zip(ring_ids(len(formed), taken), formed, starts, strict=True):
        hop_s = tuple(hop_time_s(d, key) for d in members)
        pass_s = tuple(pass_time_s(members[i - 1], d, key) if pass_time_s else 0.0 for i, d in enumerate(members))
        first %= len(members)
        hops = hops_in_interval(hop_s, interval_s, pass_s, first)
        server_s = tuple(server_time_s(d, key) for d in members) if server_time_s else ()
        rings.append(PlannedRing(rid, tuple(members), key, hop_s, hops, pass_s, first, server_s))
    return RingRoundPlan(tuple(rings), float(interval_s), left_out, reformed)


def ring_average(models: Sequence[tuple[Mapping[str, np.ndarray], float]]) -> dict[str, np.ndarray]:
    """FedAvg over rings, weighted by samples trained this round (rings that trained nothing drop out)."""
    kept = [(m, w) for m, w in models if w > 0]
    assert kept, "no ring trained this round"
    return weighted_average(kept)


# ----- running it -----
@dataclass
class _RingRun:
    """One ring's progress through the round (orchestrator-side bookkeeping)."""

    ring: PlannedRing
    at: str  # the edge holding the ring session
    clock_s: float = 0.0  # virtual seconds since the round began, as charged (measured work)
    pred_s: float = 0.0  # the same, as the plan predicts: what the schedule runs on
    next_hop: int = 0
    trained_hops: int = 0
    samples: int = 0
    carried: CarriedStage | None = None  # the device-side stage as the last hop left it
    last_member: str | None = None  # who trained the last hop (predicted to end at pred_s)
    dropped: str = ""  # why the ring's update is left out of this round
    stopped: bool = False  # no more hops this round

    @property
    def rid(self) -> str:
        return self.ring.ring_id

    @property
    def pending(self) -> bool:
        return not self.stopped and self.next_hop < self.ring.hops


def _needs_pass(ctx: RoundContext, x: _RingRun, member: str) -> bool:
    """The ring has a server-side session and it is not on the member's edge: it must move there."""
    return x.ring.key.n_tiers >= 2 and x.at != ctx.state.session_at[member]


class _RingSessionMover:
    """The handover policy's two moves for a ring's session, when the member training moved."""

    def __init__(self, rings: RingRounds, ctx: RoundContext, x: _RingRun, start):
        self.rings, self.ctx, self.x, self.start = rings, ctx, x, start

    def migrate_session(self, device_id: str, src: str, dst: str) -> MoveResult:
        """The ring session follows its member (a failed move leaves it at src: the next pass moves it)."""
        ctx, x = self.ctx, self.x
        out = ctx.fleet.migrate(SessionMove(x.rid, src, dst))
        if not out.ok:
            return MoveResult(False, 0, out.duration_s, 0.0, error=out.error)
        charged = self.rings.pass_s_between(ctx, src, dst, x.ring.key)
        x.at = dst
        x.clock_s += charged
        return MoveResult(True, out.bytes_, out.duration_s, charged)

    def restart_session(self, device_id: str, src: str, dst: str) -> MoveResult:
        """The ring's work this round is lost; it starts over from the round's model at dst."""
        ctx, x = self.ctx, self.x
        t0 = time.perf_counter()
        ctx.fleet.close_sessions(self.rings._sessions_of(x))
        x.at = dst
        ctx.fleet.open_sessions(self.rings._openings(x), self.start)
        x.carried, x.samples, x.dropped = None, 0, ""
        return MoveResult(True, 0, time.perf_counter() - t0, 0.0, restarted=True)


class RingRounds:
    name = "rings"

    def __init__(self) -> None:
        self.signature: str | None = None
        self.formed: tuple[tuple[tuple[str, ...], SplitKey], ...] | None = None
        self.firsts: list[int] | None = None  # where each ring's next round starts

    def export_state(self) -> dict:
        """The rings as formed (a checkpoint keeps them: they were formed from earlier observations)."""
        formed = None if self.formed is None else [
            [list(ms), [list(t) for t in key.tiers], key.n_tiers] for ms, key in self.formed]
        return {"signature": self.signature, "formed": formed, "firsts": self.firsts}

    def import_state(self, state: dict) -> None:
        self.signature = state.get("signature")
        self.firsts = state.get("firsts")
        formed = state.get("formed")
        self.formed = None if formed is None else tuple(
            (tuple(ms), SplitKey(tuple((str(n), int(t)) for n, t in tiers), int(n_tiers)))
            for ms, tiers, n_tiers in formed)

    # ----- predictions (the planner's cost model) -----
    def own_split(self, ctx: RoundContext, device: str) -> SplitKey:
        if ctx.placement.name == "adaptive":
            return ctx.placement.own_split(device)
        return ctx.world.splits[device]

    def hop_cost(self, ctx: RoundContext, device: str, key: SplitKey) -> PeriodCost:
        """One hop as the clock will charge it: ``local_steps`` batches and the device-side stage in
        and out (one sync), at the resources of the round's start."""
        sc = ctx.scenario
        edge = ctx.state.session_at[device]
        return ctx.ops.cost.period(key, sc.training.local_steps, ctx.ops.batch_of[device],
                                tier_speeds(sc, ctx.sim.resources, device, edge, ctx.sim.virtual_time_s))

    def hop_s(self, ctx: RoundContext, device: str, key: SplitKey) -> float:
        return self.hop_cost(ctx, device, key).total_s

    def server_s(self, ctx: RoundContext, device: str, key: SplitKey) -> tuple[float, float]:
        cost = self.hop_cost(ctx, device, key)
        return cost.compute_s[1], cost.compute_s[2]

    def pass_s(self, ctx: RoundContext, src: str, dst: str, key: SplitKey) -> float:
        """The ring session (edge-side weights and optimizer state) from ``src``'s edge to ``dst``'s."""
        a, b = ctx.state.session_at[src], ctx.state.session_at[dst]
        return 0.0 if a == b or key.n_tiers == 1 else self.pass_s_between(ctx, a, b, key)

    def pass_s_between(self, ctx: RoundContext, src_edge: str, dst_edge: str, key: SplitKey) -> float:
        return session_move_s(ctx.scenario, src_edge, dst_edge,
                              ctx.ops.cost.session_bytes(key, 1, ctx.scenario.training.optimizer))

    def ring_split(self, ctx: RoundContext, members: tuple[str, ...]) -> SplitKey:
        """Fixed placement: the first member's split; adaptive: the plan of the slowest member."""
        if ctx.placement.name != "adaptive":
            return self.own_split(ctx, members[0])
        slowest = max(members, key=lambda d: (self.hop_s(ctx, d, self.own_split(ctx, d)), d))
        return self.own_split(ctx, slowest)

    def plan(self, ctx: RoundContext) -> RingRoundPlan:
        sc = ctx.scenario
        devices = sorted(ctx.ops.devices)
        edge_of = {d: (ctx.state.session_at[d] if ctx.ops.available(d) else None) for d in devices}
        own = {d: self.own_split(ctx, d) for d in devices}
        # What the rings were formed from: a move or a new split forms them again.
        signature = json.dumps({d: [ctx.state.session_at[d], [list(t) for t in own[d].tiers]] for d in devices},
                               sort_keys=True)
        keep = self.formed if signature == self.signature else None
        round_s = {d: sc.aggregation.cloud_every * self.hop_s(ctx, d, own[d]) for d in devices}
        k = None if sc.policy.rings == "auto" else int(sc.policy.rings)
        plan = plan_ring_round(round_s, edge_of, k,
                               lambda members: self.ring_split(ctx, members),
                               lambda d, key: self.hop_s(ctx, d, key), formed=keep, taken=ctx.ops.devices,
                               pass_time_s=lambda a, b, key: self.pass_s(ctx, a, b, key),
                               firsts=self.firsts if keep is not None else None,
                               server_time_s=lambda d, key: self.server_s(ctx, d, key))
        formed = tuple((r.members, r.key) for r in plan.rings)
        if plan.reformed:
            ctx.events.emit(ev.RingsFormed(round=ctx.round, virtual_time_s=ctx.sim.virtual_time_s,
                                           rings={r.ring_id: list(r.members) for r in plan.rings},
                                           splits={r.ring_id: r.key.counts() for r in plan.rings},
                                           edges={d: edge_of[d] for d in devices}, left_out=list(plan.left_out)))
        for r in plan.rings:
            for m in r.members:
                ctx.state.splits[m] = r.key
        self.formed, self.signature = formed, signature
        self.firsts = [(r.first + r.hops) % len(r.members) for r in plan.rings]  # the next round goes on from there
        return plan

    # ----- one round -----
    def run_round(self, ctx: RoundContext) -> RoundResult:
        sc = ctx.scenario
        ctx.ops.recover_hosts()
        ctx.state.period = 0
        plan = self.plan(ctx)
        self._close_device_sessions(ctx)
        if not plan.rings:
            return RoundResult([], 0.0, 0.0, {})
        predicted = plan.predicted_round_s({d: ctx.state.session_at[d] for d in ctx.ops.devices})
        start = ctx.fleet.share(ctx.state.global_state)
        runs = {r.ring_id: _RingRun(r, ctx.state.session_at[r.member(0)]) for r in plan.rings}
        ctx.fleet.open_sessions([o for x in runs.values() for o in self._openings(x)], start)
        reports: list[TrainReport] = []
        busy: dict[str, float] = {}  # summed compute per edge (and the cloud) this round
        compute = (0.0, 0.0, 0.0)
        while True:
            pending = [x for x in runs.values() if x.pending]
            if not pending:
                break
            self._check_handovers(ctx, min(x.pred_s for x in pending), min(x.clock_s for x in pending),
                                  plan, runs, start)
            pending = [x for x in runs.values() if x.pending]
            if not pending:
                break
            t0 = min(x.pred_s for x in pending)
            window = min(x.ring.cost_s(x.next_hop) for x in pending if x.pred_s == t0)
            turn: dict[str, _RingRun] = {}
            for x in pending:
                if x.pred_s < t0 + window:
                    member = x.ring.member(x.next_hop)
                    if x.trained_hops and x.clock_s + self._hop_now_s(ctx, x, member) > plan.interval_s * (1 + 1e-9):
                        x.stopped = True  # moves the plan did not foresee made its hops dearer: it ends in time
                        continue
                    x.pred_s += x.ring.cost_s(x.next_hop)  # the slot passes, used or not
                    x.next_hop += 1
                    if ctx.ops.available(member):  # out of coverage or on a lost host: it sits its turn out
                        turn[member] = x
            self._pass_sessions(ctx, turn)
            if not turn:
                continue
            self._load_device_side(ctx, turn, start)
            done, failed = ctx.ops.train_segment({m: sc.training.local_steps for m in turn},
                                              {m: x.rid for m, x in turn.items()})
            for m, why in sorted(failed.items()):
                ctx.ops.fail_device(m, why)
                turn[m].dropped, turn[m].stopped = f"{m} failed: {why}", True
            exports = ctx.fleet.export_stages(r.device_id for r in done)
            healthy = ctx.ops.healthy(done)
            for r in done:
                x = turn[r.device_id]
                reports.append(r)
                if r.device_id not in healthy:
                    x.dropped = f"{r.device_id}: non-finite update"
                x.carried = exports[r.device_id]
                x.samples += r.samples
                x.trained_hops += 1
                (charge,) = ctx.ops.charges([r], None, x.clock_s)
                x.clock_s += charge.total_s
                compute = add_compute(compute, [charge])
                x.last_member = r.device_id
                if r.edge is not None:
                    busy[r.edge] = busy.get(r.edge, 0.0) + charge.cost.compute_s[1]
                busy["@cloud-tier"] = busy.get("@cloud-tier", 0.0) + charge.cost.compute_s[2]
            if failed:
                ctx.ops.drop_dead_edges({})
        # The next round goes on from where each ring stopped (earlier than planned, if it ran out of time).
        self.firsts = [(x.ring.first + x.next_hop) % len(x.ring.members) for x in runs.values()]
        models = self._ring_models(ctx, runs)
        ctx.fleet.close_sessions([pair for x in runs.values() for pair in self._sessions_of(x)])
        if models:
            ctx.state.global_state = ring_average(models)
        self._push(ctx, ctx.state.global_state)
        virtual = max([*(x.clock_s for x in runs.values()), *busy.values(), 0.0])
        ctx.events.emit(ev.RingRound(round=ctx.round, virtual_time_s=ctx.sim.virtual_time_s,
                                     interval_s=plan.interval_s, hops={x.rid: x.ring.hops for x in runs.values()},
                                     first={x.rid: x.ring.member(0) for x in runs.values()},
                                     trained_hops={x.rid: x.trained_hops for x in runs.values()},
                                     samples={x.rid: x.samples for x in runs.values()},
                                     ring_s={x.rid: x.clock_s for x in runs.values()},
                                     predicted_s={x.rid: x.ring.predicted_s for x in runs.values()},
                                     dropped={x.rid: x.dropped for x in runs.values() if x.dropped},
                                     left_out=list(plan.left_out)))
        return RoundResult(reports, virtual, predicted, {r.ring_id: list(r.members) for r in plan.rings}, compute)

    def _hop_now_s(self, ctx: RoundContext, x: _RingRun, member: str) -> float:
        """The next hop's charge as things stand: the member's planned hop, and a pass when the
        ring session is not on the member's edge now (a handover may have moved either)."""
        hop_s = x.ring.hop_s[(x.ring.first + x.next_hop) % len(x.ring.members)]
        if not _needs_pass(ctx, x, member):
            return hop_s
        return hop_s + self.pass_s_between(ctx, x.at, ctx.state.session_at[member], x.ring.key)

    # ----- ring sessions -----
    def _openings(self, x: _RingRun) -> list[StageOpening]:
        """The ring's server-side sessions, where it trains now."""
        return [StageOpening(x.rid, x.ring.key, x.at, 1.0)]

    def _sessions_of(self, x: _RingRun) -> list[tuple[str, str]]:
        pairs = []
        if x.ring.key.n_tiers >= 2:
            pairs.append((x.at, x.rid))
        if x.ring.key.n_tiers == 3:
            pairs.append((CLOUD, x.rid))
        return pairs

    def _close_device_sessions(self, ctx: RoundContext) -> None:
        """Rings train against ring sessions only; per-device server sessions would sit stale (and be
        written into every checkpoint)."""
        ctx.fleet.close_sessions([(server, sid) for server, ids in ctx.fleet.session_ids().items()
                                  for sid in ids if sid in ctx.ops.devices])

    def _pass_sessions(self, ctx: RoundContext, turn: dict[str, _RingRun]) -> None:
        """Bring each ring's session to its next member's edge over the migration channel."""
        moves = [(m, x, x.at, ctx.state.session_at[m]) for m, x in sorted(turn.items())
                 if _needs_pass(ctx, x, m)]
        # One call for every ring's pass (each ring's session moves once): a sender holds its lock
        # only while copying, so edges may send and receive at once.
        outs = ctx.fleet.migrate_many([SessionMove(x.rid, src, dst) for _, x, src, dst in moves])
        for (m, x, src, dst), out in zip(moves, outs, strict=True):
            charged = self.pass_s_between(ctx, src, dst, x.ring.key) if out.ok else 0.0
            ctx.events.emit(ev.RingPass(round=ctx.round, virtual_time_s=ctx.sim.virtual_time_s, ring=x.rid,
                                        device=m, from_edge=src, to_edge=dst, bytes=out.bytes_,
                                        wall_duration_s=out.duration_s, ok=out.ok, charged_s=charged))
            if not out.ok:
                ctx.events.emit(ev.Failure(round=ctx.round, virtual_time_s=ctx.sim.virtual_time_s,
                                           failure_kind="ring_pass", entity=dst, detail=f"{x.rid}: {out.error}"))
                x.stopped = True  # its session is intact at src: the ring's work so far counts
                del turn[m]
                continue
            x.at = dst
            x.clock_s += charged
            counters = ctx.state.counters
            counters.ring_passes += 1
            counters.ring_pass_bytes += out.bytes_
            counters.ring_pass_time_s += out.duration_s

    def _load_device_side(self, ctx: RoundContext, turn: dict[str, _RingRun], start: Shared) -> None:
        """Each member about to train takes the stage the ring's last hop left, or (the ring's first
        hop, or first after a restart) the round's model with a fresh optimizer."""
        fresh = [StageOpening(m, x.ring.key, None, 1.0) for m, x in turn.items() if x.carried is None]
        carried = {m: x.carried for m, x in turn.items() if x.carried is not None}
        ctx.fleet.load_stages(fresh, start, carried)

    def _ring_models(self, ctx: RoundContext, runs: dict[str, _RingRun]) -> list[tuple[dict, float]]:
        kept = [x for x in runs.values() if not x.dropped and x.carried is not None and x.samples > 0]
        stages, sessions = ctx.fleet.fetch([x.carried for x in kept], [p for x in kept for p in self._sessions_of(x)])
        models, held = [], iter(sessions)
        for x, device_side in zip(kept, stages, strict=True):
            model = {k.removeprefix("state/"): v for k, v in device_side.items() if k.startswith("state/")}
            for _ in self._sessions_of(x):
                model.update(next(held))
            assert set(model) == set(ctx.state.global_state), "a ring's parts must make up the whole model"
            models.append((model, float(x.samples)))
        return models

    def _push(self, ctx: RoundContext, state: dict[str, np.ndarray]) -> None:
        """Every device's stage gets the new global model (ring sessions are opened afresh next round)."""
        for d in ctx.ops.devices:
            ctx.state.last_pushed[d] = state
        ctx.fleet.load_weights(state, sorted(ctx.ops.devices))

    # ----- mobility -----
    def _check_handovers(self, ctx: RoundContext, t_s: float, measured_s: float, plan: RingRoundPlan,
                         runs: dict[str, _RingRun], start) -> None:
        """Handovers up to ``t_s`` (predicted; ``measured_s`` as charged) into the round; a ring whose
        active member moved follows it (``migrate``) or starts its round over at the new edge (``restart``)."""
        sc = ctx.scenario
        progress = sc.aggregation.cloud_every * min(1.0, t_s / plan.interval_s) if plan.interval_s > 0 else 0.0
        now_s = ctx.sim.mobility_time(ctx.round, ctx.state.period, measured_s, progress)
        moves = ctx.sim.sense(now_s)
        for h in moves:
            d = h.device
            ctx.ops.note_handover(h)
            if h.to_edge is None:
                continue  # out of coverage: it sits its turns out until an edge covers it again
            ctx.state.session_at[d] = h.to_edge
            for x in runs.values():
                if (x.last_member == d and x.pred_s >= t_s and not x.stopped and x.ring.key.n_tiers >= 2
                        and x.at != h.to_edge and x.at in ctx.fleet.edges):
                    self._follow_active_member(ctx, x, d, h.to_edge, start)
        ctx.sim.record(ctx.round, now_s, moves)

    def _follow_active_member(self, ctx: RoundContext, x: _RingRun, device: str, dst: str, start) -> None:
        src = x.at
        result = ctx.ops.handover.move(_RingSessionMover(self, ctx, x, start), device, src, dst)
        ctx.ops.note_move(device, src, dst, result, ring=x.rid)
