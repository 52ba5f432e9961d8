"""The planner prices layers in the units the emulated clock charges (policy.plan_costs)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from tierflow.orchestrator.planning import layer_graph, plan_device, profile_for
from tierflow.orchestrator.runner import Orchestrator, RunOptions
from tierflow.orchestrator.scenario import load_scenario
from tierflow.placement.cost import batch_time_s
from tierflow.tiers.models import InputShape

HERE = Path(__file__).parent
SHAPE = InputShape(1, 8, 8, 10)  # digits


def _scenario(tmp_path: Path, **policy):
    data = yaml.safe_load((HERE / "good_scenario.yaml").read_text())
    data.pop("split")
    data["policy"] = {"placement": "adaptive", **policy}
    path = tmp_path / "costs.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_scenario(path)


def _synthetic_seconds(scenario) -> dict[str, tuple[float, float]]:
    flops_graph = layer_graph(replace(scenario, policy=replace(scenario.policy, plan_costs="flops")), SHAPE)
    return {n: (1e-6 * (i + 1), 2e-6 * (i + 1)) for i, n in enumerate(flops_graph.nodes)}


def test_measured_costs_are_timed_seconds_times_the_host_speed(tmp_path):
    sc = _scenario(tmp_path)
    seconds = _synthetic_seconds(sc)
    graph = layer_graph(sc, SHAPE, host_flops_per_s=1e10, node_seconds=seconds)
    for n, (fwd_s, bwd_s) in seconds.items():
        assert graph.nodes[n]["fwd_flops"] == pytest.approx(fwd_s * 1e10, rel=1e-12)
        assert graph.nodes[n]["bwd_flops"] == pytest.approx(bwd_s * 1e10, rel=1e-12)
    assert graph.graph["node_seconds"] == seconds and graph.graph["host_flops_per_s"] == 1e10
    # Priced this way, a device-only batch is predicted to take exactly what the clock would charge
    # for those measured seconds on a 1 GFLOP/s device: seconds x host / device (sync left out here).
    device = sc.devices[0]
    profile = replace(profile_for(sc, device, device.edge), syncs_per_round=0)
    local = {n: 0 for n in graph.nodes}
    expected = sum(f + b for f, b in seconds.values()) * sc.training.batch_size * 1e10 / device.flops_per_s
    assert batch_time_s(graph, local, profile) == pytest.approx(expected, rel=1e-12)
    plan_device(sc, graph, device, device.edge)  # and the planner accepts the priced graph


def test_flop_costs_keep_the_counted_flops(tmp_path):
    sc = _scenario(tmp_path, plan_costs="flops")
    graph = layer_graph(sc, SHAPE, host_flops_per_s=1e10, node_seconds=_synthetic_seconds(sc))
    assert graph.nodes["relu1"]["fwd_flops"] == 0  # an elementwise op counts no FLOPs ...
    assert graph.nodes["conv1"]["fwd_flops"] > 0
    assert "node_seconds" not in graph.graph


def test_timing_this_host_sees_what_flop_counts_miss(tmp_path):
    graph = layer_graph(_scenario(tmp_path), SHAPE)
    assert graph.nodes["relu1"]["fwd_flops"] > 0  # ... but it takes time, and the clock charges time
    assert set(graph.graph["node_seconds"]) == set(graph.nodes)


def test_a_profile_missing_layers_is_refused_by_name(tmp_path):
    sc = _scenario(tmp_path)
    seconds = _synthetic_seconds(sc)
    del seconds["conv2"]
    with pytest.raises(ValueError, match="conv2"):
        layer_graph(sc, SHAPE, host_flops_per_s=1e10, node_seconds=seconds)


def test_a_resumed_run_plans_with_the_profile_it_started_with(ray_session, tmp_path):
    sc = _scenario(tmp_path)
    seconds = _synthetic_seconds(sc)
    out = tmp_path / "run"
    first = Orchestrator(sc, RunOptions(out_dir=out, progress=False, node_seconds=seconds))
    first.run()
    state = json.loads((out / "checkpoint" / "state.json").read_text())["state"]
    assert {n: tuple(v) for n, v in state["node_seconds"].items()} == seconds
    resumed = Orchestrator(sc, RunOptions(out_dir=out, progress=False, resume=True))
    assert resumed.graph.graph["node_seconds"] != seconds  # it timed this host afresh ...
    resumed.run()
    assert resumed.graph.graph["node_seconds"] == seconds  # ... and the checkpoint put the run's profile back
    assert resumed.graph.graph["host_flops_per_s"] == first.graph.graph["host_flops_per_s"]
