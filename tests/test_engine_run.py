"""Oracle: whole runs through the orchestrator and its Ray actors train the same with
``execution.engine: vectorized`` as with ``looped``.

The scenario is the moving city of the exact-time tests (handovers and migrations mid-period, so
devices leave one group and join another between segments), with momentum, and devices on 1-, 2- and
3-tier splits at once; more cars, so every host has groups. The looped run is the code path that
trained every run before the engine existed, so it is the reference.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from safetensors.numpy import load_file

from tierflow.orchestrator.events import WALL_CLOCK_FIELDS, read_events
from tierflow.orchestrator.runner import RunOptions, run_scenario
from tierflow.orchestrator.scenario import load_scenario

HERE = Path(__file__).parent
CITY = HERE / "moving_city.yaml"
TOL = 1e-5
# Floats computed from the trained weights (not the clock): equal up to float rounding between engines.
TRAINED_FIELDS = frozenset({"loss", "train_loss"})

# model -> (default split, the 3-tier phone's split); a third device kind trains device-only.
SPLITS = {
    "mlp": ([2], [2, 4]),
    "vgg5": (["pool1"], ["pool1", "relu4"]),
    "resnet_small": (["stem_2"], ["stem_2", "block2_relu_out"]),
}
# Batch norm over small batches of digits is chaotic at the city's learning rate: two looped hosts
# whose weights start one ulp apart end 4e-4 apart within 9 steps of batch 4 (tried by hand), and at
# lr 0.01 a run of this test once ended 1e-5 apart, so no engine could be told from noise there. A
# smaller rate keeps the comparison meaningful.
LR = {"resnet_small": 0.003}
# Compute is charged from FLOPs, not from a layer profile timed on this host: a profile timed afresh
# (each test session has its own cache) moves the handovers, so each session trained another city,
# and the engines' rounding gap wandered with it (vgg5 6e-8 to 3e-5). On one city the gap is fixed:
# vgg5 3e-8 and resnet_small 6e-8 here, each engine the same to the bit from run to run.
WHOLE_RUN_MODELS = ("mlp", "vgg5", "resnet_small")


def _scenario(tmp_path: Path, model: str, engine: str) -> Path:
    doc = yaml.safe_load(CITY.read_text())
    split, phone_split = SPLITS[model]
    doc["model"] = {"name": model}
    doc["split"] = split
    cars, phone = doc["devices"]
    cars["count"] = 6
    phone["split"] = phone_split
    phone["count"] = 4  # two per host, on one edge at first: a 3-tier group
    solo = {**cars, "name": "solo", "count": 3, "split": []}
    doc["devices"] = [cars, phone, solo]
    doc["training"]["rounds"] = 3
    doc["training"]["optimizer"]["lr"] = LR.get(model, doc["training"]["optimizer"]["lr"])
    doc["execution"] = {"engine": engine, "device_hosts": 2, "compute": "flops"}  # see WHOLE_RUN_MODELS
    path = tmp_path / f"{model}-{engine}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _run(tmp_path: Path, model: str, engine: str) -> tuple[dict, list[dict], dict]:
    out = tmp_path / f"run-{engine}"
    summary = run_scenario(load_scenario(_scenario(tmp_path, model, engine)), RunOptions(out_dir=out, progress=False))
    return load_file(str(out / "model.safetensors")), read_events(out / "events.jsonl"), summary


def _comparable(event: dict) -> dict:
    return {k: v for k, v in event.items() if k not in WALL_CLOCK_FIELDS and not (event["event"] == "engine"
                                                                                  and k == "engine")}


def _max_float_diff(a, b, path: str = "") -> float:
    """Equal but for float rounding in the fields computed from trained weights; exact everywhere else."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), path
        return max([_max_float_diff(a[k], b[k], f"{path}.{k}") for k in a], default=0.0)
    if isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        pairs = enumerate(zip(a, b, strict=True))
        return max([_max_float_diff(x, y, f"{path}[{i}]") for i, (x, y) in pairs], default=0.0)
    if isinstance(a, float) and path.rsplit(".", 1)[-1] in TRAINED_FIELDS:
        assert math.isclose(a, b, rel_tol=TOL, abs_tol=TOL), (path, a, b)
        return abs(a - b)
    assert a == b, (path, a, b)
    return 0.0


@pytest.mark.ray
@pytest.mark.parametrize("model", WHOLE_RUN_MODELS)
def test_vectorized_run_equals_looped_run(ray_session, tmp_path, model):
    looped_model, looped_events, looped_summary = _run(tmp_path, model, "looped")
    vec_model, vec_events, vec_summary = _run(tmp_path, model, "vectorized")
    for events in (looped_events, vec_events):  # a timeout under overload changes a run: say so first
        failures = [e for e in events if e["event"] == "failure"]
        assert not failures, f"a device failed, so the runs cannot be compared: {failures[0]}"

    assert looped_model.keys() == vec_model.keys()
    weight_diff = max(float(np.max(np.abs(looped_model[k].astype(np.float64) - vec_model[k])))
                      for k in looped_model)
    print(f"{model}: max weight diff {weight_diff:.3g}")
    assert weight_diff <= TOL, weight_diff

    assert len(looped_events) == len(vec_events)
    event_diff = max(_max_float_diff(_comparable(a), _comparable(b), a["event"])
                     for a, b in zip(looped_events, vec_events, strict=True))
    print(f"{model}: max weight diff {weight_diff:.3g}, max event float diff {event_diff:.3g}")

    kinds = {e["event"] for e in vec_events}
    assert {"handover", "migration", "engine"} <= kinds  # devices really moved between groups
    splits = {len(s) - s.count(0) for e in vec_events if e["event"] == "round_end" for s in e["splits"].values()}
    assert splits == {1, 2, 3}
    assert set(looped_summary["engine"].values()) == {"looped"}
    assert set(vec_summary["engine"].values()) == {"vectorized"}
    assert looped_summary["bytes_up"] == vec_summary["bytes_up"]
    assert looped_summary["bytes_down"] == vec_summary["bytes_down"]
    assert looped_summary["virtual_time_s"] == vec_summary["virtual_time_s"]


