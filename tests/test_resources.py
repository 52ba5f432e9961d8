"""Time-varying resources: trace values, exact transfer times, deterministic random processes,
and the emulated clock charging bytes / bandwidth(t) for a known trace."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from orchestrator.errors import TierflowError
from orchestrator.resources import ResourceModel, read_trace
from orchestrator.scenario import load_scenario
from tiers.hosts import TrainReport

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
"""


def scenario_with(tmp_path: Path, resources: dict, trace: str | None = TRACE):
    if trace is not None:
        (tmp_path / "res.csv").write_text(trace)
    doc = {**BASE, "resources": resources}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(doc))
    return load_scenario(tmp_path / "s.yaml")


def test_trace_values_hold_from_their_row_until_the_next(tmp_path):
    res = ResourceModel(scenario_with(tmp_path, {"trace": "res.csv"}))
    assert res.device_flops_per_s("d0", 0.0) == 1e9 and res.device_bandwidth_bps("d0", 9.99) == 20e6  # base
    assert res.device_flops_per_s("d0", 10.0) == 2e9 and res.device_bandwidth_bps("d0", 10.0) == 1e6
    assert res.device_flops_per_s("d0", 31.0) == 2e9  # an empty cell leaves the value as it was
    assert res.device_bandwidth_bps("d0", 30.0) == 4e6
    assert res.device_flops_per_s("d1", 100.0) == 4e9  # not in the trace: its base value
    assert res.edge_flops_per_s("e0", 19.0) == 1e11 and res.edge_flops_per_s("e0", 20.0) == 5e10
    assert res.edge_cloud_bandwidth_bps("e0", 50.0) == 100e6


def test_transfer_time_is_bytes_over_bandwidth_and_integrates_across_a_change(tmp_path):
    res = ResourceModel(scenario_with(tmp_path, {"trace": "res.csv"}))
    assert res.transfer_time_s("d0", 12.0, 1e6) == pytest.approx(8e6 / 1e6)  # inside [10, 30): 1 Mb/s
    # From t=26: 4 s at 1 Mb/s carry 0.5 MB, the other 1.5 MB go at 4 Mb/s from t=30 in 3 s.
    assert res.transfer_time_s("d0", 26.0, 2e6) == pytest.approx(4.0 + 3.0)
    assert res.transfer_time_s("d0", 0.0, 0) == 0.0


def test_random_processes_are_pure_functions_of_time(tmp_path):
    spec = {"availability": {"dt_s": 5, "states": {"idle": {"multiplier": 1.0, "mean_s": 60},
                                                   "busy": {"multiplier": 0.25, "mean_s": 20}}},
            "bandwidth_walk": {"sigma": 0.2, "dt_s": 5, "min": 0.5, "max": 1.5}}
    sc = scenario_with(tmp_path, spec, trace=None)
    times = np.linspace(0, 5000, 400)
    forward = [(ResourceModel(sc).device_flops_per_s("d0", t)) for t in times]
    a = ResourceModel(sc)
    backward = [a.device_flops_per_s("d0", t) for t in times[::-1]][::-1]
    assert forward == backward  # any query order, any instance: the same values
    flops = np.array([a.device_flops_per_s("d0", t) for t in np.arange(0, 200_000, 5.0)])
    assert set(np.unique(flops)) == {1e9, 0.25e9}
    busy = np.mean(flops == 0.25e9)
    assert busy == pytest.approx(20 / 80, abs=0.05)  # stationary share of the busy state: 20 / (60 + 20)
    bw = np.array([a.device_bandwidth_bps("d1", t) for t in np.arange(0, 20_000, 5.0)]) / 40e6
    assert bw.min() >= 0.5 - 1e-12 and bw.max() <= 1.5 + 1e-12 and len(np.unique(bw)) > 100
    assert a.device_bandwidth_bps("d1", 7.0) == a.device_bandwidth_bps("d1", 9.99)  # constant within a step
    other = scenario_with(tmp_path, spec | {"bandwidth_walk": spec["bandwidth_walk"] | {"devices": ["d0"]}},
                          trace=None)
    assert ResourceModel(other).device_bandwidth_bps("d1", 500.0) == 40e6  # only the listed devices walk


