"""Every file tierflow reads, fed what a careless or hostile user might name instead of it.

Readers: the scenario, the resource trace, the mobility trace, the layer profile (``--profile``),
the cost-graph instance (``tierflow plan X.json``), a CIFAR-10 batch, and a run's event log
(``tierflow report``, ``compare``). Each gets random bytes, a good file cut short at a random
point, a file one byte over its bound (sparse: nothing is written), /dev/zero, a symlink to it, a
FIFO nobody writes, a directory and a missing path. The contract: it returns a checked value, or
raises TierflowError naming the file, promptly; never another exception, a hang, or reading an
endless stream.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import yaml
from deadline import no_hang
from event_samples import sample_events
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tierflow.orchestrator.events as events_module
from tierflow.migration.errors import MobilityInputError
from tierflow.migration.mobility import parse_trace
from tierflow.orchestrator.cli import main
from tierflow.orchestrator.clock import build_cost_model
from tierflow.orchestrator.data import CIFAR_BATCH_LIMIT_BYTES, load_cifar10
from tierflow.orchestrator.errors import TierflowError
from tierflow.orchestrator.events import read_typed_events
from tierflow.orchestrator.files import TEXT_LIMIT_BYTES
from tierflow.orchestrator.profiles import load_profile
from tierflow.orchestrator.report import load_records
from tierflow.orchestrator.scenario import load_scenario
from tierflow.placement.profile import LayerProfile, LayerTiming
from tierflow.tiers.models import InputShape

HERE = Path(__file__).parent
GOOD_TEXT = (HERE / "good_scenario.yaml").read_text()
SHAPE = InputShape(1, 8, 8, 10)
PROFILE_LIMIT_BYTES = 8 << 20  # orchestrator/profiles.py
SMALL_LOG_LIMIT = 64 << 10  # the event log's real bound is 1 GiB: too much to read in a test, so it is lowered

FUZZ = settings(max_examples=int(os.environ.get("TIERFLOW_FUZZ_EXAMPLES", 60)), deadline=None,  # no_hang bounds each
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])




@dataclass(frozen=True)
class Reader:
    """One file reader: ``read(dir, path)`` reads ``path`` as that kind of file (``dir`` holds the
    scenario when the file is one a scenario names); ``good`` is a valid file's bytes; ``limit`` its bound."""

    read: Callable[[Path, Path], object]
    good: Callable[[], bytes]
    limit: int


def _scenario_naming(directory: Path, extra: str) -> Path:
    path = directory / "scenario.yaml"
    path.write_text(GOOD_TEXT + extra)
    return path


def read_scenario(directory: Path, path: Path):
    return load_scenario(path)


def read_resource_trace_via_scenario(directory: Path, path: Path):
    return load_scenario(_scenario_naming(directory, f"resources: {{trace: {json.dumps(str(path))}}}\n"))


def read_mobility_trace_via_scenario(directory: Path, path: Path):
    return load_scenario(_scenario_naming(directory, f"mobility: {{model: trace, trace: {json.dumps(str(path))}}}\n"))


@functools.cache
def _profiled():
    """The good scenario's layer graph, as ``--profile`` checks a profile against it (built once)."""
    sc = load_scenario(HERE / "good_scenario.yaml")
    graph = build_cost_model(replace(sc, execution=replace(sc.execution, compute="flops")), SHAPE)[0].graph
    return sc, graph


def good_profile() -> bytes:
    sc, graph = _profiled()
    layers = {n: LayerTiming(1e-6 * (i + 1), 2e-6 * (i + 1)) for i, n in enumerate(graph.nodes)}
    return LayerProfile(sc.model.name, (1, 8, 8, 10), sc.training.batch_size, 1e10, layers).to_json().encode()


def read_profile(directory: Path, path: Path):
    sc, graph = _profiled()
    return load_profile(path, graph, sc.model.name, SHAPE, sc.training.batch_size)


def read_instance(directory: Path, path: Path):
    """As ``tierflow plan X.json`` reads it: exit 2 is its TierflowError."""
    target = path if path.suffix == ".json" else directory / "instance.json"
    if target != path:
        if target.exists() or target.is_symlink():
            target.unlink()
        target.symlink_to(path)
    code = main(["plan", str(target)])
    if code == 2:
        raise TierflowError(f"{target}: refused (exit 2)")  # main printed the message; see test_plan_messages
    return code


INSTANCE = {"nodes": [{"id": "x", "fwd_flops": 0, "bwd_flops": 0, "activation_bytes": 3072},
                      {"id": "fc", "fwd_flops": 1e9, "bwd_flops": 2e9, "activation_bytes": 40}],
            "edges": [["x", "fc"]], "source": "x", "tier_flops_per_s": [1e9, 2e10, 1e11],
            "link_bandwidth_bps": [2e7, 1e9]}


