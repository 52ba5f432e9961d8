"""Fuzzing the scenario loader (and the resource-trace reader it calls): whatever the file holds,
``load_scenario`` returns a sane :class:`Scenario` or raises :class:`TierflowError`, promptly.

Three kinds of input: random bytes (never accepted), random YAML-able nested structures built from
the scenario's own keys, and the good scenario (with a ``resources:`` section and its trace) under
random mutations of its tree and of its text. An accepted scenario is checked for garbage: every
speed positive and finite, names unique, every device on a known edge.
"""

from __future__ import annotations

import copy
import math
import os
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from deadline import no_hang as hang_guard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tierflow.orchestrator.errors import TierflowError
from tierflow.orchestrator.resources import build_resources, read_trace
from tierflow.orchestrator.scenario import Scenario, load_scenario

HERE = Path(__file__).parent
GOOD = yaml.safe_load((HERE / "good_scenario.yaml").read_text())
TRACE = "time_s,entity,flops_per_s,bandwidth_bps\n0,d0,1e9,2e7\n5,d0,,1e6\n7.5,e0,5e10,\n9,d1,2e9,\n"
RESOURCES = {
    "trace": "resources_fuzz.csv",
    "availability": {"dt_s": 5, "devices": ["d0"],
                     "states": {"idle": {"multiplier": 1.0, "mean_s": 60}, "busy": {"multiplier": 0.2, "mean_s": 30}}},
    "bandwidth_walk": {"sigma": 0.1, "dt_s": 10, "min": 0.5, "max": 1.5},
}
GOOD_WITH_RESOURCES = {**GOOD, "resources": RESOURCES}

KEYS = sorted({
    "name", "cloud", "edges", "devices", "model", "dataset", "training", "aggregation", "split", "mobility",
    "policy", "execution", "resources", "flops_per_s", "position", "radius_m", "cloud_bandwidth_mbps", "count",
    "memory_mb", "bandwidth_mbps", "data_share", "edge", "spread_m", "rounds", "local_steps", "batch_size",
    "optimizer", "seed", "target_accuracy", "lr", "momentum", "weight_decay", "schedule", "cloud_every",
    "speed_mps", "pause_s", "area_m", "trace", "hysteresis_m", "round_duration_s", "check_every_steps",
    "placement", "rings", "handover", "disconnected", "migration_timeout_s", "step_timeout_s", "round_deadline_s",
    "device_hosts", "time", "availability", "bandwidth_walk", "states", "multiplier", "mean_s", "dt_s", "sigma",
    "min", "max", "path", "partition", "alpha", "test_fraction",
})
ODD = [0, -1, 1, 2**63, 10**400, -(10**400), 0.0, -0.0, 1e-320, 1e308, math.inf, -math.inf, math.nan, True, False,
       "", " ", "@cloud", "e0", "d0", "pool1", "mlp", "a:b", ":", "\x00", "x" * 300, "1e9", "[1, 2]", [], {}, [0, 0],
       [1, 2, 3], ["pool1", "pool1"], [math.nan, 0], None]

scalars = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
           | st.sampled_from(ODD).map(copy.deepcopy) | st.sampled_from(KEYS))  # copies: mutations edit in place
keys = st.sampled_from(KEYS) | st.text(max_size=8) | st.integers(-3, 3) | st.booleans() | st.none()
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=5),
                      max_leaves=12)

# TIERFLOW_FUZZ_EXAMPLES=5000 for a longer hunt; the default keeps the suite fast.
FUZZ = settings(max_examples=int(os.environ.get("TIERFLOW_FUZZ_EXAMPLES", 150)), deadline=timedelta(seconds=2),
                suppress_health_check=[HealthCheck.too_slow])
HANG_S = 10.0


