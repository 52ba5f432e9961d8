"""``tierflow run`` as a user types it, with careless input of every class: exit 2, one line naming
the file, field or flag and what was expected, no traceback, and no run directory created.

Each case is a real subprocess: whatever slips past validation would start Ray or write files,
and these tests would see it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
BAD = HERE / "bad_scenarios"
GOOD_TEXT = (HERE / "good_scenario.yaml").read_text()
D1 = "  - {name: d1, position: [20, 0], flops_per_s: 1.0e+9, bandwidth_mbps: 20}\n"
ENTRY = shutil.which("tierflow", path=str(Path(sys.executable).parent))


def tierflow(*args: str, cwd: Path, env_path: Path | None = None) -> subprocess.CompletedProcess:
    command = [ENTRY] if ENTRY else [sys.executable, "-m", "tierflow.orchestrator.cli"]
    env = dict(os.environ)
    if env_path is not None:  # where a user's module:callable lives
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(env_path), env.get("PYTHONPATH")]))
    return subprocess.run([*command, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=180)


def scenario(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    return path


def assert_refused(proc: subprocess.CompletedProcess, *fragments: str, out: Path | None = None) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert proc.stderr.startswith("tierflow: error: "), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr[-2000:]
    for fragment in fragments:
        assert fragment in proc.stderr, (fragment, proc.stderr)
    if out is not None:
        assert not out.exists(), f"{out} was created"


def _user_module(tmp_path: Path, body: str) -> str:
    (tmp_path / "user_mod.py").write_text(body)
    return "user_mod"


# (scenario text, user module or None, what the message must hold)
CASES = {
    "huge_seed": ((BAD / "huge_seed.yaml").read_text(), None,
                  ["training.seed: expected an integer <= 4,294,967,295 (a 32-bit seed"]),
    "float_local_steps": ((BAD / "float_local_steps.yaml").read_text(), None,
                          ["training.local_steps: expected an integer >= 1, got 1e+30"]),
    "huge_cloud_every": ((BAD / "huge_cloud_every.yaml").read_text(), None,
                         ["aggregation.cloud_every: expected an integer <= 10,000"]),
    "mobility_dev_zero": (GOOD_TEXT + "mobility: {model: trace, trace: /dev/zero}\n", None,
                          ["mobility.trace: /dev/zero: expected a regular file for the mobility trace"]),
    "mobility_unknown_device": (GOOD_TEXT + "mobility: {model: trace, trace: m.csv}\n", None,
                                ["m.csv:3: device: expected a device of the scenario (d0, d1), got 'ghost'"]),
    "mobility_random_bytes": (GOOD_TEXT + "mobility: {model: trace, trace: bin.csv}\n", None,
                              ["mobility.trace: ", "bin.csv: expected UTF-8 text for the mobility trace, got byte"]),
    "dataset_raises_at_import": (GOOD_TEXT + "dataset: {name: 'user_mod:make'}\n",
                                 "raise RuntimeError('broken at import')\n",
                                 ["dataset.name: 'user_mod:make' failed: RuntimeError: broken at import"]),
    "dataset_with_empty_test_set": (
        GOOD_TEXT + "dataset: {name: 'user_mod:make'}\n",
        "import numpy as np\ndef make():\n    x = np.zeros((20, 1, 8, 8), np.float32); y = np.arange(20) % 10\n"
        "    return x, y, x[:0], y[:0]\n",
        ["dataset.name: 'user_mod:make': x_test: expected at least one sample"]),
    "model_raises": (GOOD_TEXT.replace("model: {name: vgg5}", "model: {name: 'user_mod:make'}"),
                     "def make(shape):\n    raise LookupError('no such model')\n",
                     ["model.name: could not build, trace and run 'user_mod:make': LookupError: no such model"]),
    "data_share_leaves_no_sample": (GOOD_TEXT.replace(D1, D1.replace("}", ", data_share: 1.0e-9}")), None,
                                    ["devices: 'd1' would get no training sample"]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_careless_scenarios_are_refused_before_anything_starts(tmp_path, name):
    text, module, fragments = CASES[name]
    (tmp_path / "m.csv").write_text("time_s,device,x,y\n0,d0,10,0\n5,ghost,20,0\n")
    (tmp_path / "bin.csv").write_bytes(bytes(range(255, -1, -1)))
    if module is not None:
        _user_module(tmp_path, module)
    path = scenario(tmp_path, text)
    out = tmp_path / "run"
    proc = tierflow("run", str(path), "--out", str(out), cwd=tmp_path, env_path=tmp_path)
    assert_refused(proc, f"tierflow: error: {path}: ", *fragments, out=out)


@pytest.mark.parametrize(("target", "message"), [
    ("/dev/zero", "/dev/zero: expected a regular file for the scenario file"),
    ("DIR", "expected a regular file for the scenario file, got a directory"),
    ("missing.yaml", "missing.yaml: cannot read the scenario file (No such file or directory)"),
])
def test_the_scenario_path_itself(tmp_path, target, message):
    target = str(tmp_path) if target == "DIR" else target
    out = tmp_path / "run"
    assert_refused(tierflow("run", target, "--out", str(out), cwd=tmp_path), message, out=out)


def test_plan_of_an_endless_instance(tmp_path):
    (tmp_path / "x.json").symlink_to("/dev/zero")
    assert_refused(tierflow("plan", "x.json", cwd=tmp_path), "x.json: expected a regular file for the cost-graph")


def test_a_profile_that_is_a_device_or_not_a_profile(tmp_path):
    good = scenario(tmp_path, GOOD_TEXT)
    out = tmp_path / "run"
    assert_refused(tierflow("run", str(good), "--out", str(out), "--profile", "/dev/zero", cwd=tmp_path),
                   "/dev/zero: expected a regular file for the layer profile", out=out)
    (tmp_path / "p.json").write_text("[" * 100_000)
    assert_refused(tierflow("run", str(good), "--out", str(out), "--profile", "p.json", cwd=tmp_path),
                   "p.json: not valid JSON", out=out)


def test_out_naming_a_file_or_under_a_file(tmp_path):
    good = scenario(tmp_path, GOOD_TEXT)
    existing = tmp_path / "results.txt"
    existing.write_text("keep me\n")
    assert_refused(tierflow("run", str(good), "--out", str(existing), cwd=tmp_path),
                   f"--out: expected a directory for the run's files, but {existing} is a file")
    assert existing.read_text() == "keep me\n"
    assert_refused(tierflow("run", str(good), "--out", str(existing / "run"), cwd=tmp_path),
                   f"--out: cannot create {existing / 'run'}: {existing} is a file", out=existing / "run")
    assert_refused(tierflow("compare", str(good), "--out", str(existing), cwd=tmp_path),
                   "--out: expected a directory for the run's files")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_out_in_a_read_only_directory(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    good = scenario(tmp_path, GOOD_TEXT)
    assert_refused(tierflow("run", str(good), "--out", str(locked / "run"), cwd=tmp_path),
                   f"{locked} is not writable", out=locked / "run")


@pytest.mark.parametrize(("addr", "message"), [
    ("127.0.0.1:99999", "--metrics-addr: expected a port from 0 to 65535 (0: any free port), got 99999"),
    ("localhost", "--metrics-addr: expected HOST:PORT (e.g. 127.0.0.1:9464), got 'localhost'"),
    ("127.0.0.1:", "--metrics-addr: expected HOST:PORT"),
    ("127.0.0.1:-5", "--metrics-addr: expected HOST:PORT"),
    ("[::1:9464", "--metrics-addr: expected an IPv6 host in brackets"),
    ("192.0.2.1:9464", "--metrics-addr: cannot listen on 192.0.2.1:9464"),  # TEST-NET-1: not this host's
    ("TAKEN", "cannot listen on 127.0.0.1:"),
])
def test_metrics_addr_is_checked_before_the_run_directory_exists(tmp_path, addr, message):
    good = scenario(tmp_path, GOOD_TEXT)
    out = tmp_path / "run"
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        if addr == "TAKEN":
            addr = f"127.0.0.1:{holder.getsockname()[1]}"
        proc = tierflow("run", str(good), "--out", str(out), "--metrics-addr", addr, cwd=tmp_path)
    assert_refused(proc, message, out=out)


def test_compare_with_a_failing_user_dataset_leaves_no_directory(tmp_path):
    text, module, fragments = CASES["dataset_with_empty_test_set"]
    _user_module(tmp_path, module)
    path = scenario(tmp_path, text)
    out = tmp_path / "cmp"
    proc = tierflow("compare", str(path), "--policies", "fixed", "--out", str(out), cwd=tmp_path, env_path=tmp_path)
    assert_refused(proc, *fragments, out=out)
