"""The tierflow Grafana dashboard as code: a few small dataclasses that emit Grafana's JSON.

    python deploy/grafana/dashboard.py            # writes deploy/grafana/dashboards/tierflow.json
    python deploy/grafana/dashboard.py --check    # exit 1 if the committed JSON is stale

Edit the panels here, never the JSON. tests/test_dashboard.py checks the committed file is what
this produces and that every expression names only metrics the exporter exposes;
tests/test_prometheus_integration.py runs every expression against a real Prometheus.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

OUT = Path(__file__).resolve().parent / "dashboards" / "tierflow.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
GRID_WIDTH = 24
RI = "$__rate_interval"


@dataclass(frozen=True)
class Target:
    expr: str
    legend: str = ""
    instant: bool = False


@dataclass(frozen=True)
class Panel:
    title: str
    description: str
    targets: tuple[Target, ...]
    unit: str = "short"
    kind: str = "timeseries"  # timeseries | stat | xychart
    stack: bool = False
    width: int = 8
    height: int = 8
    min: float | None = None
    max: float | None = None


@dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[Panel, ...]


@dataclass(frozen=True)
class Dashboard:
    title: str
    uid: str
    description: str
    rows: tuple[Row, ...]
    tags: tuple[str, ...] = ("tierflow",)
    refresh: str = "5s"
    time_from: str = "now-30m"
    extra: dict = field(default_factory=dict)


def quantiles(metric: str, by: str = "", qs=(0.5, 0.95)) -> tuple[Target, ...]:
    """histogram_quantile targets over a histogram's buckets, one per quantile."""
    group = f"le, {by}" if by else "le"
    suffix = f" {{{{{by}}}}}" if by else ""
    return tuple(
        Target(
            f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket[{RI}])))",
            f"p{round(q * 100)}{suffix}",
        )
        for q in qs
    )


def stat(title: str, description: str, expr: str, unit: str = "short", legend: str = "", height: int = 4) -> Panel:
    return Panel(title, description, (Target(expr, legend, instant=True),), unit=unit, kind="stat", width=4,
                 height=height)