@pytest.mark.ray
def test_two_vectorized_runs_are_the_same_to_the_bit(ray_session, tmp_path):
    """Grouped convolutions and batched edge steps leave nothing to timing: a second run repeats the first."""
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    first_model, first_events, _ = _run(tmp_path / "a", "vgg5", "vectorized")
    second_model, second_events, _ = _run(tmp_path / "b", "vgg5", "vectorized")
    assert first_model.keys() == second_model.keys()
    assert all(np.array_equal(first_model[k], second_model[k]) for k in first_model)
    assert [_comparable(e) for e in first_events] == [_comparable(e) for e in second_events]


# ----- one host, no Ray: how jobs fall into groups, and failures that stay per device -----
def _host_and_edge(engine: str, model: str = "mlp", cuts=(2,), shards=(13, 20, 9, 16)):
    from test_device_group import MOMENTUM, SHAPE, TOKEN, _full_states, _key, _setups

    from tierflow.tiers.hosts import DeviceHost, EdgeServer

    key = _key(model, list(cuts))
    setups = _setups(shards)
    states = _full_states(model, setups)
    host = DeviceHost("h", model, SHAPE, MOMENTUM, token=TOKEN, engine=engine)
    host.add_devices(setups)
    edge = EdgeServer("e", model, SHAPE, MOMENTUM, token=TOKEN, engine=engine)
    for s in setups:
        host.configure(s.device_id, key, states[s.device_id])
        edge.open_session(s.device_id, key, states[s.device_id], 1.0)
    return host, edge, [s.device_id for s in setups]


def _device_weights(host, device_id):
    from tierflow.tiers.session import partition_state

    return partition_state(host.devices[device_id].session.runner)


def test_a_session_the_edge_lacks_fails_only_its_device():
    """The edge refuses the whole group's first step (it holds no session for d1); the host retries the
    group device by device, so d1 fails and the others train exactly as the loop trains them (and
    report the loop as their engine)."""
    looped, looped_edge, ids = _host_and_edge("looped")
    vec, vec_edge, _ = _host_and_edge("vectorized")
    for edge in (looped_edge, vec_edge):
        edge.close_session("d1")
    want = {r.device_id: r for r in looped.train_many([(d, 3, looped_edge, "e") for d in ids])}
    got = {r.device_id: r for r in vec.train_many([(d, 3, vec_edge, "e") for d in ids])}
    assert "KeyError" in got["d1"].error and "KeyError" in want["d1"].error
    assert {r.engine for r in got.values()} == {"looped"}  # retried one by one: it says so
    for d in ids:
        assert (got[d].steps, got[d].bytes_up, got[d].bytes_down, bool(got[d].error)) == \
               (want[d].steps, want[d].bytes_up, want[d].bytes_down, bool(want[d].error)), d
        for name, value in _device_weights(looped, d).items():
            assert np.max(np.abs(_device_weights(vec, d)[name] - value)) <= TOL, (d, name)
    # The samplers were put back before the retry: the next segment draws what the loop's draws.
    again = {r.device_id: r for r in vec.train_many([(d, 2, vec_edge, "e") for d in ids if d != "d1"])}
    ref = {r.device_id: r for r in looped.train_many([(d, 2, looped_edge, "e") for d in ids if d != "d1"])}
    assert all(again[d].engine == "vectorized" and again[d].correct == ref[d].correct for d in again)


def test_ring_jobs_stay_looped_and_groups_split_by_batch_shape():
    """A job naming another session (a ring's) trains alone; a shard smaller than the batch draws a
    smaller batch and so trains in a group of its own shape."""
    host, edge, ids = _host_and_edge("vectorized", shards=(13, 20, 3, 16))  # d2 draws batches of 3
    sizes = []
    original = type(host)._train_group

    def spy(self, jobs, link):
        sizes.append(sorted(j[0] for j in jobs))
        return original(self, jobs, link)

    type(host)._train_group = spy
    try:
        reports = host.train_many([("d0", 2, edge, "e", "d3"), ("d1", 2, edge, "e"), ("d2", 2, edge, "e"),
                                   ("d3", 2, edge, "e")])
    finally:
        type(host)._train_group = original
    assert not any(r.error for r in reports), [r.error for r in reports]
    assert sorted(sizes) == [["d1", "d3"], ["d2"]]
    assert [r.engine for r in reports] == ["looped", "vectorized", "vectorized", "vectorized"]
    assert reports[2].samples == 2 * 3


@pytest.mark.parametrize(("cuts", "tier"), [((2,), 1), ((2, 4), 1), ((2, 4), 2)])
def test_an_upper_stage_can_be_timed_both_ways(cuts, tier):
    """time_engines on an edge or cloud stage feeds it what the stages below produce."""
    from test_device_group import MOMENTUM, SHAPE, _key

    from tierflow.tiers.device_group import time_engines
    from tierflow.tiers.session import StageFactory

    timing = time_engines(StageFactory("mlp", SHAPE), _key("mlp", list(cuts)), MOMENTUM, 4, 6, repeats=1, tier=tier)
    assert timing.vectorized_s > 0 and timing.looped_s > 0 and timing.engine in ("vectorized", "looped")
