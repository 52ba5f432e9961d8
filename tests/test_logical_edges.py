"""Logical edges, many per actor: a run's layout of edges over processes changes nothing it computes,
and a move between two edges of one process takes the channel's whole path (encode, MAC, ACK)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tierflow.migration import channel
from tierflow.orchestrator.errors import TierflowError
from tierflow.orchestrator.events import WALL_CLOCK_FIELDS, read_events
from tierflow.orchestrator.fleet import Fleet
from tierflow.orchestrator.runner import Orchestrator, RunOptions
from tierflow.orchestrator.scenario import parse_scenario
from tierflow.tiers.edge_host import EdgeHost, assign_edges
from tierflow.tiers.session import Session

KEY = b"k" * 32
# Fields that say where actors run (which differ by layout by design), besides wall-clock ones.
PLACEMENT_FIELDS = {"actor_nodes", "peak_rss_mb"}


def moving_city(edge_hosts: int, cars: int = 4, spread_m: float = 400) -> object:
    """Three edges in a row, cars and a 3-tier phone crossing them, handovers every 2 steps."""
    spec = {
        "name": "logical-edges",
        "cloud": {"flops_per_s": 1e12},
        "edges": [{"name": n, "position": [x, 0], "radius_m": 320, "flops_per_s": 1e11, "cloud_bandwidth_mbps": 500}
                  for n, x in (("w", 0), ("m", 500), ("e", 1000))],
        "devices": [{"name": "car", "count": cars, "position": [500, 0], "spread_m": spread_m,
                     "flops_per_s": [1e9, 8e9], "bandwidth_mbps": [10, 60]},
                    {"name": "phone", "position": [480, 20], "flops_per_s": 4e9, "bandwidth_mbps": 30,
                     "split": ["relu1", "relu2"]}],
        "model": {"name": "mlp"},
        "dataset": {"name": "digits", "partition": "iid"},
        "training": {"rounds": 3, "local_steps": 4, "batch_size": 16, "seed": 5,
                     "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}},
        "aggregation": {"cloud_every": 1},
        "split": ["relu1"],
        "mobility": {"model": "random_waypoint", "speed_mps": [150, 250], "pause_s": 0, "area_m": [1000, 100],
                     "hysteresis_m": 5, "check_every_steps": 2, "round_duration_s": 4},
        "execution": {"edge_hosts": edge_hosts, "device_hosts": 2, "engine": "vectorized"},
    }
    return parse_scenario(spec, "logical.yaml")


def _run(sc, out: Path, fleet: type[Fleet] = Fleet) -> tuple[dict, list[dict], dict]:
    summary = Orchestrator(sc, RunOptions(out_dir=out, progress=False), fleet).run()
    return summary, read_events(out / "events.jsonl"), torch.load(out / "model.pt")


def _computed(event: dict) -> dict:
    return {k: v for k, v in event.items() if k not in WALL_CLOCK_FIELDS and k not in PLACEMENT_FIELDS}


@pytest.mark.ray
def test_one_edge_host_computes_what_one_host_per_edge_computes(ray_session, tmp_path):
    shared, shared_events, shared_state = _run(moving_city(1), tmp_path / "shared")
    apart, apart_events, apart_state = _run(moving_city(3), tmp_path / "apart")
    kinds = {e["event"] for e in shared_events}
    assert {"handover", "migration"} <= kinds  # the scenario really moves
    assert any(e["event"] == "migration" and e["ok"] for e in shared_events)
    assert set(shared_state) == set(apart_state)
    for name, value in shared_state.items():
        assert torch.equal(value, apart_state[name]), name
    for field in ("virtual_time_s", "bytes_up", "bytes_down", "migration_bytes", "migrations", "handovers",
                  "final_accuracy"):
        assert shared[field] == apart[field], field
    assert [_computed(e) for e in shared_events] == [_computed(e) for e in apart_events]
    # Every logical edge is still reported by name, whichever process it shares.
    assert {k for k in shared["actor_nodes"] if k.startswith("edge:")} == {"edge:w", "edge:m", "edge:e"}
    assert {k for k in shared["peak_rss_mb"] if k.startswith("edge:")} == {"edge:w", "edge:m", "edge:e"}


class OneByOne(Fleet):
    """The reference: every move of a check alone, one Ray call and one transfer each."""

    def migrate_many(self, moves):
        alone = super().migrate_many
        return [alone([m])[0] for m in moves]


class CountsTransfers(Fleet):
    batch_sizes: list[int] = []  # per migrate_many call, the most moves one pair of edges sent together

    def migrate_many(self, moves):
        pairs = {}
        for m in moves:
            pairs[(m.src, m.dst)] = pairs.get((m.src, m.dst), 0) + 1
        type(self).batch_sizes.append(max(pairs.values()))
        return super().migrate_many(moves)


@pytest.mark.ray
def test_a_checks_migrations_made_together_equal_them_one_by_one(ray_session, tmp_path):
    """The handovers of one check migrate together (a pair of edges' moves as one transfer, edges
    sending and receiving at once) and the run is the one-by-one run."""
    CountsTransfers.batch_sizes = []
    crowded = moving_city(1, cars=12, spread_m=200)
    together, together_events, together_state = _run(crowded, tmp_path / "together", CountsTransfers)
    alone, alone_events, alone_state = _run(crowded, tmp_path / "alone", OneByOne)
    assert max(CountsTransfers.batch_sizes) >= 2  # some pair of edges really sent a batch
    assert together["migrations"] == alone["migrations"] > 2 and together["failed_migrations"] == 0
    for name, value in together_state.items():
        assert torch.equal(value, alone_state[name]), name
    for field in ("virtual_time_s", "bytes_up", "bytes_down", "migration_bytes", "handovers", "final_accuracy"):
        assert together[field] == alone[field], field
    assert [_computed(e) for e in together_events] == [_computed(e) for e in alone_events]


def test_edges_are_assigned_to_hosts_round_robin_and_the_option_is_checked():
    assert assign_edges(["a", "b", "c", "d", "e"], 2) == [["a", "c", "e"], ["b", "d"]]
    assert assign_edges(["a", "b"], 5) == [["a"], ["b"]]  # never an empty host
    assert moving_city(2).execution.edge_hosts == 2
    with pytest.raises(TierflowError, match="execution.edge_hosts"):
        moving_city(0)


# ----- one edge host, no Ray: moves between its edges go over its own migration receiver -----
def _host(name: str = "h") -> EdgeHost:
    from test_device_group import MOMENTUM, SHAPE, TOKEN

    host = EdgeHost(name, ["a", "b"], "mlp", SHAPE, MOMENTUM, token=TOKEN)
    host.start_migration_receiver(KEY)
    return host


def _open(host: EdgeHost, ids) -> dict[str, dict]:
    from test_device_group import _full_states, _key, _setups

    key = _key("mlp", [2])
    setups = _setups(shards=[13] * len(ids))
    states = _full_states("mlp", setups)
    for i, sid in enumerate(ids):
        host.on("a", "open_session", sid, key, states[setups[i].device_id], 1.0 + i)
        host.edges["a"].sessions[sid].steps_done = 3 + i
    return {sid: host.edges["a"].sessions[sid].export() for sid in ids}


def _same_session(got: Session, want: tuple[dict, dict]) -> None:
    meta, arrays = got.export()
    assert meta == want[0]
    assert set(arrays) == set(want[1])
    for k, v in arrays.items():
        assert np.array_equal(v, want[1][k]), k


def test_a_batched_transfer_equals_the_moves_one_by_one():
    ids = ["s0", "s1", "s2"]
    batched, single = _host("batched"), _host("single")
    try:
        before = _open(batched, ids)
        _open(single, ids)
        outs = batched.migrate_out("a", ids, "b", batched.receiver.endpoint, KEY, 5.0)
        one_by_one = [single.migrate_out("a", [sid], "b", single.receiver.endpoint, KEY, 5.0)[0] for sid in ids]
        assert all(o.ok for o in outs + one_by_one)
        assert [o.bytes_ for o in outs] == [o.bytes_ for o in one_by_one] and outs[0].bytes_ > 0
        assert batched.receiver.accepted == single.receiver.accepted == 3
        for sid in ids:
            _same_session(batched.edges["b"].sessions[sid], before[sid])
            _same_session(single.edges["b"].sessions[sid], before[sid])
            assert sid in batched.edges["a"].sessions  # the source drops only when the fleet says so
    finally:
        batched.shutdown()
        single.shutdown()


def test_more_moves_than_one_transfer_holds_all_land_in_several(monkeypatch):
    """A check can move more sessions between one pair of edges than a batch holds (MAX_BATCH):
    they go as several transfers, every one verified, instead of being refused together."""
    monkeypatch.setattr(channel, "MAX_BATCH", 2)
    ids = ["s0", "s1", "s2", "s3", "s4"]
    host = _host()
    try:
        before = _open(host, ids)
        outs = host.migrate_out("a", ids, "b", host.receiver.endpoint, KEY, 5.0)
        assert [o.ok for o in outs] == [True] * 5, [o.error for o in outs]
        assert host.receiver.accepted == 5
        for sid in ids:
            _same_session(host.edges["b"].sessions[sid], before[sid])
    finally:
        host.shutdown()


def test_two_hosts_sending_to_each_other_at_once_both_land():
    """A check may move sessions a -> b and b -> a at once between two processes: each sender
    holds its edge's lock only while it copies, so neither waits on the other's ACK under it (held
    through the send, both would time out: the receiver needs the lock to store what it got)."""
    import threading

    from test_device_group import MOMENTUM, SHAPE, TOKEN, _full_states, _key, _setups

    x = EdgeHost("x", ["a"], "mlp", SHAPE, MOMENTUM, token=TOKEN)
    y = EdgeHost("y", ["b"], "mlp", SHAPE, MOMENTUM, token=TOKEN)
    hosts = {"a": x, "b": y}
    try:
        for h in (x, y):
            h.start_migration_receiver(KEY)
        key, setups = _key("mlp", [2]), _setups(shards=[13] * 4)
        states = _full_states("mlp", setups)
        ids = {"a": ["d0", "d1"], "b": ["d2", "d3"]}
        for edge, sids in ids.items():
            for sid in sids:
                hosts[edge].on(edge, "open_session", sid, key, states[sid], 1.0)
        before = {sid: hosts[e].edges[e].sessions[sid].export() for e, sids in ids.items() for sid in sids}
        outs: dict[str, list] = {}
        # Each sender pauses while it holds its lock, so both are inside their transfer together.
        for edge in ("a", "b"):
            session = hosts[edge].edges[edge].sessions[ids[edge][0]]
            honest = session.export
            session.export = lambda honest=honest: (threading.Event().wait(0.2), honest())[1]
        threads = [threading.Thread(target=lambda src=src, dst=dst: outs.__setitem__(src, hosts[src].migrate_out_many(
            [(src, ids[src], dst, hosts[dst].receiver.endpoint)], KEY, 3.0))) for src, dst in (("a", "b"), ("b", "a"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=20)
        for src, dst in (("a", "b"), ("b", "a")):
            assert [o.ok for o in outs[src][0]] == [True, True], [o.error for o in outs[src][0]]
            for sid in ids[src]:
                _same_session(hosts[dst].edges[dst].sessions[sid], before[sid])
    finally:
        x.shutdown()
        y.shutdown()


def test_a_transfer_from_a_gone_edge_fails_alone():
    host = _host()
    try:
        _open(host, ["s0"])
        host.kill("b")
        outs = host.migrate_out_many([("b", ["s9"], "a", host.receiver.endpoint),
                                      ("a", ["s0"], "b", host.receiver.endpoint)], KEY, 2.0)
        assert not outs[0][0].ok and "not served" in outs[0][0].error
        assert not outs[1][0].ok  # b is gone at the receiving end too: refused, the source keeps it
        assert "s0" in host.edges["a"].sessions
    finally:
        host.shutdown()


def test_a_corrupted_session_of_a_batch_is_refused_alone_and_the_source_keeps_it(monkeypatch):
    honest = channel.encode_batch

    def corrupt_s1(key, items, chunk_bytes=2**21):
        batch = honest(key, items, chunk_bytes)
        last = batch.messages[-2]  # the last DATA message: flip the last byte of s1's last chunk
        last[-1] = bytes(last[-1])[:-1] + bytes([bytes(last[-1])[-1] ^ 1])
        return batch

    ids = ["s0", "s1"]
    host = _host()
    try:
        before = _open(host, ids)
        monkeypatch.setattr(channel, "encode_batch", corrupt_s1)
        outs = host.migrate_out("a", ids, "b", host.receiver.endpoint, KEY, 5.0)
        assert outs[0].ok and not outs[1].ok and "bad MAC" in outs[1].error and outs[1].bytes_ == 0
        assert set(host.edges["b"].sessions) == {"s0"}
        assert host.receiver.refusals.counts() == {"unauthenticated": 1}
        _same_session(host.edges["a"].sessions["s1"], before["s1"])  # nothing lost at the source
    finally:
        host.shutdown()


def test_a_single_move_under_a_wrong_key_is_dropped_and_the_source_keeps_it():
    """One session travels as a plain transfer; a sender without the run key gets no answer at all."""
    host = _host()
    try:
        before = _open(host, ["s0"])
        outs = host.migrate_out("a", ["s0"], "b", host.receiver.endpoint, b"x" * 32, 0.5)
        assert not outs[0].ok and "no answer" in outs[0].error
        assert host.edges["b"].sessions == {} and set(host.receiver.refusals.counts()) == {"unauthenticated"}
        _same_session(host.edges["a"].sessions["s0"], before["s0"])
    finally:
        host.shutdown()


def test_a_killed_logical_edge_refuses_while_its_host_mate_serves():
    host = _host()
    try:
        _open(host, ["s0"])
        host.kill("a")
        assert host.ping("a") == "" and host.ping("b") == "b"
        with pytest.raises(Exception, match="not served"):
            host.on("a", "session_ids")
        assert host.on("b", "session_ids") == []
    finally:
        host.shutdown()


def test_an_unknown_edge_call_is_refused():
    host = _host()
    try:
        with pytest.raises(ValueError, match="not an edge call"):
            host.on("a", "shutdown")
    finally:
        host.shutdown()



def test_closed_sessions_leave_no_cycles_for_the_collector_a_host_runs_less_often():
    """Hosts collect young objects rarely (tiers/memory.py relax_gc), which is only safe because
    sessions are freed by reference counting: opening, migrating and closing them leaves no cycles."""
    import gc

    from tierflow.tiers.memory import GC_YOUNG_THRESHOLD

    host = _host()
    try:
        assert gc.get_threshold()[0] >= GC_YOUNG_THRESHOLD
        ids = [f"s{i}" for i in range(6)]
        _open(host, ids)
        assert all(o.ok for o in host.migrate_out("a", ids, "b", host.receiver.endpoint, KEY, 5.0))
        gc.collect()
        host.on("a", "close_sessions", ids)
        host.on("b", "close_sessions", ids)
        assert gc.collect() == 0
    finally:
        host.shutdown()


def test_a_run_relaxes_the_collector_only_while_it_runs():
    import gc

    from tierflow.tiers.memory import GC_YOUNG_THRESHOLD, relaxed_gc

    before = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    try:
        with relaxed_gc():
            assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, 10, 10)
        assert gc.get_threshold() == (700, 10, 10)
    finally:
        gc.set_threshold(*before)
