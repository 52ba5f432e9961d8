"""deploy/: the committed dashboard is the generator's output and only names exposed metrics; the
Prometheus, Grafana, docker-compose, Ray and KubeRay files parse and say what we rely on."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from event_samples import sample_events

from tierflow.orchestrator.metrics import MetricsExporter

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
METRIC_RE = re.compile(r"\btierflow_[A-Za-z0-9_:]*")
LEGEND_LABEL_RE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
# Exposed but deliberately not on the dashboard.
NOT_ON_DASHBOARD = {
    "tierflow_run_devices",  # the "Devices attached" stat shows who is attached, not the scenario size
    "tierflow_exporter_bad_events_total",  # exporter health, only present after a malformed event
}


def load_generator():
    spec = importlib.util.spec_from_file_location("tierflow_dashboard", DEPLOY / "grafana" / "dashboard.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is built
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def gen():
    return load_generator()


@pytest.fixture(scope="module")
def dashboard():
    return json.loads((DEPLOY / "grafana" / "dashboards" / "tierflow.json").read_text())


@pytest.fixture(scope="module")
def exposed() -> dict[str, set[str]]:
    """Sample (series) name → label names, from an exporter fed a sample run."""
    m = MetricsExporter("127.0.0.1:0", strict=True)
    for e in sample_events():
        m.observe(e)
    out: dict[str, set[str]] = {}
    for family in m.registry.collect():
        for s in family.samples:
            out.setdefault(s.name, set()).update(s.labels)
    return out


def test_committed_json_is_the_generated_json(gen):
    pytest.importorskip("grafana_foundation_sdk", reason="the generator's builders need Python >= 3.11")
    committed = (DEPLOY / "grafana" / "dashboards" / "tierflow.json").read_text()
    assert committed == gen.render(), "stale dashboard JSON: run python deploy/grafana/dashboard.py"
    assert gen.main(["--check"]) == 0


def test_committed_json_round_trips_through_grafanas_schema_types(dashboard):
    """The SDK's models are generated from Grafana's dashboard schema: a dashboard, panel or variable
    field the schema does not know is dropped, so the JSON would not come back unchanged (query
    fields are open in the schema and pass either way)."""
    pytest.importorskip("grafana_foundation_sdk", reason="needs Python >= 3.11")
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models.dashboard import Dashboard

    assert json.loads(json.dumps(Dashboard.from_json(dashboard), cls=JSONEncoder)) == dashboard


def test_every_expression_names_only_exposed_metrics(gen, dashboard, exposed):
    exprs = gen.expressions(dashboard)
    assert len(exprs) >= 25
    for title, expr in exprs:
        used = METRIC_RE.findall(expr)
        assert used, f"{title}: {expr} names no tierflow metric"
        for name in used:
            assert name in exposed, f"panel {title!r}: {name} is not exposed (have {sorted(exposed)})"


def test_legends_use_labels_the_metrics_carry(dashboard, exposed):
    for panel in dashboard["panels"]:
        for t in panel.get("targets", []):
            labels = set().union(*(exposed[n] for n in METRIC_RE.findall(t["expr"])))
            for lab in LEGEND_LABEL_RE.findall(t["legendFormat"]):
                assert lab in labels, f"panel {panel['title']!r}: legend {{{{{lab}}}}} not in {labels}"


def test_every_metric_is_on_the_dashboard(gen, dashboard, exposed):
    used = {n for _, e in gen.expressions(dashboard) for n in METRIC_RE.findall(e)}
    families = {re.sub(r"_(bucket|sum|count|created)$", "", n) for n in exposed if not n.endswith("_created")}
    on_board = {re.sub(r"_(bucket|sum|count)$", "", n) for n in used}
    missing = {f for f in families if f not in on_board and f not in NOT_ON_DASHBOARD}
    assert not missing, f"exposed but not on the dashboard: {sorted(missing)}"


def test_dashboard_shape(dashboard):
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert dashboard["uid"] == "tierflow-main"
    assert dashboard["templating"]["list"][0]["type"] == "datasource"
    titles = {p["title"] for p in dashboard["panels"]}
    for want in ("Accuracy", "Loss", "Accuracy vs virtual time", "Round duration", "Compute per tier",
                 "Bytes per link", "Devices per edge", "Devices per ring", "Devices per split",
                 "Handovers and migrations", "Migration bytes", "Migration duration", "Failures by kind",
                 "Virtual time"):
        assert want in titles
    for p in dashboard["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        for t in p.get("targets", []):
            # Grafana variables only where a range goes.
            for m in re.finditer(r"\$__\w+", t["expr"]):
                assert t["expr"][m.start() - 1] == "[", f"{p['title']}: {t['expr']}"


# -- Prometheus, Grafana provisioning, docker-compose ----------------------------------------------

def test_prometheus_config():
    cfg = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    ray_files = [f for sd in jobs["ray"]["file_sd_configs"] for f in sd["files"]]
    assert ray_files == ["/tmp/ray/prom_metrics_service_discovery.json"]
    tf_files = [f for sd in jobs["tierflow"]["file_sd_configs"] for f in sd["files"]]
    targets = json.loads((DEPLOY / "prometheus" / tf_files[0]).read_text())
    assert targets[0]["targets"] == ["host.docker.internal:9464"]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (apt-get install prometheus)")
def test_promtool_check_config():
    out = subprocess.run(["promtool", "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_grafana_provisioning():
    ds = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    prov = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "tierflow.yml").read_text())
    (provider,) = prov["providers"]
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    # The provider's path is where compose mounts the generated dashboards.
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in compose["services"]["grafana"]["volumes"]
                  if v.startswith("./"))
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]


def test_docker_compose():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) >= {"prometheus", "grafana"}
    assert "host.docker.internal:host-gateway" in services["prometheus"]["extra_hosts"]
    for svc in services.values():
        for v in svc.get("volumes", []):
            src = v.split(":", 1)[0]
            if src.startswith("./"):
                assert (DEPLOY / src).exists(), f"compose mounts missing {src}"
    mounts = {v.split(":")[1]: v.split(":")[0] for v in services["prometheus"]["volumes"] if ":" in v}
    assert mounts["/tmp/ray"] == "/tmp/ray"
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]
    assert mounts["/etc/prometheus"] == "./prometheus"


# -- Ray cluster launcher and KubeRay -------------------------------------------------------------

TIER_RESOURCES = {"cloud": "tierflow_cloud", "edge": "tierflow_edge", "device": "tierflow_device"}


def test_ray_cluster_yaml():
    cfg = yaml.safe_load((DEPLOY / "ray" / "cluster.yaml").read_text())
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    for node_type, resource in TIER_RESOURCES.items():
        assert types[node_type]["resources"][resource] >= 1
    jsonschema = pytest.importorskip("jsonschema")
    import ray

    schema_path = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
    if not schema_path.exists():
        pytest.skip(f"{schema_path} not shipped with this Ray")
    jsonschema.validate(cfg, json.loads(schema_path.read_text()))


def test_kuberay_raycluster_yaml():
    rc = yaml.safe_load((DEPLOY / "kuberay" / "raycluster.yaml").read_text())
    assert rc["apiVersion"].startswith("ray.io/") and rc["kind"] == "RayCluster"
    assert "headGroupSpec" in rc["spec"]
    groups = {g["groupName"]: g for g in rc["spec"]["workerGroupSpecs"]}
    assert set(groups) == set(TIER_RESOURCES)
    for name, resource in TIER_RESOURCES.items():
        # KubeRay passes the value to `ray start --resources=...` verbatim: a quoted JSON string.
        raw = groups[name]["rayStartParams"]["resources"]
        parsed = json.loads(json.loads(raw))
        assert parsed[resource] >= 1
        assert groups[name]["template"]["spec"]["containers"]


def test_generator_runs_as_a_script(tmp_path):
    pytest.importorskip("grafana_foundation_sdk", reason="the generator's builders need Python >= 3.11")
    out = tmp_path / "d.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, str(DEPLOY / "grafana" / "dashboard.py"), "--out", str(out)],
                   check=True, env=env, capture_output=True, timeout=60)
    assert out.read_text() == (DEPLOY / "grafana" / "dashboards" / "tierflow.json").read_text()
