"""Adaptive placement in a real run: the planner's splits are the ones trained, and a handover re-plans."""

from __future__ import annotations

import json

import pytest
from test_migration_run import TRACE

from tierflow.orchestrator.clock import build_cost_model
from tierflow.orchestrator.planning import plan_scenario
from tierflow.orchestrator.runner import RunOptions, run_scenario
from tierflow.orchestrator.scenario import parse_scenario
from tierflow.orchestrator.world import build_world

pytestmark = pytest.mark.ray


def test_adaptive_placement_trains_the_planned_splits_and_replans_on_handover(ray_session, tmp_path):
    trace = tmp_path / "trace.csv"
    trace.write_text(TRACE)
    sc = parse_scenario({
        "name": "adaptive",
        "cloud": {"flops_per_s": 1e9},  # a slow cloud and fast edge e0: work stays near the device
        "edges": [{"name": "e0", "position": [0, 0], "radius_m": 1200, "flops_per_s": 1e12},
                  {"name": "e1", "position": [1000, 0], "radius_m": 600, "flops_per_s": 1e7}],
        "devices": [{"name": "d0", "position": [50, 0], "flops_per_s": 1e8, "bandwidth_mbps": 1000},
                    {"name": "d1", "position": [60, 0], "flops_per_s": 5e11, "bandwidth_mbps": 1}],
        "model": {"name": "vgg5"},
        "training": {"rounds": 2, "local_steps": 6, "batch_size": 16},
        "mobility": {"model": "trace", "trace": str(trace), "round_duration_s": 100, "check_every_steps": 2},
        "policy": {"placement": "adaptive"},
    }, "adaptive.yaml")
    world = build_world(sc)
    plans = plan_scenario(sc, build_cost_model(sc, world.dataset.shape)[0], world.batch_sizes())
    summary = run_scenario(sc, RunOptions(out_dir=tmp_path / "out", progress=False))
    events = [json.loads(x) for x in (tmp_path / "out" / "events.jsonl").read_text().splitlines()]
    first = next(e for e in events if e["event"] == "round_end")
    for d in ("d0", "d1"):
        assert first["splits"][d] == plans[d].key.counts() + [0] * (3 - plans[d].key.n_tiers)
    assert plans["d0"].key.counts()[0] < plans["d1"].key.counts()[0]  # the slow device offloads more
    replans = [e for e in events if e["event"] == "replan"]
    assert replans and replans[0]["changed"] == 1  # d0 moved under the slow edge e1: its plan changed
    last = [e for e in events if e["event"] == "round_end"][-1]
    assert last["splits"]["d0"] != first["splits"]["d0"]
    assert summary["migrations"] == 1


def test_real_time_replans_when_the_measured_device_speed_drifts(ray_session, tmp_path):
    # The device claims 1e13 FLOP/s, so the first plan keeps every layer on it; this host measures
    # far less, so after round 1 the planner is asked again and offloads to the (claimed fast) edge.
    # Its link is fast enough (100 Gbit/s) that syncing all of VGG-5's weights does not tip the first plan.
    sc = parse_scenario({
        "name": "drift",
        "cloud": {"flops_per_s": 1e9},
        "edges": [{"name": "e0", "position": [0, 0], "radius_m": 500, "flops_per_s": 1e12}],
        "devices": [{"name": "d0", "position": [0, 0], "flops_per_s": 1e13, "bandwidth_mbps": 100000}],
        "model": {"name": "vgg5"},
        "training": {"rounds": 2, "local_steps": 4, "batch_size": 16},
        "policy": {"placement": "adaptive"},
        "execution": {"time": "real"},
    }, "drift.yaml")
    run_scenario(sc, RunOptions(out_dir=tmp_path, progress=False))
    events = [json.loads(x) for x in (tmp_path / "events.jsonl").read_text().splitlines()]
    rounds = [e for e in events if e["event"] == "round_end"]
    assert rounds[0]["splits"]["d0"][0] == 12
    assert next(e for e in events if e["event"] == "replan")["changed"] == 1
    assert rounds[1]["splits"]["d0"][0] < 12
