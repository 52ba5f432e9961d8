"""One layer profile prices the plan and the clock (execution.compute), and it is data."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from tierflow.orchestrator.clock import build_cost_model
from tierflow.orchestrator.errors import TierflowError
from tierflow.orchestrator.planning import plan_scenario
from tierflow.orchestrator.runner import Orchestrator, RunOptions
from tierflow.orchestrator.scenario import load_scenario
from tierflow.placement.cost import TierSpeeds
from tierflow.placement.profile import LayerProfile, LayerTiming
from tierflow.tiers.models import InputShape
from tierflow.tiers.session import SplitKey

HERE = Path(__file__).parent
SHAPE = InputShape(1, 8, 8, 10)  # digits


def _scenario(tmp_path: Path, **execution):
    data = yaml.safe_load((HERE / "good_scenario.yaml").read_text())
    data.pop("split")
    data["policy"] = {"placement": "adaptive"}
    data["execution"] = {**data.get("execution", {}), **execution}
    path = tmp_path / "costs.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_scenario(path)


def _synthetic(scenario, host_flops_per_s: float = 1e10) -> LayerProfile:
    flops = build_cost_model(replace(scenario, execution=replace(scenario.execution, compute="flops")), SHAPE)[0]
    layers = {n: LayerTiming(1e-6 * (i + 1), 2e-6 * (i + 1)) for i, n in enumerate(flops.graph.nodes)}
    return LayerProfile(scenario.model.name, (1, 8, 8, 10), scenario.training.batch_size, host_flops_per_s, layers)


def test_profile_costs_are_timed_seconds_times_the_host_speed(tmp_path):
    sc = _scenario(tmp_path)
    given = _synthetic(sc)
    cost, profile = build_cost_model(sc, SHAPE, profile=given)
    assert profile is given and cost.host_flops_per_s == 1e10
    b = sc.training.batch_size
    for n, t in given.layers.items():
        assert cost.graph.nodes[n]["fwd_flops"] == pytest.approx(t.forward_s / b * 1e10, rel=1e-12)
        assert cost.graph.nodes[n]["bwd_flops"] == pytest.approx(t.backward_s / b * 1e10, rel=1e-12)
    # Priced this way, a device-only batch is charged exactly those seconds on a 1 GFLOP/s device:
    # seconds x host / device.
    device = sc.devices[0]
    local = SplitKey.of({n: 0 for n in cost.graph.nodes}, 1)
    speeds = TierSpeeds(device.flops_per_s, 1e11, 2e7, 1e12, 1e9)
    expected = sum(t.forward_s + t.backward_s for t in given.layers.values()) * 1e10 / device.flops_per_s
    assert cost.period(local, 1, b, speeds).compute_s[0] == pytest.approx(expected, rel=1e-12)
    plans = plan_scenario(sc, cost, {d.name: b for d in sc.devices})  # and the planner accepts the priced graph
    assert set(plans) == {d.name for d in sc.devices}


def test_flop_costs_keep_the_counted_flops(tmp_path):
    cost, profile = build_cost_model(_scenario(tmp_path, compute="flops"), SHAPE)
    assert profile is None and cost.host_flops_per_s is None
    assert cost.graph.nodes["relu1"]["fwd_flops"] == 0  # an elementwise op counts no FLOPs ...
    assert cost.graph.nodes["conv1"]["fwd_flops"] > 0


def test_timing_this_host_sees_what_flop_counts_miss_and_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("TIERFLOW_CACHE_DIR", str(tmp_path / "cache"))
    sc = _scenario(tmp_path)
    cost, profile = build_cost_model(sc, SHAPE)
    assert cost.graph.nodes["relu1"]["fwd_flops"] > 0  # ... but it takes time, and the clock charges time
    assert set(profile.layers) == set(cost.graph.nodes) and profile.batch_size == sc.training.batch_size
    assert profile.repeats >= 9 and math.isfinite(profile.spread) and profile.host
    (cached,) = (tmp_path / "cache").glob("*.json")
    again = build_cost_model(sc, SHAPE)[1]
    assert again == profile  # a second run on this host charges the same figures, untold
    assert LayerProfile.from_json(cached.read_text()) == profile


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["layers"].pop("conv2"), r"layers\.conv2: missing"),
    (lambda d: d["layers"]["conv1"].update(forward_s=float("nan")), r"layers\.conv1\.forward_s: expected a non-neg"),
    (lambda d: d["layers"]["fc1"].update(backward_s=-1.0), r"layers\.fc1\.backward_s: expected a non-negative"),
    (lambda d: d.update(model="mlp"), r"model: the profile is of 'mlp', the scenario trains 'vgg5'"),
    (lambda d: d.update(batch_size=3), r"batch_size: the profile was timed at batch 3"),
    (lambda d: d["layers"].update(extra={"forward_s": 1, "backward_s": 1}), r"layers\.extra: not a layer of 'vgg5'"),
    (lambda d: d.update(format="other"), r"format: expected 'tierflow-layer-profile/1'"),
])
def test_a_bad_profile_file_is_refused_naming_the_file_and_the_layer(tmp_path, edit, message):
    sc = _scenario(tmp_path)
    doc = json.loads(_synthetic(sc).to_json())
    edit(doc)
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(TierflowError, match=f"^{path}: {message}"):
        build_cost_model(sc, SHAPE, profile_path=path)


def test_a_resumed_run_charges_the_profile_it_started_with(ray_session, tmp_path):
    sc = _scenario(tmp_path)
    given = _synthetic(sc)
    out = tmp_path / "run"
    first = Orchestrator(sc, RunOptions(out_dir=out, progress=False, profile=given))
    first.run()
    written = out / "layer_profile.json"
    assert LayerProfile.from_json(written.read_text()) == given
    resumed = Orchestrator(sc, RunOptions(out_dir=out, progress=False, resume=True, profile_path=str(written)))
    assert resumed.profile == given
    resumed.run()
    other = replace(given, host_flops_per_s=2e10)
    with pytest.raises(TierflowError, match="the layer profile differs from the one the interrupted run charged"):
        Orchestrator(sc, RunOptions(out_dir=out, progress=False, resume=True, profile=other)).run()