@pytest.mark.parametrize(("text", "message"), [
    ("time,entity,flops_per_s,bandwidth_bps\n", ":1: expected the header"),
    ("time_s,entity,flops_per_s,bandwidth_bps\n", "expected at least one row"),
    ("time_s,entity,flops_per_s,bandwidth_bps\n0,d0,1e9\n", ":2: expected 4 fields"),
    ("time_s,entity,flops_per_s,bandwidth_bps\n0,ghost,1e9,1e6\n", ":2: entity: expected a device or edge"),
    ("time_s,entity,flops_per_s,bandwidth_bps\n-1,d0,1e9,1e6\n", ":2: time_s: expected a time >= 0"),
    ("time_s,entity,flops_per_s,bandwidth_bps\n0,d0,0,1e6\n", ":2: flops_per_s: expected a positive number"),
    ("time_s,entity,flops_per_s,bandwidth_bps\n0,d0,1e9,inf\n", ":2: bandwidth_bps: expected a positive number"),
    ("time_s,entity,flops_per_s,bandwidth_bps\n5,d0,1e9,\n2,d0,1e9,\n", ":3: time_s: expected times in order"),
])
def test_trace_errors_name_the_file_line_and_field(tmp_path, text, message):
    path = tmp_path / "t.csv"
    path.write_text(text)
    with pytest.raises(TierflowError, match=None) as info:
        read_trace(path, ["d0", "e0"])
    assert str(path) in str(info.value) and message in str(info.value)


def test_the_emulated_clock_charges_bytes_over_the_bandwidth_of_the_moment(tmp_path):
    """A known trace: d0's link is 20 Mb/s until t=10, then 1 Mb/s. The clock's transfer time for
    known bytes is exactly bits / bandwidth(t) plus the device-side model sync (no compute)."""
    from orchestrator.runner import Orchestrator, RunOptions

    orch = Orchestrator(scenario_with(tmp_path, {"trace": "res.csv"}), RunOptions(out_dir=tmp_path, progress=False))
    report = TrainReport("d0", "e0", 1, 16, 0.0, 0, (0.0, 0.0, 0.0), (250_000, 0), (125_000, 0), 2)
    sync_bits = 2 * 8 * orch.device_param_bytes("d0")
    for t, bw in ((0.0, 20e6), (9.0, 20e6), (10.0, 1e6), (25.0, 1e6), (31.0, 4e6)):
        orch.virtual_time_s = t
        expected = (8 * 375_000 + sync_bits) / bw
        assert math.isclose(orch.round_clock([report]), expected, rel_tol=1e-12), t
    orch.virtual_time_s = 0.0
    assert math.isclose(orch.round_clock([report], offset_s=10.0), (8 * 375_000 + sync_bits) / 1e6, rel_tol=1e-12)


def test_the_cloud_and_each_edge_are_shared_by_the_devices_they_serve():
    from orchestrator.clock import DeviceRoundTime, round_time

    a = DeviceRoundTime("a", "e0", (0.1, 0.5, 1.0), 0.0, 0.0)
    b = DeviceRoundTime("b", "e1", (0.1, 0.5, 1.0), 0.0, 0.0)
    c = DeviceRoundTime("c", "e1", (0.1, 0.8, 0.0), 0.0, 0.0)
    assert round_time([a]) == pytest.approx(1.6)  # alone: its own chain
    assert round_time([a, b]) == pytest.approx(2.0)  # both need the one cloud for a second
    assert round_time([b, c]) == pytest.approx(1.6)  # the chain of b is the longest
    assert round_time([c, DeviceRoundTime("d", "e1", (0.0, 0.9, 0.0), 0.0, 0.0)]) == pytest.approx(1.7)  # edge e1
