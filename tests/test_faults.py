"""Device and edge loss in real runs: failures are data, the round completes, nothing done is lost."""

from __future__ import annotations

import json
import threading
import urllib.request
from pathlib import Path

import pytest
import ray
from prometheus_client.parser import text_string_to_metric_families

from tierflow.orchestrator.fleet import Fleet
from tierflow.orchestrator.metrics import MetricsExporter
from tierflow.orchestrator.runner import Orchestrator, RunOptions
from tierflow.orchestrator.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.ray


def events(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]


class KillDuringRound(Fleet):
    """A fleet that kills one of its actors a moment after the first training segment of a round
    has been sent (``arm`` says which round, which actor, and whether Ray may restart it)."""

    killed: str | None = None

    def arm(self, round_now, round_: int, pick, restart: bool, delay_s: float = 0.05, logical: bool = False) -> None:
        """``logical``: the picked edge shares its process, so it is killed inside it (Fleet.crash_edge)."""
        self.round_now, self.kill_round, self.pick = round_now, round_, pick
        self.restart, self.delay_s, self.logical = restart, delay_s, logical

    def train(self, jobs):
        if self.round_now() == self.kill_round and self.killed is None:
            name, actor = self.pick(self)
            self.killed = name
            kill = (lambda: self.crash_edge(name)) if self.logical else \
                (lambda: ray.kill(actor, no_restart=not self.restart))
            threading.Timer(self.delay_s, kill).start()
        return super().train(jobs)


def killing_run(scenario, options, **arm) -> Orchestrator:
    orch = Orchestrator(scenario, options, fleet_class=KillDuringRound)
    orch.fleet.arm(lambda: orch.state.round, **arm)
    return orch


def test_device_host_killed_mid_round_is_a_failure_and_rejoins(ray_session, tmp_path):
    scenario = load_scenario(ROOT / "examples" / "quickstart.yaml")
    exporter = MetricsExporter("127.0.0.1:0", strict=True).start()
    out = tmp_path / "run"
    try:
        orch = killing_run(scenario, RunOptions(out_dir=out, progress=False, event_sinks=(exporter.observe,)),
                           round_=3, pick=lambda f: ("host1", f.hosts[1]), restart=True)
        summary = orch.run()
        with urllib.request.urlopen(exporter.url, timeout=5) as resp:
            text = resp.read().decode()
    finally:
        exporter.stop()
    log = events(out)
    lost = {d for d, h in orch.fleet.host_of.items() if h == 1}
    failures = [e for e in log if e["event"] == "failure" and e["kind"] == "device"]
    assert failures and {e["entity"] for e in failures} <= lost and all(e["round"] == 3 for e in failures)
    rounds = [e for e in log if e["event"] == "round_end"]
    assert [e["round"] for e in rounds] == list(range(1, scenario.training.rounds + 1))
    assert rounds[2]["failures"] >= 1
    # The others trained that round; the lost host's devices came back in a later period.
    assert rounds[2]["samples"] > 0
    assert any(e["event"] == "rejoin" and e["entity"] == "host1" for e in log)
    assert rounds[-1]["failures"] == 0 and rounds[-1]["samples"] == rounds[0]["samples"]
    scraped = {(s.name, frozenset(s.labels.items())): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    assert scraped[("tierflow_failures_total", frozenset({("kind", "device")}))] == len(failures)
    assert summary["final_accuracy"] >= scenario.training.target_accuracy


@pytest.mark.parametrize("edge_hosts", [3, 1], ids=["own-process", "shared-process"])
def test_edge_killed_mid_round_rehomes_its_devices_and_loses_no_round(ray_session, tmp_path, edge_hosts):
    """Killing a process kills every logical edge in it, so with its own process edge-a's actor is
    killed; sharing one with edge-b and edge-c, edge-a alone is killed inside it and they go on."""
    scenario = load_scenario(ROOT / "examples" / "quickstart.yaml")
    from dataclasses import replace

    # A dead edge is noticed when a step to it goes unanswered: keep that short in a test.
    scenario = replace(scenario, policy=replace(scenario.policy, step_timeout_s=2.0),
                       execution=replace(scenario.execution, edge_hosts=edge_hosts))
    out = tmp_path / "run"
    orch = killing_run(scenario, RunOptions(out_dir=out, progress=False), round_=2,
                       pick=lambda f: ("edge-a", f.edges["edge-a"]), restart=False, logical=edge_hosts == 1)
    summary = orch.run()
    log = events(out)
    on_a = {d.name for d in scenario.devices if d.edge == "edge-a"}
    assert any(e["event"] == "failure" and e["kind"] == "edge" and e["entity"] == "edge-a" for e in log)
    rehomed = {e["device"]: e["to_edge"] for e in log if e["event"] == "rehome"}
    # No other edge covers edge-a's devices in the quickstart: the cloud serves them.
    assert rehomed == {d: "@cloud" for d in on_a}
    assert all(orch.state.session_at[d] != "edge-a" for d in on_a)
    rounds = [e for e in log if e["event"] == "round_end"]
    assert [e["round"] for e in rounds] == list(range(1, scenario.training.rounds + 1))
    # Every device trained in every round: the re-homed ones redid their period at the new edge.
    assert all(e["samples"] == rounds[0]["samples"] for e in rounds)
    assert rounds[-1]["devices_per_edge"]["edge-a"] == 0
    assert summary["final_accuracy"] >= scenario.training.target_accuracy
