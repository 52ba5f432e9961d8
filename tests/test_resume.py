"""Orchestrator loss: kill the `tierflow run` process mid-run, resume it, and end with the very
weights an uninterrupted run ends with (fixed seeds; sessions, optimizers, samplers, mobility,
clocks all restored from the round-boundary checkpoint)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tierflow.orchestrator.checkpoint import load_checkpoint
from tierflow.orchestrator.errors import TierflowError
from tierflow.orchestrator.events import WALL_CLOCK_FIELDS
from tierflow.orchestrator.runner import RunOptions, run_scenario
from tierflow.orchestrator.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.ray

SCENARIO = {
    "name": "resume",
    "cloud": {"flops_per_s": 1e12},
    "edges": [{"name": "west", "position": [0, 0], "radius_m": 700, "flops_per_s": 1e11},
              {"name": "east", "position": [800, 0], "radius_m": 700, "flops_per_s": 1e11}],
    "devices": [{"name": "a", "position": [100, 0], "flops_per_s": 2e9, "bandwidth_mbps": 20},
                {"name": "b", "position": [700, 0], "flops_per_s": 5e9, "bandwidth_mbps": 50},
                {"name": "c", "position": [300, 100], "flops_per_s": 1e10, "bandwidth_mbps": 40,
                 "split": ["pool1", "relu4"]}],
    "model": {"name": "vgg5"},
    "training": {"rounds": 5, "local_steps": 4, "batch_size": 16, "seed": 3,
                 "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}},
    "aggregation": {"schedule": "hierfavg", "cloud_every": 2},
    "split": ["pool1"],
    "mobility": {"model": "random_waypoint", "speed_mps": [10, 20], "area_m": [800, 200], "hysteresis_m": 20,
                 "round_duration_s": 40, "check_every_steps": 2},
    "execution": {"device_hosts": 2},
}


def tierflow(*args: str) -> list[str]:
    return [sys.executable, "-m", "tierflow.orchestrator.cli", *args]


def wait_for_checkpoint(run_dir: Path, round_: int, proc: subprocess.Popen, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    state = run_dir / "checkpoint" / "state.json"
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the run ended before checkpoint {round_}: {proc.stderr.read()}"
        if state.exists():
            try:
                if json.loads(state.read_text())["state"]["round"] >= round_:
                    return
            except (json.JSONDecodeError, KeyError):
                pass  # caught between the rename and the read
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint for round {round_} within {timeout_s} s")


def test_killed_run_resumes_to_the_same_final_weights(ray_session, tmp_path):
    path = tmp_path / "resume.yaml"
    path.write_text(yaml.safe_dump(SCENARIO))
    scenario = load_scenario(path)
    whole = run_scenario(scenario, RunOptions(out_dir=tmp_path / "whole", progress=False))
    assert whole["handovers"] > 0 and whole["migrations"] > 0  # the checkpoint has moved sessions to restore

    address = ray_session.get_runtime_context().gcs_address
    cut = tmp_path / "cut"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(tierflow("run", str(path), "--out", str(cut), "--address", address), cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_checkpoint(cut, 2, proc)
        time.sleep(0.3)  # well into round 3
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert load_checkpoint(cut).round in (2, 3, 4)
    assert not (cut / "summary.json").exists()

    done = subprocess.run(tierflow("run", "--resume", str(cut), "--address", address), cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    a, b = torch.load(tmp_path / "whole" / "model.pt"), torch.load(cut / "model.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    summary = json.loads((cut / "summary.json").read_text())
    assert summary["resumed_from_round"] >= 2
    for key in ("handovers", "migrations", "final_accuracy"):
        assert summary[key] == whole[key], key
    events = [json.loads(line) for line in (cut / "events.jsonl").read_text().splitlines()]
    rounds = [e["round"] for e in events if e["event"] == "round_end"]
    assert rounds == [1, 2, 3, 4, 5]  # the interrupted round's partial events were dropped, none repeated
    assert np.isclose(summary["virtual_time_s"], events[-1]["virtual_time_s"])
    # Event for event the uninterrupted run's (engine choices are not announced twice), but for wall clocks.
    whole_events = [json.loads(line) for line in (tmp_path / "whole" / "events.jsonl").read_text().splitlines()]
    assert [without_wall_clocks(e) for e in events if e["event"] != "run_resumed"] == \
           [without_wall_clocks(e) for e in whole_events]
    assert summary["engine"] == whole["engine"]


def without_wall_clocks(event: dict) -> dict:
    return {k: v for k, v in event.items() if k not in WALL_CLOCK_FIELDS}


def test_resume_refuses_a_changed_scenario_and_a_missing_checkpoint(ray_session, tmp_path):
    path = tmp_path / "resume.yaml"
    small = {**SCENARIO, "training": {**SCENARIO["training"], "rounds": 1}, "mobility": {"model": "static"}}
    path.write_text(yaml.safe_dump(small))
    out = tmp_path / "run"
    run_scenario(load_scenario(path), RunOptions(out_dir=out, progress=False))
    changed = {**small, "training": {**small["training"], "seed": 4}}
    path.write_text(yaml.safe_dump(changed))
    with pytest.raises(TierflowError, match="different scenario"):
        run_scenario(load_scenario(path), RunOptions(out_dir=out, progress=False, resume=True))
    with pytest.raises(TierflowError, match="no checkpoint"):
        run_scenario(load_scenario(path), RunOptions(out_dir=tmp_path / "empty", progress=False, resume=True))
