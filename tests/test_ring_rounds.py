"""Capability rings as a round policy: the plan as data, the ring average, the oracle (a ring's split
training through real actors equals one plain model trained member after member), and a real run
with rings of unequal speed across two edges, a handover and a re-plan."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_runner import small_scenario

from tierflow.orchestrator.rings_round import (
    RingRounds,
    form_ring_groups,
    hop_cost_s,
    hops_in_interval,
    plan_ring_round,
    ring_average,
)
from tierflow.orchestrator.round_policies import ROUND_POLICIES, round_policy_for
from tierflow.orchestrator.rounds import SyncRounds
from tierflow.orchestrator.runner import RunOptions, run_scenario
from tierflow.orchestrator.scenario import parse_scenario
from tierflow.orchestrator.world import build_world
from tierflow.tiers.hosts import BatchSampler
from tierflow.tiers.models import build_model
from tierflow.tiers.optim import make_optimizer
from tierflow.tiers.session import SplitKey

KEY = SplitKey((("x", 0),), 1)


# ----- pure: the plan, the grouping, the average -----
def test_hops_fill_the_interval_fast_rings_make_more_and_every_ring_at_least_one():
    assert hops_in_interval((1.0, 1.0, 1.0), 3.0) == 3
    assert hops_in_interval((0.25, 0.25), 3.0) == 12
    assert hops_in_interval((5.0,), 3.0) == 1  # slower than the interval: still one hop
    assert hops_in_interval((1.0, 2.0), 4.0) == 3  # 1 + 2 + 1 fits, the next 2 does not
    assert hops_in_interval((1.0, 1.0), 3.0, pass_s=(0.5, 0.5)) == 2  # 1, then 0.5 + 1; the first hop needs no pass


def _plan(times, edges, k, interval_s=None, formed=None, pass_s=None, firsts=None):
    return plan_ring_round(times, edges, k, ring_split=lambda members: KEY,
                           hop_time_s=lambda d, key: times[d] / 2, interval_s=interval_s, formed=formed,
                           pass_time_s=pass_s, firsts=firsts)


def test_the_plan_groups_by_speed_respects_k_leaves_out_the_disconnected_and_is_deterministic():
    # Two speed classes, 10x apart; a fast device out of coverage; rounds of 2 hops (cloud_every = 2).
    times = {"f0": 1.0, "f1": 1.1, "f2": 0.9, "s0": 10.0, "s1": 11.0, "gone": 1.0}
    edges = {"f0": "e0", "f1": "e1", "f2": "e0", "s0": "e1", "s1": "e0", "gone": None}
    plan = _plan(times, edges, 2)
    assert plan.left_out == ("gone",)
    assert len(plan.rings) == 2
    fast, slow = plan.rings
    assert set(fast.members) == {"f0", "f1", "f2"} and set(slow.members) == {"s0", "s1"}
    assert fast.members[0] == "f2"  # a ring starts with its fastest member
    assert plan.interval_s == 11.0  # the slowest device's synchronous round
    assert slow.hops == 2 and fast.hops == 22  # fast rings make more hops; the slow one fills its round
    assert all(r.hops >= 1 for r in plan.rings)
    assert plan == _plan(dict(reversed(times.items())), edges, 2)  # the same plan whatever the input order
    text = str(plan)
    assert "ring:0" in text and "22 hops" in text and "left out: gone" in text
    assert [len(r.members) for r in _plan(times, edges, 5).rings] == [1, 1, 1, 1, 1]
    assert len(_plan(times, edges, 9).rings) == 5  # K is capped by the devices connected
    assert len(_plan(times, edges, None).rings) == 2  # auto: form_rings' own choice
    assert _plan(times, edges, 2, interval_s=0.1).rings[0].hops == 1
    # Moving the ring session between edges costs hops: f2 -> f0 stay on e0, f0 -> f1 -> f2 cross.
    crossing = _plan(times, edges, 2, pass_s=lambda a, b, key: 0.0 if edges[a] == edges[b] else 0.5)
    fast = crossing.rings[0]
    assert sorted(fast.pass_s) == [0.0, 0.5, 0.5]
    assert fast.members == ("f2", "f0", "f1")  # the members of one edge together, the fastest first
    # The first hop needs no pass: 2.0 s round once, then 2.5 s (with passes) three times, then f2, f0.
    assert fast.hops == 14 and fast.predicted_s <= 11.0
    assert crossing.rings[1].hops == 2  # 5.0, then 0.5 + 5.5: exactly the interval
    assert fast.predicted_s == sum(hop_cost_s(fast.hop_s, fast.pass_s, h) for h in range(fast.hops))


def test_formed_rings_are_kept_while_valid_and_re_formed_when_membership_changes():
    times = {"a": 1.0, "b": 1.2, "c": 5.0, "d": 5.5}
    edges = {"a": "e0", "b": "e0", "c": "e1", "d": "e1"}
    custom = ((("b", "a"), KEY), (("c", "d"), KEY))  # not what forming would choose: kept as given
    kept = _plan(times, edges, 2, formed=custom, firsts=[1, 1])
    assert not kept.reformed and [r.members for r in kept.rings] == [("b", "a"), ("c", "d")]
    assert kept.rings[1].first == 1 and kept.rings[1].member(0) == "d"  # going on where the last round stopped
    gone = dict(edges, d=None)
    fresh = _plan(times, gone, 2, formed=custom, firsts=[1, 1])
    assert fresh.reformed and [r.members for r in fresh.rings] == [("a", "b"), ("c",)]
    assert [r.first for r in fresh.rings] == [0, 0]
    assert form_ring_groups(times, gone, 2) == (("a", "b"), ("c",))


def test_a_ring_with_fewer_hops_than_members_visits_all_of_them_over_the_rounds():
    times = {"a": 1.0, "b": 1.0, "c": 1.0}
    edges = dict.fromkeys(times, "e0")
    plan = _plan(times, edges, 1, interval_s=1.0)  # hops of 0.5: two fit, three members
    assert plan.rings[0].hops == 2
    seen, firsts = [], None
    for _ in range(3):
        ring = _plan(times, edges, 1, interval_s=1.0, formed=((plan.rings[0].members, KEY),), firsts=firsts).rings[0]
        seen += [ring.member(h) for h in range(ring.hops)]
        firsts = [(ring.first + ring.hops) % len(ring.members)]
    assert seen == [*plan.rings[0].members, *plan.rings[0].members]
    assert hops_in_interval((1.0, 5.0, 1.0), 2.0, first=2) == 2  # the third member, then the first; not the second
    assert hops_in_interval((1.0, 5.0, 1.0), 2.0, first=1) == 1  # the slow one first: still one hop
    assert hop_cost_s((1.0, 2.0), (0.5, 0.25), 1, first=1) == 1.5  # member 0 after member 1: 1.0 + its pass 0.5


def test_ring_average_weights_by_samples_and_drops_rings_that_trained_nothing():
    a, b = {"w": np.array([1.0, 3.0])}, {"w": np.array([5.0, 7.0])}
    np.testing.assert_allclose(ring_average([(a, 30.0), (b, 10.0)])["w"], [2.0, 4.0])
    np.testing.assert_allclose(ring_average([(a, 0.0), (b, 10.0)])["w"], [5.0, 7.0])
    with pytest.raises(AssertionError):
        ring_average([(a, 0.0)])


def test_round_policies_are_registered_by_name():
    assert isinstance(round_policy_for("off"), SyncRounds)
    assert isinstance(round_policy_for(2), RingRounds) and isinstance(round_policy_for("auto"), RingRounds)
    assert ROUND_POLICIES["rings"]().name == "rings" and ROUND_POLICIES["sync"]().name == "sync"


# ----- the oracle, through the real actors -----
def sequential_oracle(scenario, visits: list[list[str]]) -> dict[str, torch.Tensor]:
    """One plain model: each round, the members in visit order each train local_steps on their own
    batches; one optimizer per round (a ring's optimizer state passes along and starts afresh each round)."""
    world = build_world(scenario)
    tr = scenario.training
    names = [d.name for d in scenario.devices]
    model = build_model(scenario.model.name, world.dataset.shape, seed=tr.seed)
    model.train()
    samplers = [BatchSampler(len(idx), tr.batch_size, tr.seed * 100_003 + i) for i, idx in enumerate(world.shards)]
    for visit in visits:
        opt = make_optimizer(model.parameters(), tr.optimizer)
        for name in visit:
            i = names.index(name)
            idx = world.shards[i]
            x, y = world.dataset.x_train[idx], world.dataset.y_train[idx]
            for _ in range(tr.local_steps):
                b = samplers[i].next_indices()
                opt.zero_grad()
                F.cross_entropy(model(torch.from_numpy(x[b])), torch.from_numpy(y[b])).backward()
                opt.step()
    return model.state_dict()


@pytest.mark.ray
@pytest.mark.parametrize("split", [["pool1"], pytest.param(["pool1", "relu4"], marks=pytest.mark.slow)])
def test_a_ring_equals_sequential_training_member_after_member(ray_session, tmp_path, split):
    # Three equal devices on two edges, one ring; the interval (five hops' worth, cloud_every = 5, less the
    # ring session's passes between the edges) holds four hops or more, so the ring goes round and its first
    # member trains again; the session follows the members across the edges.
    spec = small_scenario("vgg5", split, devices=3, edges=2, rounds=2, local_steps=3, cloud_every=5)
    spec["policy"] = {"rings": 1}
    spec["execution"] = {"device_hosts": 1}
    scenario = parse_scenario(spec, "ring.yaml")
    summary = run_scenario(scenario, RunOptions(out_dir=tmp_path, progress=False))
    events = [json.loads(x) for x in (tmp_path / "events.jsonl").read_text().splitlines()]
    formed = [e for e in events if e["event"] == "rings_formed"]
    assert len(formed) == 1 and sorted(formed[0]["rings"]["ring:0"]) == ["d0", "d1", "d2"]
    order = formed[0]["rings"]["ring:0"]
    plans = [e for e in events if e["event"] == "ring_round"]
    assert len(plans) == 2 and all(p["hops"]["ring:0"] >= 4 and p["trained_hops"] == p["hops"] for p in plans)
    visits = [[order[(order.index(p["first"]["ring:0"]) + h) % 3] for h in range(p["trained_hops"]["ring:0"])]
              for p in plans]
    assert plans[1]["first"]["ring:0"] == order[plans[0]["hops"]["ring:0"] % 3]  # round 2 goes on from round 1
    assert summary["ring_passes"] >= 2 * 2 and summary["ring_pass_bytes"] > 0  # e0 -> e1 -> e0 each round
    assert summary["migrations"] == 0  # nobody moved: ring passes are not handover migrations
    rounds = [e for e in events if e["event"] == "round_end"]
    assert all(e["devices_per_ring"] == {"ring:0": 3} for e in rounds)
    assert [e["samples"] for e in rounds] == [p["hops"]["ring:0"] * 3 * 16 for p in plans]
    got = torch.load(tmp_path / "model.pt")
    expected = sequential_oracle(scenario, visits)
    for name, value in expected.items():
        diff = (got[name].double() - value.double()).abs().max().item()
        assert diff <= 1e-5, f"{name}: {diff}"


# ----- a real run: unequal rings on two edges, a handover, a re-plan -----
# m0 (the slowest device, a ring of its own) walks from e0's area into e1's during round 2 (mobility:
# 100 s per round), mid-hop: under `restart` its ring loses that round's work.
TRACE = "time_s,device,x,y\n0,m0,60,0\n140,m0,60,0\n160,m0,940,0\n"


@pytest.fixture(scope="module")
def ring_run(ray_session, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ring_run")
    (tmp / "trace.csv").write_text(TRACE)
    fast = [{"name": f"f{i}", "edge": f"e{i % 2}", "flops_per_s": 5e9, "bandwidth_mbps": 200} for i in range(3)]
    slow = [{"name": f"s{i}", "edge": f"e{(i + 1) % 2}", "flops_per_s": 5e8, "bandwidth_mbps": 20} for i in range(2)]
    spec = {
        "name": "rings",
        "cloud": {"flops_per_s": 1e11},  # no faster than an edge: the planner keeps the layers on the edges
        "edges": [{"name": "e0", "position": [0, 0], "radius_m": 600, "flops_per_s": 1e11},
                  {"name": "e1", "position": [1000, 0], "radius_m": 600, "flops_per_s": 1e11}],
        "devices": [*fast, *slow, {"name": "m0", "position": [60, 0], "flops_per_s": 2e8, "bandwidth_mbps": 10}],
        "model": {"name": "vgg5"},
        "training": {"rounds": 3, "local_steps": 4, "batch_size": 16, "seed": 3,
                     "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}},
        "aggregation": {"schedule": "hierfavg", "cloud_every": 2},
        "split": ["pool1"],
        "mobility": {"model": "trace", "trace": str(tmp / "trace.csv"), "round_duration_s": 100,
                     "hysteresis_m": 20},
        "policy": {"rings": 3, "placement": "adaptive", "handover": "restart"},
        "execution": {"device_hosts": 1},
    }
    scenario = parse_scenario(spec, str(tmp / "rings.yaml"))
    summary = run_scenario(scenario, RunOptions(out_dir=tmp / "out", progress=False))
    events = [json.loads(x) for x in (tmp / "out" / "events.jsonl").read_text().splitlines()]
    return summary, events


@pytest.mark.ray
def test_a_ring_run_trains_fast_rings_more_and_counts_ring_passes_apart_from_migrations(ring_run):
    summary, events = ring_run
    rounds = [e for e in events if e["event"] == "round_end"]
    assert len(rounds) == 3
    assert all(sorted(e["devices_per_ring"].values()) == [1, 2, 3] for e in rounds)
    assert rounds[-1]["accuracy"] > rounds[0]["accuracy"] or rounds[-1]["loss"] < rounds[0]["loss"]
    first = next(e for e in events if e["event"] == "rings_formed")
    assert sorted(first["rings"]["ring:0"]) == ["f0", "f1", "f2"]  # the fast ring
    assert first["rings"]["ring:2"] == ["m0"]
    plan = next(e for e in events if e["event"] == "ring_round")
    assert plan["hops"]["ring:0"] > plan["hops"]["ring:1"] >= 1
    assert all(len(split) == 2 and split[0] > 0 for split in first["splits"].values())  # device | edge
    passes = [e for e in events if e["event"] == "ring_pass"]
    assert passes and all(e["ok"] and e["from_edge"] != e["to_edge"] and e["bytes"] > 0 for e in passes)
    assert summary["ring_passes"] == len(passes)
    assert summary["ring_pass_bytes"] == sum(e["bytes"] for e in passes)
    moves = [e for e in events if e["event"] == "migration"]
    assert summary["migrations"] == sum(1 for e in moves if e["ok"] and e["policy"] == "migrate")
    assert all(e["duration_s"] > 0 for e in rounds)


@pytest.mark.ray
def test_a_handover_mid_hop_restarts_the_ring_and_the_re_plan_re_forms_the_rings(ring_run):
    summary, events = ring_run
    handover = next(e for e in events if e["event"] == "handover" and e["device"] == "m0")
    assert (handover["from_edge"], handover["to_edge"]) == ("e0", "e1") and handover["round"] == 2
    assert summary["handovers"] == 1 and summary["restarts"] == 1 and summary["migrations"] == 0
    restart = next(e for e in events if e["event"] == "migration")
    assert (restart["ring"], restart["device"], restart["policy"]) == ("ring:2", "m0", "restart")
    plans = {e["round"]: e for e in events if e["event"] == "ring_round"}
    assert plans[2]["samples"]["ring:2"] < plans[1]["samples"]["ring:2"]  # the work before the move is lost
    formed = [e for e in events if e["event"] == "rings_formed"]
    assert [e["round"] for e in formed][:2] == [1, 3]  # re-formed in the round after the move and re-plan
    assert formed[1]["edges"]["m0"] == "e1"
    assert any(e["event"] == "replan" and e["round"] == 2 for e in events)
