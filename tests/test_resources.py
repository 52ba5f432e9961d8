"""Time-varying resources: trace values, exact transfer times, deterministic random processes
recomputed from their documented draw order, errors that name file and line, and the emulated
clock charging bytes / bandwidth(t) for a known trace."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from tierflow.orchestrator.errors import TierflowError
from tierflow.orchestrator.resources import ResourceModel, build_resources, read_trace
from tierflow.orchestrator.scenario import load_scenario
from tierflow.tiers.train_report import TrainReport

BASE = {
    "cloud": {"flops_per_s": 1e12},
    "edges": [{"name": "e0", "position": [0, 0], "radius_m": 500, "flops_per_s": 1e11, "cloud_bandwidth_mbps": 100}],
    "devices": [{"name": "d0", "position": [10, 0], "flops_per_s": 1e9, "bandwidth_mbps": 20},
                {"name": "d1", "position": [20, 0], "flops_per_s": 4e9, "bandwidth_mbps": 40}],
    "model": {"name": "vgg5"},
    "training": {"rounds": 1, "local_steps": 1},
    "split": ["pool1"],
}
TRACE = """time_s,entity,flops_per_s,bandwidth_bps
10,d0,2e9,1e6
30,d0,,4e6
20,e0,5e10,
40,e0,,50e6
"""
TWO_STATES = {"dt_s": 5, "states": {"idle": {"multiplier": 1.0, "mean_s": 60},
                                    "busy": {"multiplier": 0.25, "mean_s": 20}}}


def scenario_with(tmp_path: Path, resources: dict | None, trace: str | None = TRACE, **changes):
    if trace is not None:
        (tmp_path / "res.csv").write_text(trace)
    doc = {**BASE, **changes}
    if resources is not None:
        doc["resources"] = resources
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))  # states keep their order
    return load_scenario(tmp_path / "s.yaml")


# ----- the trace -----

def test_trace_values_hold_from_their_row_until_the_next(tmp_path):
    res = build_resources(scenario_with(tmp_path, {"trace": "res.csv"}))
    assert res.device_flops_per_s("d0", 0.0) == 1e9 and res.device_bandwidth_bps("d0", 9.99) == 20e6  # base
    assert res.device_flops_per_s("d0", 10.0) == 2e9 and res.device_bandwidth_bps("d0", 10.0) == 1e6
    assert res.device_bandwidth_bps("d0", 29.999) == 1e6
    assert res.device_flops_per_s("d0", 31.0) == 2e9  # an empty cell leaves the value as it was
    assert res.device_bandwidth_bps("d0", 30.0) == 4e6 and res.device_bandwidth_bps("d0", 1e6) == 4e6
    assert res.device_flops_per_s("d1", 100.0) == 4e9  # not in the trace: its base value
    assert res.edge_flops_per_s("e0", 19.0) == 1e11 and res.edge_flops_per_s("e0", 20.0) == 5e10
    assert res.edge_cloud_bandwidth_bps("e0", 39.0) == 100e6  # an edge's bandwidth_bps is its uplink
    assert res.edge_cloud_bandwidth_bps("e0", 40.0) == 50e6 and res.edge_flops_per_s("e0", 45.0) == 5e10


def test_without_a_resources_section_every_value_is_the_base(tmp_path):
    res = ResourceModel(scenario_with(tmp_path, None, trace=None))
    for t in (0.0, 17.3, 1e7):
        assert res.device_flops_per_s("d1", t) == 4e9 and res.device_bandwidth_bps("d1", t) == 40e6
        assert res.edge_flops_per_s("e0", t) == 1e11 and res.edge_cloud_bandwidth_bps("e0", t) == 100e6
        assert res.transfer_time_s("d1", t, 5e6) == 8 * 5e6 / 40e6
    assert res.edge_flops_per_s("@cloud", 3.0) == 1e12  # the cloud standing in for a dead edge


def test_a_device_and_an_edge_may_share_a_name_without_mixing_their_values(tmp_path):
    edges = [{**BASE["edges"][0], "name": "d0"}]
    devices = [{**d, "edge": "d0"} for d in BASE["devices"]]
    res = ResourceModel(scenario_with(tmp_path, None, trace=None, edges=edges, devices=devices))
    assert res.device_flops_per_s("d0", 0.0) == 1e9 and res.edge_flops_per_s("d0", 0.0) == 1e11
    assert res.device_bandwidth_bps("d0", 0.0) == 20e6 and res.edge_cloud_bandwidth_bps("d0", 0.0) == 100e6
    # ... but a trace row naming it could mean either: refused, with the line.
    with pytest.raises(TierflowError, match=r"res\.csv:2: entity: 'd0' names both a device and an edge"):
        scenario_with(tmp_path, {"trace": "res.csv"}, edges=edges, devices=devices)


# ----- transfers -----

def test_transfer_time_is_bytes_over_bandwidth_and_integrates_across_a_change(tmp_path):
    res = build_resources(scenario_with(tmp_path, {"trace": "res.csv"}))
    assert res.transfer_time_s("d0", 12.0, 1e6) == 8e6 / 1e6  # inside [10, 30): exactly bits / bandwidth
    assert res.transfer_time_s("d0", 0.0, 1234) == 8 * 1234 / 20e6
    # From t=26: 4 s at 1 Mb/s carry 0.5 MB, the other 1.5 MB go at 4 Mb/s from t=30 in 3 s.
    assert res.transfer_time_s("d0", 26.0, 2e6) == pytest.approx(4.0 + 3.0, rel=1e-12)
    # From t=5 across two changes: 5 s at 20 Mb/s (12.5 MB), 20 s at 1 Mb/s (2.5 MB), then 4 Mb/s.
    assert res.transfer_time_s("d0", 5.0, 12.5e6 + 2.5e6 + 1e6) == pytest.approx(5 + 20 + 2, rel=1e-12)
    # Ending exactly on a change: the segment before carries it all.
    assert res.transfer_time_s("d0", 26.0, 0.5e6) == pytest.approx(4.0, rel=1e-12)
    assert res.transfer_time_s("d0", 0.0, 0) == 0.0
    # An edge's uplink: 100 Mb/s until 40, then 50 Mb/s.
    assert res.transfer_time_s("e0", 38.0, 25e6 + 12.5e6) == pytest.approx(2.0 + 2.0, rel=1e-12)
    assert res.edge_cloud_transfer_time_s("e0", 41.0, 1e6) == 8e6 / 50e6


def bits_carried(res: ResourceModel, device: str, t0: float, t1: float, breaks: list[float]) -> float:
    """∫ bandwidth from t0 to t1, summed over the segments between ``breaks`` (value at each midpoint)."""
    points = sorted({t0, t1, *(b for b in breaks if t0 < b < t1)})
    segments = zip(points, points[1:], strict=False)
    return sum(res.device_bandwidth_bps(device, (a + b) / 2) * (b - a) for a, b in segments)


@pytest.mark.parametrize("dt_s", [0.7, 1.1, 5.0])
def test_transfers_through_a_walk_and_a_trace_carry_exactly_their_bits(tmp_path, dt_s):
    """dt_s = 0.7 used to hang: floor(3 * 0.7 / 0.7) is 2, so the boundary 2.1 fell back a step."""
    res = ResourceModel(scenario_with(tmp_path, {"trace": "res.csv",
                                                 "bandwidth_walk": {"sigma": 0.3, "dt_s": dt_s, "min": 0.2}}))
    breaks = [k * dt_s for k in range(200)] + [10.0, 30.0]
    for t0, bytes_ in ((0.3, 1e6), (1.9, 3e6), (9.0, 2e6), (25.0, 5e5), (2.1, 1e5)):
        took = res.transfer_time_s("d0", t0, bytes_)
        assert took > 0 and t0 + took < 130
        assert bits_carried(res, "d0", t0, t0 + took, breaks) == pytest.approx(8 * bytes_, rel=1e-9)


# ----- random processes -----

def availability_oracle(seed: int, index: int, means: list[float], multipliers: list[float], dt_s: float,
                        steps: int) -> list[float]:
    """Step-by-step multipliers from the draw order the module documents, written out again."""
    rng = np.random.default_rng([seed, 1, index])
    means_a = np.array(means)
    state = int(rng.choice(len(means), p=means_a / means_a.sum()))
    end = int(rng.geometric(min(1.0, dt_s / means[state])))
    out = []
    for k in range(steps):
        while end <= k:
            j = int(rng.integers(len(means) - 1))
            state = j + (j >= state)
            end += int(rng.geometric(min(1.0, dt_s / means[state])))
        out.append(multipliers[state])
    return out


def walk_oracle(seed: int, index: int, sigma: float, dt_s: float, lo: float, hi: float, steps: int) -> list[float]:
    rng = np.random.default_rng([seed, 2, index])
    x, out = min(math.log(hi), max(math.log(lo), 0.0)), []
    for _ in range(steps):
        out.append(math.exp(x))
        x = min(math.log(hi), max(math.log(lo), x + sigma * math.sqrt(dt_s) * float(rng.standard_normal())))
    return out


def test_processes_follow_their_documented_draw_order(tmp_path):
    three = {"dt_s": 2.5, "states": {"idle": {"multiplier": 1.0, "mean_s": 30},
                                     "busy": {"multiplier": 0.5, "mean_s": 10},
                                     "off": {"multiplier": 0.01, "mean_s": 2.5}}}
    walk = {"sigma": 0.05, "dt_s": 3, "min": 0.8, "max": 1.1}
    sc = scenario_with(tmp_path, {"availability": three, "bandwidth_walk": walk}, trace=None,
                       training={"rounds": 1, "local_steps": 1, "seed": 11})
    res = ResourceModel(sc)
    avail = availability_oracle(11, 1, [30, 10, 2.5], [1.0, 0.5, 0.01], 2.5, 2000)
    bw = walk_oracle(11, 1, 0.05, 3.0, 0.8, 1.1, 2000)
    for k in list(range(0, 2000, 7)) + [1999]:
        for t in (k * 2.5, k * 2.5 + 1.25):  # a step's own boundary belongs to it
            assert res.device_flops_per_s("d1", t) == pytest.approx(4e9 * avail[k], rel=1e-15), t
        for t in (k * 3.0, k * 3.0 + 1.5):
            assert res.device_bandwidth_bps("d1", t) == pytest.approx(40e6 * bw[k], rel=1e-12), t
    assert len(set(avail)) == 3 and min(bw) >= 0.8 - 1e-12 and max(bw) <= 1.1 + 1e-12


def test_random_processes_are_pure_functions_of_the_scenario_and_time(tmp_path):
    spec = {"availability": TWO_STATES, "bandwidth_walk": {"sigma": 0.2, "dt_s": 5, "min": 0.5, "max": 1.5}}
    sc = scenario_with(tmp_path, spec, trace=None)
    times = np.linspace(0, 5000, 400)
    forward = [ResourceModel(sc).device_flops_per_s("d0", t) for t in times]
    a = ResourceModel(sc)
    backward = [a.device_flops_per_s("d0", t) for t in times[::-1]][::-1]
    assert forward == backward  # any query order, any instance: the same values
    resumed = ResourceModel(sc)  # a resumed run starts asking late
    assert [resumed.device_bandwidth_bps("d1", t) for t in times[::-1]] == \
           [a.device_bandwidth_bps("d1", t) for t in times[::-1]]
    reseeded = scenario_with(tmp_path, spec, trace=None, training={"rounds": 1, "local_steps": 1, "seed": 1})
    assert [ResourceModel(reseeded).device_flops_per_s("d0", t) for t in times] != forward
    assert a.device_bandwidth_bps("d1", 7.0) == a.device_bandwidth_bps("d1", 9.99)  # constant within a step
    other = scenario_with(tmp_path, spec | {"bandwidth_walk": spec["bandwidth_walk"] | {"devices": ["d0"]}},
                          trace=None)
    assert ResourceModel(other).device_bandwidth_bps("d1", 500.0) == 40e6  # only the listed devices walk


def test_availability_spends_time_in_each_state_in_proportion_to_its_mean(tmp_path):
    three = {"dt_s": 5, "states": {"idle": {"multiplier": 1.0, "mean_s": 120},
                                   "busy": {"multiplier": 0.2, "mean_s": 60},
                                   "gone": {"multiplier": 0.05, "mean_s": 20}}}
    res = ResourceModel(scenario_with(tmp_path, {"availability": three}, trace=None))
    flops = np.array([res.device_flops_per_s("d0", t) for t in np.arange(0, 1_000_000, 5.0)]) / 1e9
    for multiplier, mean in ((1.0, 120), (0.2, 60), (0.05, 20)):
        assert np.mean(np.isclose(flops, multiplier)) == pytest.approx(mean / 200, abs=0.03)
    changes = np.flatnonzero(np.diff(flops)) + 1  # stays in "busy": mean length 60 s
    runs = np.diff(changes) * 5.0
    busy = runs[np.isclose(flops[changes[:-1]], 0.2)]
    assert busy.mean() == pytest.approx(60, rel=0.1)


def test_the_walk_stays_within_its_clips_and_moves_sigma_per_root_second(tmp_path):
    res = ResourceModel(scenario_with(tmp_path, {"bandwidth_walk": {"sigma": 0.02, "dt_s": 4, "min": 0.5, "max": 2}},
                                      trace=None))
    m = np.array([res.device_bandwidth_bps("d0", t) for t in np.arange(0, 400_000, 4.0)]) / 20e6
    assert m.min() >= 0.5 - 1e-12 and m.max() <= 2 + 1e-12 and len(np.unique(m)) > 1000
    steps = np.diff(np.log(m))
    free = steps[(m[:-1] > 0.6) & (m[:-1] < 1.6)]  # away from the clips the walk is Gaussian
    assert free.std() == pytest.approx(0.02 * math.sqrt(4), rel=0.05) and abs(free.mean()) < 0.005


# ----- errors -----

@pytest.mark.parametrize(("text", "message"), [
    ("time,entity,flops_per_s,bandwidth_bps\n", ":1: expected the header"),
    ("", ":1: expected the header"),
    ("time_s,entity,flops_per_s,bandwidth_bps\n", "expected at least one row"),
    ("time_s,entity,flops_per_s,bandwidth_bps\n0,d0,1e9\n", ":2: expected 4 fields"),
    ("time_s,entity,flops_per_s,bandwidth_bps\n0,ghost,1e9,1e6\n",
     ":2: entity: expected a device or edge of the scenario (d0, e0), got 'ghost'"),
    ("time_s,entity,flops_per_s,bandwidth_bps\n-1,d0,1e9,1e6\n", ":2: time_s: expected a time >= 0"),
    ("time_s,entity,flops_per_s,bandwidth_bps\n,d0,1e9,1e6\n", ":2: time_s: expected a number, got ''"),
    ("time_s,entity,flops_per_s,bandwidth_bps\n0,d0,0,1e6\n", ":2: flops_per_s: expected a positive number"),
    ("time_s,entity,flops_per_s,bandwidth_bps\n0,d0,1e9,inf\n", ":2: bandwidth_bps: expected a positive number"),
    ("time_s,entity,flops_per_s,bandwidth_bps\n0,d0,1e9,x\n", ":2: bandwidth_bps: expected a number, got 'x'"),
    ("time_s,entity,flops_per_s,bandwidth_bps\n5,d0,1e9,\n\n2,d0,1e9,\n", ":4: time_s: expected times in order"),
    ("time_s,entity,flops_per_s,bandwidth_bps\n0,d0,\"1\ne9\",1\n", ":3: flops_per_s: expected a number"),
])
def test_trace_errors_name_the_file_line_and_field(tmp_path, text, message):
    path = tmp_path / "t.csv"
    path.write_text(text)
    with pytest.raises(TierflowError) as info:
        read_trace(path, ["d0", "e0"])
    assert str(info.value).startswith(str(path)) and message in str(info.value)


def test_a_trace_that_is_not_a_readable_file_is_a_clear_error(tmp_path):
    with pytest.raises(TierflowError, match="cannot read the resource trace"):
        read_trace(tmp_path / "missing.csv", ["d0"])
    with pytest.raises(TierflowError, match="expected a regular file for the resource trace, got a directory"):
        read_trace(tmp_path, ["d0"])
    os.mkfifo(tmp_path / "fifo.csv")  # opening it would block until a writer came
    with pytest.raises(TierflowError, match="expected a regular file for the resource trace, got not a regular"):
        read_trace(tmp_path / "fifo.csv", ["d0"])
    (tmp_path / "bin.csv").write_bytes(b"time_s,entity,flops_per_s,bandwidth_bps\n0,d0,\xff,1\n")
    with pytest.raises(TierflowError, match=r"bin\.csv: expected UTF-8 text for the resource trace, got byte 0xff "
                                            r"at offset 45"):
        read_trace(tmp_path / "bin.csv", ["d0"])
    (tmp_path / "bom.csv").write_text("\ufefftime_s,entity,flops_per_s,bandwidth_bps\n0,d0,1e9,\n")  # Excel's
    assert read_trace(tmp_path / "bom.csv", ["d0"])[0].flops_per_s == 1e9


@pytest.mark.parametrize(("resources", "message"), [
    ({"trace": "res.csv", "colour": 1}, "resources.colour: unknown field"),
    ({"trace": 5}, "resources.trace: expected a non-empty string, got 5"),
    ({"availability": {"states": {"idle": {"multiplier": 1, "mean_s": 60}}}},
     "resources.availability.states: expected at least two states"),
    ({"availability": {"dt_s": 10, "states": {"a": {"multiplier": 1, "mean_s": 60}, "b": {"multiplier": 1,
                                                                                        "mean_s": 5}}}},
     "resources.availability.states.b.mean_s: expected a number >= 10, got 5"),
    ({"availability": {"states": {"a": {"multiplier": 1, "mean_s": 60}, 7: {"multiplier": 1, "mean_s": 60}}}},
     "resources.availability.states: expected state names that are non-empty strings, got 7"),
    ({"availability": {**TWO_STATES, "devices": ["d0", "ghost"]}},
     "resources.availability.devices: expected a list of device names of this scenario"),
    ({"availability": {**TWO_STATES, "dt_s": 0}}, "resources.availability.dt_s: expected a number >= 0.001"),
    ({"bandwidth_walk": {"sigma": 0.1, "min": 2, "max": 1}}, "resources.bandwidth_walk.max: expected a number >= min"),
    ({"bandwidth_walk": {"min": 0.5}}, "resources.bandwidth_walk.sigma: missing (required)"),
    ({"bandwidth_walk": {"sigma": -1}}, "resources.bandwidth_walk.sigma: expected a positive number, got -1"),
])
def test_resources_section_errors_name_the_field(tmp_path, resources, message):
    with pytest.raises(TierflowError) as info:
        scenario_with(tmp_path, resources)
    assert str(info.value).startswith(str(tmp_path / "s.yaml")) and message in str(info.value)


def test_a_bad_trace_is_reported_against_the_scenario_field_and_the_csv_line(tmp_path):
    with pytest.raises(TierflowError) as info:
        scenario_with(tmp_path, {"trace": "res.csv"}, trace=TRACE + "50,d7,1e9,\n")
    text = str(info.value)
    assert text.startswith(f"{tmp_path / 's.yaml'}: resources.trace: {tmp_path / 'res.csv'}:6: entity: ")
    assert "(d0, d1, e0), got 'd7'" in text


# ----- the clock -----

def test_the_emulated_clock_charges_bytes_over_the_bandwidth_of_the_moment(tmp_path):
    """A known trace: d0's link is 20 Mb/s until t=10, then 1 Mb/s. The clock's transfer time is
    exactly the bits a real split step puts on the link (activations and labels up, gradients
    down, measured here) over bandwidth(t), plus the device-side model sync."""
    from tierflow.orchestrator.runner import Orchestrator, RunOptions
    from tierflow.tiers.session import StageFactory
    from tierflow.tiers.step import StageRunner, run_local_step

    orch = Orchestrator(scenario_with(tmp_path, {"trace": "res.csv"}), RunOptions(out_dir=tmp_path, progress=False))
    key = orch.state.splits["d0"]
    factory = StageFactory(orch.scenario.model.name, orch.world.dataset.shape)
    runners = [StageRunner(factory.stage(key, k), orch.scenario.training.optimizer) for k in range(2)]
    x = orch.world.dataset.x_train[:16]
    step = run_local_step(runners, x, orch.world.dataset.y_train[:16])
    link_bits = 8 * (step.bytes_up[0] + step.bytes_down[0] + orch.world.dataset.y_train[:16].nbytes)
    report = TrainReport("d0", "e0", 1, 16, 0.0, 0, (0.0, 0.0, 0.0), (0, 0), (0, 0), 2)
    sync_bits = 2 * 8 * orch.cost.device_param_bytes(key)
    assert orch.cost.device_param_bytes(key) == sum(t.numel() * t.element_size()
                                                 for t in runners[0].module.state_dict().values())
    for t, bw in ((0.0, 20e6), (9.0, 20e6), (10.0, 1e6), (25.0, 1e6), (31.0, 4e6)):
        orch.sim.virtual_time_s = t
        (charge,) = orch.ops.charges([report])
        assert math.isclose(charge.cost.transfer_s, link_bits / bw, rel_tol=1e-12), t
        assert math.isclose(charge.cost.sync_s, sync_bits / bw, rel_tol=1e-12), t
        assert orch.ops.round_clock([report]) == charge.total_s
    orch.sim.virtual_time_s = 0.0
    (later,) = orch.ops.charges([report], offset_s=10.0)
    assert math.isclose(later.cost.transfer_s + later.cost.sync_s, (link_bits + sync_bits) / 1e6, rel_tol=1e-12)
    assert later.cost.compute_s[0] == charge.cost.compute_s[0]  # d0 runs at 2e9 from t=10 on, as at t=31
