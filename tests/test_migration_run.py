"""Migration inside real runs: a moved session continues exactly; faults and garbage lose nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import zmq

from tierflow.migration.channel import send_state
from tierflow.migration.errors import MigrationError
from tierflow.orchestrator.fleet import Fleet
from tierflow.orchestrator.runner import Orchestrator, RunOptions
from tierflow.orchestrator.scenario import parse_scenario

pytestmark = pytest.mark.ray

# d0 walks from edge e0's area into e1's during round 1 (handover checks every 2 of 6 steps).
TRACE = "time_s,device,x,y\n0,d0,50,0\n30,d0,50,0\n40,d0,950,0\n"


def scenario(tmp_path: Path, moving: bool, handover: str = "migrate", timeout_s: float = 10.0):
    trace = tmp_path / "trace.csv"
    trace.write_text(TRACE)
    spec = {
        "name": "move",
        "cloud": {"flops_per_s": 1e12},
        "edges": [{"name": "e0", "position": [0, 0], "radius_m": 1200, "flops_per_s": 1e11},
                  {"name": "e1", "position": [1000, 0], "radius_m": 600, "flops_per_s": 1e11}],
        "devices": [{"name": "d0", "position": [50, 0], "flops_per_s": 1e9, "bandwidth_mbps": 20},
                    {"name": "d1", "position": [100, 0], "flops_per_s": 1e9, "bandwidth_mbps": 20},
                    {"name": "d2", "position": [0, 30], "flops_per_s": 2e9, "bandwidth_mbps": 20,
                     "split": ["pool1", "relu4"]}],
        "model": {"name": "vgg5"},
        "training": {"rounds": 2, "local_steps": 6, "batch_size": 16, "seed": 1,
                     "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}},
        "aggregation": {"schedule": "flat", "cloud_every": 1},
        "split": ["pool1"],
        "mobility": ({"model": "trace", "trace": str(trace), "round_duration_s": 100, "check_every_steps": 2,
                      "hysteresis_m": 20} if moving else {"model": "static"}),
        "policy": {"handover": handover, "migration_timeout_s": timeout_s},
    }
    return parse_scenario(spec, "move.yaml")


def run(sc, out: Path, fleet_class=Fleet) -> dict:
    summary = Orchestrator(sc, RunOptions(out_dir=out, progress=False), fleet_class).run()
    summary["state"] = torch.load(out / "model.pt")
    summary["events"] = [json.loads(x) for x in (out / "events.jsonl").read_text().splitlines()]
    return summary


def assert_same_weights(a, b, tol=1e-6):
    assert set(a) == set(b)
    for name in a:
        diff = (a[name].double() - b[name].double()).abs().max().item()
        assert diff <= tol, f"{name}: {diff}"


@pytest.fixture(scope="module")
def unmoved(ray_session, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("unmoved")
    return run(scenario(tmp, moving=False), tmp / "out")


def test_migrated_session_continues_exactly(unmoved, tmp_path):
    moved = run(scenario(tmp_path, moving=True), tmp_path / "out")
    assert moved["handovers"] == 1 and moved["migrations"] == 1 and moved["migration_bytes"] > 0
    migration = next(e for e in moved["events"] if e["event"] == "migration")
    assert migration["ok"] and (migration["from_edge"], migration["to_edge"]) == ("e0", "e1")
    assert_same_weights(moved["state"], unmoved["state"])


class KillDestination(Fleet):
    """The destination edge dies just before the handoff. Both edges share one process here, so it
    is killed as a logical edge: its sessions are gone and it refuses everything, while e0 goes on
    (Fleet.crash_edge; killing the process would take e0 with it)."""

    def migrate(self, move):
        self.crash_edge(move.dst)
        return super().migrate(move)


def test_destination_dying_mid_handoff_loses_nothing(unmoved, tmp_path):
    out = run(scenario(tmp_path, moving=True, timeout_s=2.0), tmp_path / "out", KillDestination)
    assert out["failed_migrations"] == 1 and out["migrations"] == 0
    kinds = {(e["kind"], e["entity"]) for e in out["events"] if e["event"] == "failure"}
    assert ("migration", "e1") in kinds and ("edge", "e1") in kinds
    assert_same_weights(out["state"], unmoved["state"])


class SendGarbageFirst(Fleet):
    def migrate(self, move):
        device_id, endpoint = move.session_id, self.receivers[move.dst]
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.linger = 2000
        sock.connect(endpoint)
        sock.send_multipart([b"\x00garbage"])
        sock.send_multipart([b'{"v": 1}', b"truncated"])
        sock.close()  # with its 2 s linger, so the garbage really goes out
        with pytest.raises(MigrationError):
            send_state(endpoint, b"not the run key" * 2, device_id, {"device_id": device_id}, {}, timeout_s=2.0)
        return super().migrate(move)


def test_garbage_and_unauthenticated_messages_are_rejected(unmoved, tmp_path):
    out = run(scenario(tmp_path, moving=True), tmp_path / "out", SendGarbageFirst)
    assert out["migrations"] == 1
    assert_same_weights(out["state"], unmoved["state"])


def test_restart_baseline_redoes_the_lost_work(unmoved, tmp_path):
    out = run(scenario(tmp_path, moving=True, handover="restart"), tmp_path / "out")
    assert out["handovers"] == 1 and out["restarts"] == 1
    first_round = next(e for e in out["events"] if e["event"] == "round_end")
    assert first_round["samples"] > next(e for e in unmoved["events"] if e["event"] == "round_end")["samples"]


def test_a_restarted_period_does_not_move_mobility_past_its_round(tmp_path):
    """A restart makes d0's period longer; mobility (on a fixed time per round here) must stay inside
    the round, or each restart would bring the next handovers (and restarts) forward."""
    from tierflow.orchestrator.trajectories import TRAJECTORIES, load_trajectories

    out = run(scenario(tmp_path, moving=True, handover="restart"), tmp_path / "out")
    assert out["restarts"] == 1
    frames = load_trajectories(tmp_path / "out" / TRAJECTORIES)
    per_round = 100.0  # the scenario's mobility.round_duration_s
    assert len(frames.times_s) > 3
    for t, rnd in zip(frames.times_s, frames.rounds, strict=True):
        assert t <= rnd * per_round + 1e-9, (t, rnd)