def read_cifar(directory: Path, path: Path):
    batches = directory / "cifar"
    batches.mkdir(exist_ok=True)
    for name in ("data_batch_1", "test_batch"):
        link = batches / name
        if link.exists() or link.is_symlink():
            link.unlink()
        link.symlink_to(path)
    return load_cifar10(batches)


def good_cifar() -> bytes:
    import pickle

    return pickle.dumps({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 3]})


def _good_log() -> bytes:
    return "".join(json.dumps(e) + "\n" for e in sample_events(rounds=2)).encode()


def read_report_log(directory: Path, path: Path):
    return load_records(path)


def read_compare_log(directory: Path, path: Path):
    return read_typed_events(path)


READERS = {
    "scenario": Reader(read_scenario, GOOD_TEXT.encode, TEXT_LIMIT_BYTES),
    "resource_trace": Reader(read_resource_trace_via_scenario,
                             lambda: b"time_s,entity,flops_per_s,bandwidth_bps\n0,d0,1e9,2e7\n5,e0,,1e6\n",
                             TEXT_LIMIT_BYTES),
    "mobility_trace": Reader(read_mobility_trace_via_scenario, lambda: b"time_s,device,x,y\n0,d0,10,0\n5,d0,20,0\n",
                             TEXT_LIMIT_BYTES),
    "layer_profile": Reader(read_profile, good_profile, PROFILE_LIMIT_BYTES),
    "instance": Reader(read_instance, lambda: json.dumps(INSTANCE).encode(), TEXT_LIMIT_BYTES),
    "cifar_batch": Reader(read_cifar, good_cifar, CIFAR_BATCH_LIMIT_BYTES),
    "report_log": Reader(read_report_log, _good_log, SMALL_LOG_LIMIT),
    "compare_log": Reader(read_compare_log, _good_log, SMALL_LOG_LIMIT),
}


@pytest.fixture(autouse=True)
def small_event_log_bound(monkeypatch):
    monkeypatch.setattr(events_module, "EVENT_LOG_LIMIT_BYTES", SMALL_LOG_LIMIT)  # report reads through it too


def outcome(name: str, directory: Path, path: Path) -> str:
    """'ok' or 'refused'; anything but TierflowError (or a hang) fails the test."""
    with no_hang():
        try:
            READERS[name].read(directory, path)
        except TierflowError as exc:
            assert str(path) in str(exc) or str(directory) in str(exc), exc  # names the file, its link or scenario
            return "refused"
        except json.JSONDecodeError:
            if name == "compare_log":  # compare reads the run's own log, written a moment before
                return "refused"
            raise
    return "ok"


@pytest.mark.parametrize("name", sorted(READERS))
def test_a_good_file_is_read(tmp_path, name):
    path = tmp_path / ("good.json" if name == "instance" else "good")
    path.write_bytes(READERS[name].good())
    assert outcome(name, tmp_path, path) == "ok"


HOSTILE = ["dev_zero", "symlink_to_dev_zero", "fifo", "directory", "missing", "one_byte_over_the_bound", "empty"]


def _hostile(tmp_path: Path, kind: str, limit: int) -> Path:
    path = tmp_path / f"{kind}.json"
    if kind == "dev_zero":
        return Path("/dev/zero")
    if kind == "symlink_to_dev_zero":
        path.symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(path)  # nobody writes: a plain open() blocks forever
    elif kind == "directory":
        path.mkdir()
    elif kind == "one_byte_over_the_bound":
        with open(path, "wb") as fh:
            fh.truncate(limit + 1)  # sparse: costs no disk
    elif kind == "empty":
        path.write_bytes(b"")
    return path


@pytest.mark.parametrize("kind", HOSTILE)
@pytest.mark.parametrize("name", sorted(READERS))
def test_hostile_paths_are_refused_promptly(tmp_path, name, kind):
    if name in ("compare_log", "report_log") and kind == "empty":
        pytest.skip("an empty log is a run with no events yet: read as such (the report then finds no rounds)")
    path = _hostile(tmp_path, kind, READERS[name].limit)
    assert outcome(name, tmp_path, path) == "refused"


RULES = {
    "directory": "expected a regular file for the",
    "fifo": "expected a regular file for the",
    "dev_zero": "expected a regular file for the",
    "one_byte_over_the_bound": "is larger than",
    "missing": "cannot read the",
}