def no_hang(seconds: float = HANG_S):
    return hang_guard(seconds, "load_scenario")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def load(path: Path) -> Scenario | None:
    """The contract: a Scenario, or TierflowError (returned as None); anything else fails the test."""
    with no_hang():
        try:
            scenario = load_scenario(path)
        except TierflowError as exc:
            assert str(exc).startswith(str(path)), exc  # the error names the file
            return None
    assert_sane(scenario)
    return scenario


def positive(x: float) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


def assert_sane(sc: Scenario) -> None:
    """What an accepted scenario promises the rest of tierflow."""
    assert isinstance(sc, Scenario)
    assert sc.edges and sc.devices and sc.training.rounds >= 1 and sc.training.local_steps >= 1
    assert positive(sc.cloud.flops_per_s)
    edge_names = [e.name for e in sc.edges]
    assert len(set(edge_names)) == len(edge_names) and all(isinstance(n, str) and n for n in edge_names)
    for e in sc.edges:
        assert positive(e.flops_per_s) and positive(e.cloud_bandwidth_mbps) and positive(e.radius_m)
        assert all(math.isfinite(v) for v in e.position)
    device_names = [d.name for d in sc.devices]
    assert len(set(device_names)) == len(device_names)
    for d in sc.devices:
        assert positive(d.flops_per_s) and positive(d.bandwidth_mbps) and positive(d.memory_mb)
        assert positive(d.data_share) and d.edge in edge_names
        assert all(math.isfinite(v) for v in d.position)
    res = sc.resources
    known = set(edge_names) | set(device_names)
    for row in res.trace:
        assert row.entity in known and math.isfinite(row.time_s) and row.time_s >= 0
        assert all(v is None or positive(v) for v in (row.flops_per_s, row.bandwidth_bps))
    for process in (res.availability, res.bandwidth_walk):
        if process is not None:
            assert positive(process.dt_s) and (process.devices is None or set(process.devices) <= set(device_names))
    if res.availability is not None:
        assert len(res.availability.states) >= 2
        assert all(positive(s.multiplier) and positive(s.mean_s) for s in res.availability.states)
    if res.bandwidth_walk is not None:
        w = res.bandwidth_walk
        assert positive(w.sigma) and positive(w.min_multiplier) and w.min_multiplier <= w.max_multiplier
    model = build_resources(sc)  # what the clock will divide by
    for t in (0.0, 7.3, 100.0):
        for d in device_names[:3]:
            assert positive(model.device_flops_per_s(d, t)) and positive(model.device_bandwidth_bps(d, t))
            assert model.device_transfer_time_s(d, t, 1000) >= 0
        for e in edge_names[:3]:
            assert positive(model.edge_flops_per_s(e, t)) and positive(model.edge_cloud_bandwidth_bps(e, t))


def write(workdir: Path, doc, trace: str = TRACE) -> Path:
    (workdir / "resources_fuzz.csv").write_text(trace)
    path = workdir / "scenario.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True))
    return path


def test_the_unmutated_bases_load(workdir):
    assert load(write(workdir, GOOD)) is not None
    sc = load(write(workdir, GOOD_WITH_RESOURCES))
    assert sc is not None and len(sc.resources.trace) == 4


@FUZZ
@given(data=st.binary(max_size=600))
def test_random_bytes_are_never_accepted(workdir, data):
    path = workdir / "bytes.yaml"
    path.write_bytes(data)
    assert load(path) is None


@FUZZ
@given(doc=values)
def test_random_structures_load_or_fail_cleanly(workdir, doc):
    load(write(workdir, doc))


