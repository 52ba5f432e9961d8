"""Resume never loses a completed round and never damages a run directory.

- the checkpoint swap survives a crash between any two file operations (simulated at every step,
  twice in a row, and by SIGKILLing a process that saves in a loop);
- a damaged or edited checkpoint is refused with the file named, never a traceback;
- the scenario fingerprint does not depend on how the scenario's path was typed;
- a fresh run into a used run directory is refused unless ``--fresh``, which clears it;
- a resume cuts events.jsonl only back to what its own checkpoint recorded;
- the final model is also written as model.safetensors, which loads without pickle.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from checkpoint_samples import make_checkpoint, valid_state
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from tierflow.orchestrator import cli
from tierflow.orchestrator.checkpoint import (
    CHECKPOINT,
    Checkpoint,
    load_checkpoint,
    save_checkpoint,
    scenario_fingerprint,
)
from tierflow.orchestrator.durable_dir import MANIFEST
from tierflow.orchestrator.errors import TierflowError
from tierflow.orchestrator.model_files import write_final_model
from tierflow.orchestrator.run_dir import EventsDigest, claim_run_dir, clear_run
from tierflow.orchestrator.runner import Orchestrator, RunOptions
from tierflow.orchestrator.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[1]

SCENARIO = {
    "name": "safety",
    "cloud": {"flops_per_s": 1e12},
    "edges": [{"name": "e0", "position": [0, 0], "radius_m": 500, "flops_per_s": 1e11}],
    "devices": [{"name": "d0", "position": [10, 0], "flops_per_s": 1e9, "bandwidth_mbps": 20},
                {"name": "d1", "position": [20, 0], "flops_per_s": 1e9, "bandwidth_mbps": 20}],
    "model": {"name": "mlp"},
    "training": {"rounds": 3, "local_steps": 2, "batch_size": 16, "seed": 1},
    "split": [1],
    "execution": {"device_hosts": 1, "compute": "flops"},
}


def assert_is_round(ckpt: Checkpoint, round_: int) -> None:
    assert ckpt.round == round_
    expected = make_checkpoint(round_)
    assert ckpt.state == expected.state
    for k, v in expected.global_model.items():
        np.testing.assert_array_equal(ckpt.global_model[k], v)
    np.testing.assert_array_equal(ckpt.devices["d0"][1]["stage/w"], expected.devices["d0"][1]["stage/w"])
    assert ckpt.devices["d0"][0] == {"step": round_}
    np.testing.assert_array_equal(ckpt.sessions["e0"]["d0"][1]["w"], expected.sessions["e0"]["d0"][1]["w"])


def listing(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# ----- crash at every step of the swap -----

class Crash(BaseException):
    """The process stops here (BaseException: no ``except Exception`` may carry on after it)."""


class CrashAt:
    """Count the file operations (mkdir, fsync, replace, unlink, rmtree) and stop at number ``n``.

    What a real crash loses is lost here too: a file whose fsync never returned keeps only half its
    bytes, and a tree being removed loses only some of its files."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, n: int):
        self.n, self.done = n, []
        real = {"mkdir": os.mkdir, "fsync": os.fsync, "replace": os.replace, "unlink": os.unlink,
                "rmtree": shutil.rmtree}

        def step(name: str, detail: str) -> None:
            if len(self.done) == self.n:
                raise Crash(f"{name} {detail}")
            self.done.append(f"{name} {detail}")

        def fsync(fd: int) -> None:
            path = os.readlink(f"/proc/self/fd/{fd}")
            if len(self.done) == self.n and os.path.isfile(path):
                os.ftruncate(fd, os.fstat(fd).st_size // 2)
            step("fsync", path)
            real["fsync"](fd)

        def rmtree(path, *args, **kwargs) -> None:
            if len(self.done) == self.n:
                files = sorted(p for p in Path(path).rglob("*") if p.is_file())
                if files:
                    real["unlink"](files[0])
            step("rmtree", str(path))
            real["rmtree"](path, *args, **kwargs)

        def wrap(name: str):
            def op(path, *args, **kwargs):
                step(name, str(path))
                return real[name](path, *args, **kwargs)
            return op

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(shutil, "rmtree", rmtree)
        for name in ("mkdir", "replace", "unlink"):
            monkeypatch.setattr(os, name, wrap(name))

    def committed(self, run_dir: Path) -> bool:
        """The new checkpoint's manifest reached the disk before the crash."""
        return f"fsync {run_dir / (CHECKPOINT + '.tmp') / MANIFEST}" in self.done


def save_crashing_at(monkeypatch, run_dir: Path, round_: int, n: int) -> tuple[bool, bool]:
    """Save ``round_`` crashing at operation ``n``: (whether it crashed, whether it committed first)."""
    with monkeypatch.context() as m:
        crash = CrashAt(m, n)
        try:
            save_checkpoint(run_dir, make_checkpoint(round_))
        except Crash:
            return True, crash.committed(run_dir)
    return False, True


def test_a_crash_at_any_step_of_the_swap_keeps_the_last_completed_round(monkeypatch, tmp_path):
    steps = 0
    while True:
        run_dir = tmp_path / f"crash{steps}"
        run_dir.mkdir()
        save_checkpoint(run_dir, make_checkpoint(1))
        save_checkpoint(run_dir, make_checkpoint(2))
        crashed, committed = save_crashing_at(monkeypatch, run_dir, 3, steps)
        if not crashed:
            break
        before = listing(run_dir)
        assert_is_round(load_checkpoint(run_dir), 3 if committed else 2)
        assert listing(run_dir) == before  # reading never changes the directory
        # The run goes on: the next save finishes the interrupted swap first.
        save_checkpoint(run_dir, make_checkpoint(4))
        assert_is_round(load_checkpoint(run_dir), 4)
        assert sorted(p.name for p in run_dir.iterdir()) == [CHECKPOINT]
        steps += 1
    assert steps >= 9  # mkdir, 3 file fsyncs, the directory fsync, 2 renames, their fsyncs, the removal


def test_a_crash_while_finishing_an_interrupted_swap_loses_nothing_either(monkeypatch, tmp_path):
    first = 0
    while True:
        second = 0
        while True:
            run_dir = tmp_path / f"crash{first}-{second}"
            run_dir.mkdir()
            save_checkpoint(run_dir, make_checkpoint(1))
            crashed_first, committed = save_crashing_at(monkeypatch, run_dir, 2, first)
            last = 2 if committed else 1
            crashed, committed = save_crashing_at(monkeypatch, run_dir, 3, second)
            last = 3 if committed else last
            assert_is_round(load_checkpoint(run_dir), last)
            if not crashed:
                break
            second += 1
        if not crashed_first:
            break
        first += 1
    assert first >= 9


KILL_LOOP = """
import sys
from pathlib import Path
from checkpoint_samples import make_checkpoint, valid_state
from tierflow.orchestrator.checkpoint import save_checkpoint
run_dir = Path(sys.argv[1])
for r in range(1, 10_000):
    save_checkpoint(run_dir, make_checkpoint(r, size=300_000))
    print(r, flush=True)
"""


@pytest.mark.parametrize("after_s", [0.0, 0.004, 0.011, 0.023])
def test_sigkill_during_a_loop_of_saves_always_leaves_the_last_saved_round(tmp_path, after_s):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}  # for checkpoint_samples
    proc = subprocess.Popen([sys.executable, "-c", KILL_LOOP, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                            env=env)
    try:
        saved = 0
        while saved < 3:
            line = proc.stdout.readline()
            assert line, "the saving loop ended early"
            saved = int(line)
        time.sleep(after_s)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    rest = proc.stdout.read().split()
    saved = int(rest[-1]) if rest else saved
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.round >= saved  # the round the loop last reported saved, or the one after it
    np.testing.assert_array_equal(ckpt.global_model["w"], np.full(300_000, float(ckpt.round), np.float32))


# ----- damaged and edited checkpoints -----

def rewrite_manifest(ckpt_dir: Path) -> None:
    """As if the damage had happened before the manifest was written (a consistent, wrong checkpoint)."""
    files = {p.name: {"bytes": p.stat().st_size, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
             for p in ckpt_dir.iterdir() if p.name != MANIFEST}
    (ckpt_dir / MANIFEST).write_text(json.dumps({"format": 1, "files": files}))


def edit_state(ckpt_dir: Path, edit) -> None:
    doc = json.loads((ckpt_dir / "state.json").read_text())
    edit(doc)
    (ckpt_dir / "state.json").write_text(json.dumps(doc))


def npz_with_bad_crc(data: bytes) -> bytes:
    """Flip one byte of a member's data: the archive still opens, reading the member fails its CRC."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        info = zf.infolist()[0]
    assert info.file_size > 4000
    offset = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + 1000  # in the data
    damaged = bytearray(data)
    damaged[offset] ^= 0xFF
    return bytes(damaged)


def _drop_round(doc):
    del doc["state"]["round"]


def _string_n_tiers(doc):
    doc["state"]["splits"]["d0"]["n_tiers"] = "two"


def _no_devices(doc):
    doc["devices"] = []


def _observed_three(doc):
    doc["state"]["observed"]["d0"][1] = [1.0, 2.0, 3.0]


def _unknown_session(doc):
    doc["sessions"]["e0"] = {}


EDITED_STATES = [
    (_drop_round, r"state\.json: state\.round: expected a whole number >= 0 \(the key is missing\), got nothing"),
    (_string_n_tiers, r"state\.json: state\.splits\.d0\.n_tiers: expected a whole number >= 0, got \"two\""),
    (_no_devices, r"state\.json: devices: expected a mapping of names to \(a mapping\), got \[\]"),
    (_observed_three, r"state\.json: state\.observed\.d0\[1\]: expected a list of 4 \(a number\)"),
    (_unknown_session, r"arrays\.npz: array 'session/e0/d0/w' belongs to no device or session"),
]


@pytest.mark.parametrize("edit,message", EDITED_STATES, ids=[e.__name__ for e, _ in EDITED_STATES])
def test_an_edited_state_json_is_refused_with_the_key_and_what_it_should_hold(tmp_path, edit, message):
    ckpt_dir = save_checkpoint(tmp_path, make_checkpoint(1))
    edit_state(ckpt_dir, edit)
    with pytest.raises(TierflowError, match=r"state\.json: expected \d+ bytes with SHA-256 .* damaged or edited"):
        load_checkpoint(tmp_path)  # the manifest sees any edit
    rewrite_manifest(ckpt_dir)
    with pytest.raises(TierflowError, match=message):
        load_checkpoint(tmp_path)  # and the shape check sees what an older or other writer got wrong


def _random_bytes(data: bytes) -> bytes:
    return np.random.default_rng(0).bytes(len(data))


def _truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _pickled_object_array(data: bytes) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{"global/w": np.array([{"a": 1}], dtype=object)})
    return buf.getvalue()


DAMAGED_ARRAYS = [
    (_random_bytes, "BadZipFile|ValueError"),
    (npz_with_bad_crc, "Bad CRC-32"),
    (_truncated, "BadZipFile|EOFError|ValueError"),
    (_pickled_object_array, "allow_pickle=False"),
]


@pytest.mark.parametrize("damage,why", DAMAGED_ARRAYS, ids=[d.__name__ for d, _ in DAMAGED_ARRAYS])
def test_a_damaged_arrays_npz_is_refused_with_the_file_named(tmp_path, damage, why):
    ckpt_dir = save_checkpoint(tmp_path, make_checkpoint(1, size=4096))
    npz = ckpt_dir / "arrays.npz"
    npz.write_bytes(damage(npz.read_bytes()))
    with pytest.raises(TierflowError, match=rf"^{npz}: expected \d+ bytes with SHA-256 .* damaged or edited"):
        load_checkpoint(tmp_path)
    rewrite_manifest(ckpt_dir)
    with pytest.raises(TierflowError, match=rf"^{npz}: expected a numpy \.npz archive of plain arrays .*({why})"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("manifest,message", [
    (None, r"manifest\.json: missing; expected the manifest"),
    ("{not json", r"manifest\.json: expected JSON"),
    ('{"files": {"state.json": {"bytes": -1, "sha256": "x"}}}', r"manifest\.json: expected \{\"files\""),
])
def test_a_missing_or_damaged_manifest_is_refused(tmp_path, manifest, message):
    ckpt_dir = save_checkpoint(tmp_path, make_checkpoint(1))
    if manifest is None:
        (ckpt_dir / MANIFEST).unlink()
    else:
        (ckpt_dir / MANIFEST).write_text(manifest)
    with pytest.raises(TierflowError, match=message):
        load_checkpoint(tmp_path)


def test_the_cli_refuses_a_damaged_checkpoint_with_exit_2_and_no_traceback(tmp_path, capsys):
    ckpt_dir = save_checkpoint(tmp_path, make_checkpoint(1))
    (ckpt_dir / "arrays.npz").write_bytes(b"PK\x03\x04 not really")
    assert cli.main(["run", "--resume", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tierflow: error: {ckpt_dir / 'arrays.npz'}: expected") and "Traceback" not in err


SCALARS = st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=False) | st.text(max_size=3)
JSON_VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=3), inner, max_size=3), max_leaves=6)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(file=st.sampled_from(["state.json", "arrays.npz", MANIFEST]), cut=st.integers(0, 10_000),
       flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), max_size=4))
def test_fuzzed_checkpoint_files_load_or_are_refused_never_a_traceback(tmp_path_factory, file, cut, flips):
    run_dir = tmp_path_factory.mktemp("fuzz")
    ckpt_dir = save_checkpoint(run_dir, make_checkpoint(1))
    data = bytearray((ckpt_dir / file).read_bytes())
    for at, bits in flips:
        if data:
            data[at % len(data)] ^= bits
    (ckpt_dir / file).write_bytes(bytes(data[:cut]) if cut < len(data) else bytes(data))
    if file != MANIFEST:
        rewrite_manifest(ckpt_dir)  # reach the parsers, not only the digest check
    try:
        load_checkpoint(run_dir)
    except TierflowError as exc:
        assert str(ckpt_dir) in str(exc)  # names the file (or the checkpoint it is in)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.lists(st.sampled_from(["state", "devices", "sessions", "splits", "d0", "e0", "observed", "tiers",
                                      "round", "plans", "counters", "edges", "0", "1"]), min_size=1, max_size=4),
       value=JSON_VALUES)
def test_a_state_json_with_any_value_anywhere_loads_or_is_refused(tmp_path_factory, path, value):
    run_dir = tmp_path_factory.mktemp("fuzz")
    ckpt_dir = save_checkpoint(run_dir, make_checkpoint(1))

    def put(doc):
        node = doc
        for key in path[:-1]:
            nxt = node.get(key) if isinstance(node, dict) else (
                node[int(key)] if isinstance(node, list) and key.isdigit() and int(key) < len(node) else None)
            if not isinstance(nxt, (dict, list)):
                break
            node = nxt
        if isinstance(node, dict):
            node[path[-1]] = value
        elif isinstance(node, list) and node:
            node[0] = value

    edit_state(ckpt_dir, put)
    rewrite_manifest(ckpt_dir)
    try:
        load_checkpoint(run_dir)
    except TierflowError as exc:
        assert str(ckpt_dir) in str(exc)


# ----- the fingerprint does not depend on how a path was typed -----

def write_moving_scenario(where: Path, seed: int = 1) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    (where / "trace.csv").write_text("time_s,device,x,y\n0,d0,10,0\n0,d1,20,0\n30,d0,40,0\n")
    doc = {**SCENARIO, "training": {**SCENARIO["training"], "seed": seed},
           "mobility": {"model": "trace", "trace": "trace.csv", "round_duration_s": 10}}
    path = where / "s.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_the_fingerprint_does_not_depend_on_how_the_path_was_typed(tmp_path, monkeypatch):
    path = write_moving_scenario(tmp_path / "city")
    loaded = []
    for cwd, typed in ((tmp_path, "city/s.yaml"), (tmp_path / "city", "s.yaml"), (ROOT, str(path))):
        monkeypatch.chdir(cwd)  # a run computes the fingerprint where it loaded the scenario
        scenario = load_scenario(typed)
        loaded.append((scenario, scenario_fingerprint(scenario)))
    assert len({s.source for s, _ in loaded}) == 3  # the paths differ as typed
    assert len({s.mobility.trace for s, _ in loaded}) == 3
    prints = {fp for _, fp in loaded}
    assert len(prints) == 1
    # ... but it still tells scenarios apart: another seed, or the same file naming another trace.
    assert scenario_fingerprint(load_scenario(write_moving_scenario(tmp_path / "other", seed=2))) not in prints
    assert scenario_fingerprint(load_scenario(write_moving_scenario(tmp_path / "elsewhere"))) not in prints


def test_a_run_started_by_a_relative_path_resumes_from_an_absolute_one(tmp_path, monkeypatch):
    """The README's form: `tierflow run s.yaml --out X` in one directory, `--resume X` from another."""
    path = write_moving_scenario(tmp_path / "city")
    monkeypatch.chdir(tmp_path)
    sc = load_scenario("city/s.yaml")
    out = tmp_path / "run"
    out.mkdir()
    (out / "events.jsonl").write_text('{"event": "run_start"}\n')
    prefix = (out / "events.jsonl").read_bytes()
    save_checkpoint(out, make_checkpoint(1, fingerprint=scenario_fingerprint(sc), scenario_path=str(path.resolve()),
                                         events_bytes=len(prefix), events_sha256=hashlib.sha256(prefix).hexdigest()))
    monkeypatch.chdir(ROOT)
    resumed_from = []

    def stop_before_ray(self, log):
        resumed_from.append(self.resume_from.round)
        return {"final_accuracy": 0.0, "rounds": 3, "wall_time_s": 0.0, "virtual_time_s": 0.0}

    monkeypatch.setattr(Orchestrator, "_run", stop_before_ray)
    assert cli.main(["run", "--resume", str(out)]) == 0  # past the fingerprint and the event-log checks
    assert resumed_from == [1]


# ----- one run per directory -----

def used_dir(tmp_path: Path, *names: str) -> Path:
    out = tmp_path / "used"
    out.mkdir()
    scratch = save_checkpoint(tmp_path / "scratch", make_checkpoint(7)) if any(
        n.startswith(CHECKPOINT) for n in names) else None
    for name in names:
        if name.startswith(CHECKPOINT):
            shutil.copytree(scratch, out / name)
        else:
            (out / name).write_text('{"event": "run_start"}\n' * 50)
    (out / "notes.txt").write_text("mine")
    return out


@pytest.mark.parametrize("names", [("events.jsonl",), (CHECKPOINT,), (CHECKPOINT + ".old", CHECKPOINT + ".tmp"),
                                   (CHECKPOINT, "events.jsonl")])
def test_a_fresh_run_into_a_used_directory_is_refused_before_anything_starts(tmp_path, capsys, names):
    scenario = tmp_path / "s.yaml"
    scenario.write_text(yaml.safe_dump(SCENARIO))
    out = used_dir(tmp_path, *names)
    before = listing(out)
    assert cli.main(["run", str(scenario), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"--out {out}: the directory already holds a run" in err and "--fresh" in err and "--resume" in err
    assert listing(out) == before
    with pytest.raises(TierflowError, match="already holds a run"):  # the library refuses it too
        Orchestrator(load_scenario(scenario), RunOptions(out_dir=out, progress=False)).run()
    assert listing(out) == before


def test_fresh_and_resume_together_are_refused(tmp_path, capsys):
    out = used_dir(tmp_path, CHECKPOINT)
    assert cli.main(["run", "--resume", str(out), "--fresh"]) == 2
    assert "--fresh: starts a run over, --resume continues it" in capsys.readouterr().err


def test_fresh_clears_the_earlier_run_and_nothing_else(tmp_path):
    out = used_dir(tmp_path, CHECKPOINT, "events.jsonl", "summary.json", "model.pt", CHECKPOINT + ".old")
    claim_run_dir(out, resume=False, fresh=True)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    with pytest.raises(TierflowError, match="no checkpoint to resume from"):
        load_checkpoint(out)  # killed before its first checkpoint, a resume cannot pick up the old run
    clear_run(tmp_path / "nothing-here")  # an empty or missing directory is fine


# ----- a resume only ever cuts its own log -----

def test_events_digest_follows_the_log_and_resume_cuts_only_its_own(tmp_path):
    log = tmp_path / "events.jsonl"
    log.write_bytes(b'{"a": 1}\n')
    digest = EventsDigest(log)
    assert digest.advance() == (9, hashlib.sha256(b'{"a": 1}\n').hexdigest())
    with open(log, "ab") as fh:
        fh.write(b'{"b": 2}\n')
    size, sha = digest.advance()
    assert (size, sha) == (18, hashlib.sha256(log.read_bytes()).hexdigest())

    with open(log, "ab") as fh:
        fh.write(b'{"partial round": 3}\n')
    continued = EventsDigest.continuing(log, size, sha)
    assert log.read_bytes() == b'{"a": 1}\n{"b": 2}\n'
    with open(log, "ab") as fh:
        fh.write(b'{"c": 3}\n')
    assert continued.advance() == (27, hashlib.sha256(log.read_bytes()).hexdigest())

    shorter = tmp_path / "shorter.jsonl"
    shorter.write_bytes(b'{"a": 1}\n')
    with pytest.raises(TierflowError, match=r"shorter\.jsonl: expected the event log .* fewer"):
        EventsDigest.continuing(shorter, size, sha)
    assert shorter.read_bytes() == b'{"a": 1}\n'  # neither cut nor padded with NUL bytes
    other = tmp_path / "other.jsonl"
    other.write_bytes(b'{"x": 1}\n{"y": 2}\n{"z": 3}\n')
    with pytest.raises(TierflowError, match=r"other\.jsonl: expected the event log .* differ"):
        EventsDigest.continuing(other, size, sha)
    assert other.read_bytes() == b'{"x": 1}\n{"y": 2}\n{"z": 3}\n'


def test_resuming_an_old_checkpoint_over_a_new_shorter_log_changes_nothing(tmp_path):
    """The reported loss: an old checkpoint, a new run's shorter log; resuming used to cut and pad it."""
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(SCENARIO))
    sc = load_scenario(path)
    out = tmp_path / "run"
    out.mkdir()
    old_log = b'{"event": "run_start"}\n' + b'{"event": "round_end"}\n' * 40
    save_checkpoint(out, make_checkpoint(3, fingerprint=scenario_fingerprint(sc), events_bytes=len(old_log),
                                         events_sha256=hashlib.sha256(old_log).hexdigest()))
    (out / "events.jsonl").write_bytes(b'{"event": "run_start"}\n')  # the new run's, killed early
    before = listing(out)
    with pytest.raises(TierflowError, match="events.jsonl: expected the event log the checkpoint was taken with"):
        Orchestrator(sc, RunOptions(out_dir=out, progress=False, resume=True)).run()
    assert listing(out) == before
    assert b"\0" not in (out / "events.jsonl").read_bytes()


# ----- the final model without pickle -----

def test_the_final_model_loads_from_safetensors_without_pickle(tmp_path):
    state = {"fc1.weight": np.arange(12, dtype=np.float32).reshape(3, 4),
             "fc1.bias": np.ones(3, np.float32), "bn.num_batches_tracked": np.array(5, dtype=np.int64)}
    write_final_model(tmp_path, state)
    raw = (tmp_path / "model.safetensors").read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + header_len])  # a JSON header and raw bytes: nothing to unpickle
    assert set(header) == {*state, "__metadata__"}
    loaded = load_file(tmp_path / "model.safetensors")
    assert loaded.keys() == state.keys()
    for k, v in state.items():
        assert torch.equal(loaded[k], torch.from_numpy(v)), k
    pickled = torch.load(tmp_path / "model.pt", weights_only=True)
    assert all(torch.equal(pickled[k], loaded[k]) for k in state)


# ----- end to end: the README's commands on a real run -----

def tierflow(*args: str) -> list[str]:
    return [sys.executable, "-m", "tierflow.orchestrator.cli", *args]


@pytest.mark.ray
def test_fresh_over_a_used_dir_then_kill_and_resume_from_another_directory(ray_session, tmp_path):
    write_moving_scenario(tmp_path / "city")
    out = used_dir(tmp_path, CHECKPOINT, "events.jsonl")  # an earlier run's round 7
    address = ray_session.get_runtime_context().gcs_address
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    refused = subprocess.run(tierflow("run", "city/s.yaml", "--out", "used"), cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "already holds a run" in refused.stderr
    proc = subprocess.Popen(tierflow("run", "city/s.yaml", "--out", "used", "--fresh", "--address", address),
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            state = out / CHECKPOINT / "state.json"
            if state.exists() and json.loads(state.read_text())["state"]["round"] < 7:
                break  # the fresh run's first checkpoint replaced the old run's
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert (out / "notes.txt").read_text() == "mine"
    done = subprocess.run(tierflow("run", "--resume", str(out), "--address", address), cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events].count("run_start") == 1
    assert [e["round"] for e in events if e["event"] == "round_end"] == [1, 2, 3]
    assert json.loads((out / "summary.json").read_text())["resumed_from_round"] >= 1
    final = load_checkpoint(out)
    assert final.round == 3
    model = load_file(out / "model.safetensors")
    assert model.keys() == final.global_model.keys()
    for k, v in final.global_model.items():
        assert torch.equal(model[k], torch.from_numpy(v)), k


def test_the_typed_checkpoint_state_and_its_shape_check_name_the_same_fields():
    """The loop writes ``RunCheckpoint.to_json()``; the reader checks that shape before building one."""
    from dataclasses import fields

    from tierflow.orchestrator.checkpoint_state import STATE
    from tierflow.orchestrator.run_checkpoint import RunCheckpoint
    from tierflow.orchestrator.run_state import Counters

    assert [f.name for f in fields(RunCheckpoint)] and {f.name for f in fields(RunCheckpoint)} == set(STATE.fields)
    doc = valid_state(3)
    assert RunCheckpoint.from_json(doc).to_json() == {**doc, "counters": {**Counters().to_json(), **doc["counters"]}}