TIERFLOW = Dashboard(
    title="tierflow",
    uid="tierflow-main",
    description="Split-federated training across device, edge and cloud tiers (metrics from the orchestrator).",
    rows=(
        Row("Overview", (
            stat("Round", "Last completed round.", "tierflow_round"),
            stat("Accuracy", "Evaluation accuracy after the last round.", "tierflow_accuracy_ratio",
                 unit="percentunit"),
            stat("Virtual time", "The run's emulated clock (equals wall time in real mode).",
                 "tierflow_virtual_time_seconds", unit="s"),
            stat("Devices attached", "Devices attached to some edge server.", "sum(tierflow_edge_devices)"),
            stat("Failures", "All failures since the orchestrator started.", "sum(tierflow_failures_total)"),
            stat("Run", "Scenario, clock and migration policy of the current run.",
                 "tierflow_run_info * on() group_left tierflow_run_running",
                 legend="{{scenario}} ({{time_mode}}, {{policy}})"),
        )),
        Row("Training progress", (
            Panel("Accuracy", "Evaluation accuracy after each round.",
                  (Target("tierflow_accuracy_ratio", "accuracy"),), unit="percentunit", min=0, max=1),
            Panel("Loss", "Evaluation loss and mean training loss per round.",
                  (Target("tierflow_loss", "eval loss"), Target("tierflow_train_loss", "train loss"))),
            Panel("Accuracy vs virtual time",
                  "Accuracy (y) against the run's emulated clock (x): time to accuracy as the run sees it.",
                  (Target("tierflow_virtual_time_seconds", "virtual time"),
                   Target("tierflow_accuracy_ratio", "accuracy")),
                  kind="xychart", unit="percentunit"),
            Panel("Samples trained per second", "Training throughput, over wall time.",
                  (Target(f"rate(tierflow_samples_total[{RI}])", "samples/s"),), unit="short"),
            Panel("Round duration", "Round duration quantiles and mean, in the run's clock.",
                  quantiles("tierflow_round_duration_seconds") + (
                      Target(f"rate(tierflow_round_duration_seconds_sum[{RI}])"
                             f" / rate(tierflow_round_duration_seconds_count[{RI}])", "mean"),), unit="s"),
            Panel("Clocks", "Virtual and wall time since run start; the slope of virtual time is the emulation "
                  "speed-up.",
                  (Target("tierflow_virtual_time_seconds", "virtual"), Target("tierflow_wall_time_seconds", "wall"),
                   Target(f"deriv(tierflow_virtual_time_seconds[{RI}])", "virtual s per wall s")), unit="s"),
        )),
        Row("Compute and network", (
            Panel("Compute per tier", "Compute seconds summed over each tier's workers (run clock), cumulative.",
                  (Target("sum by (tier) (tierflow_compute_seconds_total)", "{{tier}}"),), unit="s"),
            Panel("Compute share by tier", "Each tier's share of recent compute time.",
                  (Target(f"sum by (tier) (rate(tierflow_compute_seconds_total[{RI}]))"
                          f" / scalar(sum(rate(tierflow_compute_seconds_total[{RI}])))", "{{tier}}"),),
                  unit="percentunit", stack=True, min=0, max=1),
            Panel("Bytes per link", "Transfer rate per link and direction (per wall second).",
                  (Target(f"sum by (link, direction) (rate(tierflow_link_bytes_total[{RI}]))",
                          "{{link}} {{direction}}"),), unit="Bps"),
        )),
        Row("Topology and placement", (
            Panel("Devices per edge", "Devices attached to each edge server.",
                  (Target("sum by (edge) (tierflow_edge_devices)", "{{edge}}"),), stack=True, width=6),
            Panel("Devices per ring", "Capability ring sizes (empty when rings are off).",
                  (Target("sum by (ring) (tierflow_ring_devices)", "ring {{ring}}"),), stack=True, width=6),
            Panel("Devices per split", "Placement: devices per split d<device nodes>_e<edge nodes>_c<cloud nodes>.",
                  (Target("sum by (split) (tierflow_placement_devices)", "{{split}}"),), stack=True, width=6),
            Panel("Mean nodes per tier", "Graph nodes placed on each tier, averaged over devices.",
                  (Target("tierflow_placement_mean_nodes", "{{tier}}"),), width=6),
        )),
        Row("Mobility", (
            Panel("Handovers and migrations", "Handovers and migrations (by policy and outcome) per interval.",
                  (Target(f"sum(increase(tierflow_handovers_total[{RI}]))", "handovers"),
                   Target(f"sum by (policy, ok) (increase(tierflow_migrations_total[{RI}]))",
                          "migrations {{policy}} ok={{ok}}")), width=6),
            stat("Handovers", "Handovers since the orchestrator started.", "sum(tierflow_handovers_total)", height=8),
            stat("Migrations", "Migrations that completed.", 'sum(tierflow_migrations_total{ok="true"})',
                 height=8),
            Panel("Migration bytes", "Session bytes moved edge to edge, per wall second.",
                  (Target(f"sum by (policy) (rate(tierflow_migration_bytes_total[{RI}]))", "{{policy}}"),),
                  unit="Bps", width=5),
            Panel("Migration duration", "Time to move a session edge to edge.",
                  quantiles("tierflow_migration_duration_seconds", by="policy", qs=(0.5, 0.95, 0.99)),
                  unit="s", width=5),
            Panel("Ring passes", "A ring's session passed edge to edge to its next member, per interval "
                  "(rings only; not handovers).",
                  (Target(f"sum by (ok) (increase(tierflow_ring_passes_total[{RI}]))", "passes ok={{ok}}"),),
                  width=12),
            Panel("Ring pass bytes", "Ring session bytes passed edge to edge, per wall second.",
                  (Target(f"sum(rate(tierflow_ring_pass_bytes_total[{RI}]))", "bytes"),), unit="Bps", width=12),
        )),
        Row("Failures and re-plans", (
            Panel("Failures by kind", "Failures per interval: device, edge, poisoned_update, migration.",
                  (Target(f"sum by (kind) (increase(tierflow_failures_total[{RI}]))", "{{kind}}"),), stack=True),
            Panel("Failures (total)", "Failures since the orchestrator started, by kind.",
                  (Target("sum by (kind) (tierflow_failures_total)", "{{kind}}"),)),
            Panel("Re-plans", "Placement re-plans and the devices whose split they changed.",
                  (Target(f"sum(increase(tierflow_replans_total[{RI}]))", "re-plans"),
                   Target(f"sum(increase(tierflow_replan_changed_devices_total[{RI}]))", "devices changed"))),
            Panel("Refused messages", "Messages the data plane and migration ports refused per interval, by port "
                  "and reason (malformed, unauthenticated, replayed, oversize, busy): hostile or misconfigured peers.",
                  (Target(f"sum by (port, reason) (increase(tierflow_refused_messages_total[{RI}]))",
                          "{{port}} {{reason}}"),), stack=True, width=24),
        )),
    ),
)