def _paths(node, prefix=()):
    """Every (container path, key) in a tree of dicts and lists."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield prefix, k
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield prefix, i
            yield from _paths(v, (*prefix, i))


def _at(tree, path):
    for p in path:
        tree = tree[p]
    return tree


@st.composite
def mutated(draw):
    doc = copy.deepcopy(draw(st.sampled_from([GOOD, GOOD_WITH_RESOURCES])))
    for _ in range(draw(st.integers(1, 3))):
        spots = list(_paths(doc))
        leaves = [(w, k) for w, k in spots if not isinstance(_at(doc, w)[k], (dict, list))]
        if not spots:
            break
        # Mostly leaves: a mutation near the top fails at once and tells us little.
        # sampled_from favours the first spots (the top of the file); pick uniformly instead.
        where, key = draw(st.randoms(use_true_random=False)).choice(leaves if leaves and draw(st.integers(0, 3))
                                                                    else spots)
        parent = _at(doc, where)
        op = draw(st.sampled_from(["delete", "replace", "odd", "odd", "scale", "add", "duplicate"]))
        if op == "scale" and isinstance(parent[key], (int, float)):
            parent[key] = parent[key] * draw(st.sampled_from([-1, 0, 0.5, 2, 1e-300, 1e300, 10**30]))
        elif op == "delete":
            del parent[key]
        elif op in ("replace", "scale"):
            parent[key] = draw(values)
        elif op == "odd":
            parent[key] = copy.deepcopy(draw(st.sampled_from(ODD)))
        elif op == "add" and isinstance(parent, dict):
            parent[draw(st.sampled_from(KEYS) | st.text(max_size=6))] = draw(values)
        elif op == "duplicate" and isinstance(parent, list):
            parent.append(copy.deepcopy(parent[key]))
    return doc


trace_lines = st.lists(
    st.tuples(st.sampled_from(["0", "1", "5", "2.5", "-1", "1e400", "nan", "x", ""]),
              st.sampled_from(["d0", "d1", "e0", "ghost", "", "@cloud"]),
              st.sampled_from(["1e9", "", "0", "-5", "inf", "fast", "1e-300"]),
              st.sampled_from(["2e7", "", "0", "nan", "1e6"])).map(lambda r: ",".join(r)),
    max_size=6)


@FUZZ
@given(doc=mutated(), lines=trace_lines, keep_trace=st.booleans())
def test_mutated_scenarios_load_or_fail_cleanly(workdir, doc, lines, keep_trace):
    trace = TRACE if keep_trace else "time_s,entity,flops_per_s,bandwidth_bps\n" + "\n".join(lines)
    load(write(workdir, doc, trace))


SYNTAX = [b":", b"-", b"[", b"{", b"\n  ", b"&a ", b"*a", b"!!", b"? ", b"'", b'"', b"#"]


@FUZZ
@given(data=st.data())
def test_mutated_text_loads_or_fails_cleanly(workdir, data):
    text = bytearray(yaml.safe_dump(GOOD_WITH_RESOURCES).encode())
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(text)))
        op = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        if op == "insert" or i == len(text):
            text[i:i] = data.draw(st.binary(min_size=1, max_size=4) | st.sampled_from(SYNTAX))
        elif op == "flip":
            text[i] = data.draw(st.integers(0, 255))
        else:
            del text[i:i + data.draw(st.integers(1, 8))]
    (workdir / "resources_fuzz.csv").write_text(TRACE)
    path = workdir / "text.yaml"
    path.write_bytes(bytes(text))
    load(path)


@FUZZ
@given(text=st.text(max_size=300) | trace_lines.map(lambda ls: "time_s,entity,flops_per_s,bandwidth_bps\n"
                                                      + "\n".join(ls)))
def test_the_trace_reader_returns_checked_rows_or_fails_cleanly(workdir, text):
    path = workdir / "trace.csv"
    path.write_text(text)
    with no_hang():
        try:
            rows = read_trace(path, ["d0", "d1", "e0"])
        except TierflowError as exc:
            assert str(path) in str(exc)
            return
    last: dict[str, float] = {}
    for row in rows:
        assert row.entity in {"d0", "d1", "e0"} and row.time_s >= last.get(row.entity, 0.0)
        assert all(v is None or positive(v) for v in (row.flops_per_s, row.bandwidth_bps))
        last[row.entity] = row.time_s


def _good_text(old: str = "", new: str = "") -> str:
    text = (HERE / "good_scenario.yaml").read_text()
    assert old in text
    return text.replace(old, new, 1)


_BOMB = "\n".join(["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
                  + [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)])
CLOUD_LINE = "cloud: {flops_per_s: 1.0e+12}"
D1 = "{name: d1, position: [20, 0],"

# Inputs that crashed or hung the loader before (found by the fuzzer above or while writing it),
# with what the error must now say.
HOSTILE = {
    "not_utf8": (b"\x80", "expected UTF-8 text for the scenario file, got byte 0x80 at offset 0"),
    "impossible_date": (_good_text("split: [pool1]", "split: [pool1]\nname: 2001-13-45"), "not valid YAML: ValueError"),
    "bad_timestamp_tag": ("a: !!timestamp x", "not valid YAML: AttributeError"),
    "deep_nesting": ("[" * 5000 + "]" * 5000, "not valid YAML: RecursionError"),
    "alias_bomb": (_good_text(CLOUD_LINE, _BOMB + "\ncloud: *a9"), "cloud: expected a mapping, got [[[[...]"),
    "huge_int_number": (_good_text("1.0e+12", "1" + "0" * 400), "cloud.flops_per_s: expected a positive number"),
    "huge_int_point": (_good_text("[0, 0]", "[0, 1" + "0" * 400 + "]"), "edges[0].position: expected a pair"),
    "huge_int_range": (_good_text("bandwidth_mbps: 20}", "bandwidth_mbps: [1, 1" + "0" * 400 + "]}"),
                       "devices[0].bandwidth_mbps: expected a positive number or a range"),
    "huge_int_speed": (_good_text("split: [pool1]", "split: [pool1]\nmobility: {speed_mps: [1, 1" + "0" * 400 + "]}"),
                       "mobility.speed_mps: expected a range [low, high] of positive speeds"),
    "overflowing_bandwidth": (_good_text("bandwidth_mbps: 20}", "bandwidth_mbps: 1.0e+308}"),
                              "devices[0].bandwidth_mbps: expected a number <= 1e+300, got 1e+308"),
    "nan_position": (_good_text("[0, 0]", "[.nan, 0]"), "edges[0].position: expected a pair of numbers"),
    "huge_count": (_good_text(D1, "{name: d1, count: 1000000000, position: [20, 0],"),
                   "devices[1].count: expected at most 100,000 devices"),
    "list_as_edge": (_good_text(D1, "{name: d1, edge: [e0], position: [20, 0],"),
                     "devices[1].edge: expected the name of an edge server (e0), got ['e0']"),
    "mixed_unknown_keys": (_good_text("split: [pool1]", "split: [pool1]\n1: x\nzz: y"), ": 1: unknown field"),
    "state_not_a_string": (_good_text("split: [pool1]", "split: [pool1]\nresources: {availability: {states: "
                                      "{7: {multiplier: 1, mean_s: 60}, b: {multiplier: 1, mean_s: 60}}}}"),
                           "resources.availability.states: expected state names that are non-empty strings, got 7"),
    "nul_in_trace_path": (_good_text("split: [pool1]", 'split: [pool1]\nresources: {trace: "a\\0b.csv"}'),
                          "resources.trace: "),
    "trace_is_a_fifo": (_good_text("split: [pool1]", "split: [pool1]\nresources: {trace: fifo.csv}"),
                        "fifo.csv: expected a regular file for the resource trace"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_files_fail_cleanly_and_promptly(workdir, name):
    content, message = HOSTILE[name]
    if not (workdir / "fifo.csv").exists():
        os.mkfifo(workdir / "fifo.csv")  # reading it would block until a writer came
    path = workdir / f"{name}.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with no_hang(5.0), pytest.raises(TierflowError) as info:
        load_scenario(path)
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value)
