"""Every dashboard query against a real Prometheus that scraped the exporter during a run.

Starts the `prometheus` binary (Debian package; CI installs it) on a free loopback port with a 1 s
scrape interval, feeds the exporter an event stream over a few seconds, then runs each panel's
PromQL through /api/v1/query and expects data.
"""

from __future__ import annotations

import json
import math
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from event_samples import sample_events

from tierflow.orchestrator.metrics import MetricsExporter

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "tierflow.json"
PROMETHEUS = shutil.which("prometheus")
FEED_SECONDS = 8.0
# Grafana variables → concrete values for a run a few seconds long.
GRAFANA_VARS = {"$__rate_interval": "1m", "$__range": "5m", "$__interval": "5s"}

pytestmark = pytest.mark.skipif(
    PROMETHEUS is None, reason="the prometheus binary is not installed (apt-get install prometheus; CI does)"
)


@pytest.fixture
def metrics_events() -> list[dict]:
    """The event stream to scrape. Swap for a real short run's events.jsonl when one is cheap enough."""
    return sample_events(rounds=10, edges=("edge-a", "edge-b", "edge-c"), devices=6)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, timeout: float = 5) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


@pytest.fixture
def exporter():
    m = MetricsExporter("127.0.0.1:0", strict=True).start()
    yield m
    m.stop()


@pytest.fixture
def prometheus(tmp_path, exporter):
    """A Prometheus server scraping ``exporter`` every second; yields its base URL."""
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: tierflow\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{exporter.port}']\n"
    )
    log = (tmp_path / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"prometheus exited with {proc.returncode}: {(tmp_path / 'prometheus.log').read_text()}")
            try:
                with urllib.request.urlopen(f"{base}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError):
                pass
            if time.monotonic() > deadline:
                pytest.fail("prometheus did not become ready in 30 s")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def feed(exporter: MetricsExporter, events: list[dict], seconds: float) -> threading.Thread:
    """Observe events in a background thread, paced so each round spans about one scrape."""
    rounds = max(1, sum(e["event"] == "round_end" for e in events))
    pause = seconds / (rounds + 1)

    def run():
        for e in events:
            exporter.observe(e)
            if e["event"] in ("run_start", "round_end"):
                time.sleep(pause)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def concrete(expr: str) -> str:
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    return expr


def query(base: str, expr: str) -> list[dict]:
    body = get_json(f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    assert body["status"] == "success", body
    return body["data"]["result"]


def has_finite_value(result: list[dict]) -> bool:
    return any(math.isfinite(float(r["value"][1])) for r in result)


def test_every_dashboard_query_returns_data(prometheus, exporter, metrics_events):
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [
        (p["title"], concrete(t["expr"]))
        for p in dashboard["panels"] if p.get("type") != "row"
        for t in p.get("targets", [])
    ]
    assert exprs

    feeder = feed(exporter, metrics_events, FEED_SECONDS)
    feeder.join(timeout=FEED_SECONDS + 10)
    assert not feeder.is_alive()

    # Prometheus needs a scrape or two after the last event; retry until every query has a finite value.
    deadline = time.monotonic() + 20
    while True:
        time.sleep(1.0)
        failing = {}
        for title, expr in exprs:
            result = query(prometheus, expr)
            if not result or not has_finite_value(result):
                failing[f"{title}: {expr}"] = result
        if not failing or time.monotonic() > deadline:
            break
    assert not failing, "queries without (finite) data:\n" + "\n".join(f"{k} -> {v}" for k, v in failing.items())

    # And the values are the run's, not just present.
    last = [e for e in metrics_events if e["event"] == "round_end"][-1]
    assert float(query(prometheus, "tierflow_round")[0]["value"][1]) == last["round"]
    handovers = sum(e["event"] == "handover" for e in metrics_events)
    assert float(query(prometheus, "sum(tierflow_handovers_total)")[0]["value"][1]) == handovers
    targets = get_json(f"{prometheus}/api/v1/targets")["data"]["activeTargets"]
    assert [t["health"] for t in targets] == ["up"]