# -- JSON ---------------------------------------------------------------------------------------

def _target_json(t: Target, ref: str) -> dict:
    out = {"datasource": DATASOURCE, "expr": t.expr, "legendFormat": t.legend or "__auto", "refId": ref}
    if t.instant:
        out.update(instant=True, range=False)
    return out


def _panel_json(p: Panel, pid: int, x: int, y: int) -> dict:
    defaults: dict = {"unit": p.unit}
    if p.min is not None:
        defaults["min"] = p.min
    if p.max is not None:
        defaults["max"] = p.max
    out: dict = {
        "id": pid,
        "type": p.kind,
        "title": p.title,
        "description": p.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": p.height, "w": p.width, "x": x, "y": y},
        "targets": [_target_json(t, chr(ord("A") + i)) for i, t in enumerate(p.targets)],
    }
    if p.kind == "timeseries":
        defaults["custom"] = {
            "drawStyle": "line", "lineWidth": 1, "fillOpacity": 10 if p.stack else 0, "showPoints": "never",
            "spanNulls": True, "stacking": {"mode": "normal" if p.stack else "none", "group": "A"},
        }
        out["options"] = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                          "tooltip": {"mode": "multi", "sort": "desc"}}
    elif p.kind == "stat":
        out["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                          "colorMode": "none", "graphMode": "none", "textMode": "auto"}
        if "{{" in p.targets[0].legend:
            out["options"]["textMode"] = "name"
    elif p.kind == "xychart":
        # Join the two queries on time; in "auto" mode the first numeric field (virtual time) is x.
        out["transformations"] = [{"id": "joinByField", "options": {"byField": "Time", "mode": "outer"}},
                                  {"id": "organize", "options": {"excludeByName": {"Time": True}}}]
        out["options"] = {"seriesMapping": "auto", "dims": {"frame": 0},
                          "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}}
        defaults["custom"] = {"show": "points+lines", "pointSize": {"fixed": 4}}
    else:
        raise ValueError(f"panel {p.title!r}: unknown kind {p.kind!r}")
    out["fieldConfig"] = {"defaults": defaults, "overrides": []}
    return out


def to_json(d: Dashboard) -> dict:
    panels: list[dict] = []
    pid = 1
    y = 0
    for row in d.rows:
        panels.append({"id": pid, "type": "row", "title": row.title, "collapsed": False,
                       "gridPos": {"h": 1, "w": GRID_WIDTH, "x": 0, "y": y}, "panels": []})
        pid += 1
        y += 1
        x = 0
        row_h = 0
        for p in row.panels:
            if x + p.width > GRID_WIDTH:
                x, y, row_h = 0, y + row_h, 0
            panels.append(_panel_json(p, pid, x, y))
            pid += 1
            x += p.width
            row_h = max(row_h, p.height)
        y += row_h
    return {
        "title": d.title,
        "uid": d.uid,
        "description": d.description,
        "tags": list(d.tags),
        "editable": True,
        "graphTooltip": 1,
        "refresh": d.refresh,
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": d.time_from, "to": "now"},
        "timepicker": {},
        "timezone": "",
        "templating": {"list": [{
            "name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
            "current": {}, "hide": 0, "refresh": 1, "regex": "", "includeAll": False, "multi": False,
        }]},
        "annotations": {"list": []},
        "links": [],
        "panels": panels,
        **d.extra,
    }


def render(d: Dashboard = TIERFLOW) -> str:
    return json.dumps(to_json(d), indent=2) + "\n"


def expressions(dashboard_json: dict) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every query in a dashboard's JSON."""
    return [
        (p["title"], t["expr"])
        for p in dashboard_json["panels"] if p.get("type") != "row"
        for t in p.get("targets", [])
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--check", action="store_true", help="fail if --out differs from the generated JSON")
    args = ap.parse_args(argv)
    text = render()
    if args.check:
        if not args.out.exists() or args.out.read_text() != text:
            print(f"{args.out} is stale: run python deploy/grafana/dashboard.py", file=sys.stderr)
            return 1
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
