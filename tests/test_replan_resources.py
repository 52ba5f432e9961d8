"""Adaptive re-planning follows time-varying resources in emulated time: when a trace slows a
device down, the planner is asked again, the new split pays, and the next rounds train it."""

from __future__ import annotations

import json

import pytest

from tierflow.orchestrator.clock import build_cost_model
from tierflow.orchestrator.planning import Planner
from tierflow.orchestrator.runner import RunOptions, run_scenario
from tierflow.orchestrator.scenario import parse_scenario
from tierflow.orchestrator.world import build_world
from tierflow.placement.cost import TierSpeeds

pytestmark = pytest.mark.ray

SCENARIO = {
    "name": "replan",
    "cloud": {"flops_per_s": 1e9},
    "edges": [{"name": "e0", "position": [0, 0], "radius_m": 500, "flops_per_s": 1e12}],
    "devices": [{"name": "d0", "position": [10, 0], "flops_per_s": 1e12, "bandwidth_mbps": 100},
                {"name": "d1", "position": [20, 0], "flops_per_s": 1e12, "bandwidth_mbps": 100}],
    "model": {"name": "vgg5"},
    "training": {"rounds": 3, "local_steps": 3, "batch_size": 16},
    "policy": {"placement": "adaptive"},
}
EDGES = {"d0": "e0", "d1": "e0"}


def test_a_device_slowed_by_the_trace_is_replanned_and_offloads(ray_session, tmp_path):
    # Fast as the edge at first (everything stays on the device); from t = 1 µs d0 is 10,000× slower.
    (tmp_path / "res.csv").write_text("time_s,entity,flops_per_s,bandwidth_bps\n0.000001,d0,1e8,\n")
    sc = parse_scenario({**SCENARIO, "resources": {"trace": "res.csv"}}, str(tmp_path / "s.yaml"),
                        base_dir=tmp_path)
    planner = _planner(sc)
    before = planner.initial_plan()
    fast, slow = TierSpeeds(1e12, 1e12, 100e6, 1e9, 1000e6), TierSpeeds(1e8, 1e12, 100e6, 1e9, 1000e6)
    decision, after = planner.replan(["d0", "d1"], EDGES, {"d0": slow, "d1": fast},
                                     {d: p.key for d, p in before.items()}, rounds_left=2)
    assert decision.adopted and decision.changed == ("d0",)  # the planner's own answer: d1 need not move
    assert after["d0"].key.counts()[0] < before["d0"].key.counts()[0]
    assert decision.after_s < decision.before_s

    run_scenario(sc, RunOptions(out_dir=tmp_path / "out", progress=False))
    events = [json.loads(x) for x in (tmp_path / "out" / "events.jsonl").read_text().splitlines()]
    rounds = [e for e in events if e["event"] == "round_end"]
    replans = [e for e in events if e["event"] == "replan"]
    assert replans[0]["changed"] == 1  # d0 only: d1's resources did not change
    assert rounds[0]["splits"]["d0"] == rounds[0]["splits"]["d1"]
    assert rounds[1]["splits"]["d0"][0] < rounds[0]["splits"]["d0"][0]
    assert rounds[1]["splits"]["d1"] == rounds[0]["splits"]["d1"]


def _planner(sc) -> Planner:
    world = build_world(sc)
    return Planner(sc, build_cost_model(sc, world.dataset.shape)[0], world.batch_sizes())


def test_switching_does_not_pay_for_a_negligible_gain():
    sc = parse_scenario(SCENARIO, "s.yaml")
    planner = _planner(sc)
    plans = planner.initial_plan()
    current = {d: p.key for d, p in plans.items()}
    fast = TierSpeeds(1e12, 1e12, 100e6, 1e9, 1000e6)
    nudged = TierSpeeds(0.98e12, 1e12, 100e6, 1e9, 1000e6)  # 2% slower: not worth a switch
    decision, again = planner.replan(["d0", "d1"], EDGES, {"d0": nudged, "d1": fast}, current, rounds_left=2)
    assert not decision.adopted and decision.changed == () and {d: p.key for d, p in again.items()} == current
    # A switch that saves but not within the horizon's rounds is not made either.
    slow = TierSpeeds(1e8, 1e12, 100e6, 1e9, 1000e6)
    decision, _ = planner.replan(["d0", "d1"], EDGES, {"d0": slow, "d1": fast}, current, rounds_left=0)
    assert not decision.adopted and decision.before_s > decision.after_s