@pytest.mark.parametrize("kind", sorted(RULES))
@pytest.mark.parametrize("name", sorted(READERS))
def test_hostile_paths_name_the_file_and_the_rule(tmp_path, name, kind, capsys):
    """The messages themselves: one set of rules (orchestrator/files.py) for every reader."""
    path = _hostile(tmp_path, kind, READERS[name].limit)
    with no_hang(), pytest.raises(TierflowError) as info:
        READERS[name].read(tmp_path, path)
    message = str(info.value) + capsys.readouterr().err  # tierflow plan prints its message
    expected = "no event log" if (name, kind) == ("report_log", "missing") else RULES[kind]
    named = {"cifar_batch": tmp_path / "cifar" / "data_batch_1", "instance": tmp_path / "instance.json"}
    named_path = named.get(name, path) if name != "instance" or path.suffix != ".json" else path
    assert expected in message and str(named_path) in message and "Traceback" not in message


@FUZZ
@given(data=st.binary(max_size=400))
def test_random_bytes_are_refused_or_read_cleanly(tmp_path_factory, data):
    directory = tmp_path_factory.mktemp("bytes")
    path = directory / "random.json"
    path.write_bytes(data)
    for name in sorted(READERS):
        outcome(name, directory, path)


@FUZZ
@given(data=st.data())
def test_a_good_file_cut_short_or_flipped_is_refused_or_read_cleanly(tmp_path_factory, data):
    directory = tmp_path_factory.mktemp("cut")
    name = data.draw(st.sampled_from(sorted(READERS)))
    good = bytearray(READERS[name].good())
    cut = data.draw(st.integers(0, len(good)))
    mutated = good[:cut]
    if data.draw(st.booleans()) and mutated:
        i = data.draw(st.integers(0, len(mutated) - 1))
        mutated[i] = data.draw(st.integers(0, 255))
    path = directory / "cut.json"
    path.write_bytes(bytes(mutated))
    outcome(name, directory, path)


TRACE_LINE = st.lists(st.sampled_from(["0", "5", "-1", "1e999", "nan", "d0", "d1", "ghost", "", " ", "x", '"', "\x00",
                                       "1,2", "e0"]), min_size=0, max_size=5).map(",".join)


@FUZZ
@given(lines=st.lists(TRACE_LINE, max_size=6), text=st.text(max_size=80))
def test_the_mobility_trace_parser_returns_checked_samples_or_fails_cleanly(lines, text):
    for body in ("time_s,device,x,y\n" + "\n".join(lines), text):
        try:
            samples = parse_trace(body, "t.csv", ["d0", "d1"])
        except MobilityInputError as exc:
            assert str(exc).startswith("t.csv")
            continue
        last: dict[str, float] = {}
        for s in samples:
            assert s.device in {"d0", "d1"} and np.isfinite([s.time_s, s.x, s.y]).all()
            assert s.time_s >= last.get(s.device, 0.0)
            last[s.device] = s.time_s


def test_the_mobility_trace_follows_the_resource_trace_rules(tmp_path):
    """The three inputs the resource trace reader already refused, now refused for mobility too."""
    (tmp_path / "random.csv").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "ghost.csv").write_text("time_s,device,x,y\n0,d0,1,1\n3,ghost,5,5\n")
    cases = {
        "random.csv": "expected UTF-8 text for the mobility trace, got byte 0x80 at offset 128",
        "/dev/zero": "/dev/zero: expected a regular file for the mobility trace",
        "ghost.csv": "ghost.csv:3: device: expected a device of the scenario (d0, d1), got 'ghost'",
    }
    for trace, message in cases.items():
        scenario = _scenario_naming(tmp_path, f"mobility: {{model: trace, trace: {trace}}}\n")
        with pytest.raises(TierflowError) as info:
            load_scenario(scenario)
        assert str(info.value).startswith(f"{scenario}: mobility.trace: ") and message in str(info.value)
    for trace in cases:
        scenario = _scenario_naming(tmp_path, f"resources: {{trace: {trace}}}\n")
        with pytest.raises(TierflowError) as info:
            load_scenario(scenario)
        assert str(info.value).startswith(f"{scenario}: resources.trace: ")


def test_the_scenario_file_itself_as_dev_zero_or_a_directory(tmp_path):
    for path, message in (("/dev/zero", "/dev/zero: expected a regular file for the scenario file"),
                          (str(tmp_path), "expected a regular file for the scenario file, got a directory")):
        with no_hang(), pytest.raises(TierflowError, match=message):
            load_scenario(path)
    assert yaml.safe_load(GOOD_TEXT)  # the base these tests append to is itself valid
