"""Adaptive re-planning follows time-varying resources in emulated time: when a trace slows a
device down, the planner is asked again, the new split pays, and the next rounds train it."""

from __future__ import annotations

import json

import pytest

from tierflow.orchestrator.clock import build_cost_model
from tierflow.orchestrator.planning import Observed, plan_device, switch_pays
from tierflow.orchestrator.runner import RunOptions, run_scenario
from tierflow.orchestrator.scenario import parse_scenario
from tierflow.orchestrator.world import load_dataset

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


def test_a_device_slowed_by_the_trace_is_replanned_and_offloads(ray_session, tmp_path):
    # Fast as the edge at first (everything stays on the device); from t = 1 µs d0 is 10,000× slower.
    (tmp_path / "res.csv").write_text("time_s,entity,flops_per_s,bandwidth_bps\n0.000001,d0,1e8,\n")
    sc = parse_scenario({**SCENARIO, "resources": {"trace": "res.csv"}}, str(tmp_path / "s.yaml"),
                        base_dir=tmp_path)
    graph = build_cost_model(sc, load_dataset(sc).shape)[0].graph
    before = plan_device(sc, graph, sc.devices[0], "e0")
    slow = Observed(1e8, 100e6, 1e12, 1000e6)
    after = plan_device(sc, graph, sc.devices[0], "e0", observed=slow)
    assert after.key.counts()[0] < before.key.counts()[0]  # the planner's own answer
    assert switch_pays(sc, graph, sc.devices[0], "e0", before.key, after, slow)

    run_scenario(sc, RunOptions(out_dir=tmp_path / "out", progress=False))
    events = [json.loads(x) for x in (tmp_path / "out" / "events.jsonl").read_text().splitlines()]
    rounds = [e for e in events if e["event"] == "round_end"]
    replans = [e for e in events if e["event"] == "replan"]
    assert replans[0]["changed"] == 1  # d0 only: d1's resources did not change
    assert rounds[0]["splits"]["d0"] == rounds[0]["splits"]["d1"]
    assert rounds[1]["splits"]["d0"][0] < rounds[0]["splits"]["d0"][0]
    assert rounds[1]["splits"]["d1"] == rounds[0]["splits"]["d1"]


def test_switching_does_not_pay_for_a_negligible_gain(ray_session):
    sc = parse_scenario(SCENARIO, "s.yaml")
    graph = build_cost_model(sc, load_dataset(sc).shape)[0].graph
    plan = plan_device(sc, graph, sc.devices[0], "e0")
    same = plan_device(sc, graph, sc.devices[0], "e0", observed=plan.observed)
    assert not switch_pays(sc, graph, sc.devices[0], "e0", plan.key, same, plan.observed)
