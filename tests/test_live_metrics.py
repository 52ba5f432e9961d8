"""A real run, scraped live by a real Prometheus; and a poisoned device that cannot corrupt the model.

The run moves a device between edges (a migration), and one device holds a NaN image, so its
updates are rejected as poisoned (failures). Every dashboard query must return data except the
ring and re-plan panels, which need policies this run does not use (the synthetic stream in
test_prometheus_integration.py covers those).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from test_migration_run import TRACE
from test_prometheus_integration import (  # noqa: F401  (exporter, prometheus: fixtures)
    DASHBOARD,
    PROMETHEUS,
    concrete,
    exporter,
    has_finite_value,
    prometheus,
    query,
)

from tierflow.orchestrator.runner import RunOptions, run_scenario
from tierflow.orchestrator.scenario import parse_scenario

NOT_EXERCISED = ("ring", "re-plan")


def poisoned_moving_scenario(tmp_path: Path):
    trace = tmp_path / "trace.csv"
    trace.write_text(TRACE)
    return parse_scenario({
        "name": "live",
        "cloud": {"flops_per_s": 1e12},
        "edges": [{"name": "e0", "position": [0, 0], "radius_m": 1200, "flops_per_s": 1e11},
                  {"name": "e1", "position": [1000, 0], "radius_m": 600, "flops_per_s": 1e11}],
        "devices": [{"name": f"d{i}", "position": [50 + 10 * i, 0], "flops_per_s": 1e9, "bandwidth_mbps": 20}
                    for i in range(4)],
        "model": {"name": "vgg5"},
        "dataset": {"name": "nan_digits:digits_with_one_nan"},
        "training": {"rounds": 10, "local_steps": 5, "batch_size": 32, "seed": 0,
                     "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}},
        "split": ["pool1"],
        "mobility": {"model": "trace", "trace": str(trace), "round_duration_s": 100, "check_every_steps": 5},
    }, "live.yaml")


@pytest.mark.ray
def test_poisoned_device_is_rejected_and_the_model_stays_finite(ray_session, tmp_path):
    summary = run_scenario(poisoned_moving_scenario(tmp_path), RunOptions(out_dir=tmp_path, progress=False))
    events = [json.loads(x) for x in (tmp_path / "events.jsonl").read_text().splitlines()]
    poisoned = [e for e in events if e["event"] == "failure" and e["kind"] == "poisoned_update"]
    assert poisoned and len({e["entity"] for e in poisoned}) == 1
    state = torch.load(tmp_path / "model.pt")
    assert all(torch.isfinite(v.float()).all() for v in state.values())
    assert summary["final_accuracy"] > 0.5  # still learning (chance is 0.1); ten short rounds, not a target


def wait_for_a_scrape(base_url: str, after: float, timeout_s: float = 10.0) -> None:
    """Block until Prometheus has scraped the exporter at a time later than ``after`` (epoch seconds)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = query(base_url, 'timestamp(up{job="tierflow"})')
        if result and float(result[0]["value"][1]) > after:
            return
        time.sleep(0.1)
    pytest.fail(f"prometheus did not scrape the exporter within {timeout_s} s")


def scrape_paced(base_url: str, observe):
    """An event sink that lets Prometheus scrape after the run starts and after every round.

    rate() over a window needs a counter to change between two scrapes. A short run can finish
    between two 1 s scrapes, which no dashboard user sees (their rounds last longer than the
    scrape interval); pacing on real scrapes gives every run that timeline, however fast it is.
    """
    def sink(event) -> None:
        observe(event)
        if event["event"] in ("run_start", "round_end"):
            wait_for_a_scrape(base_url, after=time.time())
    return sink


@pytest.mark.ray
@pytest.mark.skipif(PROMETHEUS is None, reason="the prometheus binary is not installed (CI installs it)")
def test_dashboard_queries_have_data_from_a_real_run(ray_session, tmp_path, prometheus, exporter):  # noqa: F811
    run_scenario(poisoned_moving_scenario(tmp_path),
                 RunOptions(out_dir=tmp_path, progress=False,
                            event_sinks=(scrape_paced(prometheus, exporter.observe),)))
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [(p["title"], concrete(t["expr"])) for p in dashboard["panels"] if p.get("type") != "row"
             for t in p.get("targets", [])
             if not any(word in p["title"].lower() for word in NOT_EXERCISED)]
    deadline = time.monotonic() + 20
    while True:
        time.sleep(1.0)
        failing = {f"{title}: {expr}": r for title, expr in exprs
                   if not has_finite_value(r := query(prometheus, expr))}
        if not failing or time.monotonic() > deadline:
            break
    assert not failing, "queries without data:\n" + "\n".join(failing)
    assert float(query(prometheus, "sum(tierflow_migrations_total{ok=\"true\"})")[0]["value"][1]) == 1
