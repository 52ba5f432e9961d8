"""The tierflow Grafana dashboard as code: a few small dataclasses that emit Grafana's JSON.

    python deploy/grafana/dashboard.py            # writes deploy/grafana/dashboards/tierflow.json
    python deploy/grafana/dashboard.py --check    # exit 1 if the committed JSON is stale

The panels are described by the dataclasses below; Grafana Labs' builders (grafana-foundation-sdk,
pinned to the Grafana version deploy/docker-compose.yml runs) turn them into Grafana's JSON.
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


# -- JSON, through Grafana Labs' own builders (grafana-foundation-sdk) ----------------------------

def _sdk():
    """The SDK's modules; a missing SDK is one sentence, not an ImportError deep in a builder."""
    try:
        from grafana_foundation_sdk.builders import common as bc
        from grafana_foundation_sdk.builders import dashboard as bd
        from grafana_foundation_sdk.builders import prometheus as bp
        from grafana_foundation_sdk.builders import stat as bs
        from grafana_foundation_sdk.builders import timeseries as bt
        from grafana_foundation_sdk.builders import xychart as bx
        from grafana_foundation_sdk.models import common as mc
        from grafana_foundation_sdk.models import dashboard as md
    except ImportError as exc:
        raise SystemExit(f"{__file__}: needs grafana-foundation-sdk (Python >= 3.11): pip install -e '.[dev]'"
                         f" ({exc})") from exc
    return bc, bd, bp, bs, bt, bx, mc, md


def _panel_builder(p: Panel, pid: int):
    bc, _, bp, bs, bt, bx, mc, md = _sdk()
    source = md.DataSourceRef(type_val=DATASOURCE["type"], uid=DATASOURCE["uid"])
    legend = bc.VizLegendOptions().display_mode(mc.LegendDisplayMode.LIST).placement(
        mc.LegendPlacement.BOTTOM).show_legend(True)
    if p.kind == "timeseries":
        b = (bt.Panel().draw_style(mc.GraphDrawStyle.LINE).line_width(1).fill_opacity(10 if p.stack else 0)
             .show_points(mc.VisibilityMode.NEVER).span_nulls(True)
             .stacking(bc.StackingConfig().mode(mc.StackingMode.NORMAL if p.stack else mc.StackingMode.NONE)
                       .group("A"))
             .legend(legend).tooltip(bc.VizTooltipOptions().mode(mc.TooltipDisplayMode.MULTI)
                                     .sort(mc.SortOrder.DESCENDING)))
    elif p.kind == "stat":
        named = "{{" in p.targets[0].legend
        b = (bs.Panel().reduce_options(bc.ReduceDataOptions().calcs(["lastNotNull"]).fields("").values(False))
             .color_mode(mc.BigValueColorMode.NONE).graph_mode(mc.BigValueGraphMode.NONE)
             .text_mode(mc.BigValueTextMode.NAME if named else mc.BigValueTextMode.AUTO))
    elif p.kind == "xychart":
        # Join the two queries on time; in "auto" mode the first numeric field (virtual time) is x.
        b = (bx.Panel().series_mapping("auto").dims(bx.XYDimensionConfig().frame(0)).legend(legend)
             .show("points+lines").point_size(bc.ScaleDimensionConfig().fixed(4))
             .with_transformation(md.DataTransformerConfig(id_val="joinByField",
                                                           options={"byField": "Time", "mode": "outer"}))
             .with_transformation(md.DataTransformerConfig(id_val="organize",
                                                           options={"excludeByName": {"Time": True}})))
    else:
        raise ValueError(f"panel {p.title!r}: unknown kind {p.kind!r}")
    b = b.id(pid).title(p.title).description(p.description).datasource(source).height(p.height)
    b = b.span(p.width).unit(p.unit)
    if p.min is not None:
        b = b.min(p.min)
    if p.max is not None:
        b = b.max(p.max)
    for i, t in enumerate(p.targets):
        q = bp.Dataquery().expr(t.expr).legend_format(t.legend or "__auto").ref_id(chr(ord("A") + i))
        b = b.with_target((q.instant() if t.instant else q).datasource(source))
    return b


def to_json(d: Dashboard) -> dict:
    """The dashboard as Grafana's JSON. The builders lay panels out left to right, wrapping at the
    grid's width, each row starting below the tallest panel above."""
    from grafana_foundation_sdk.cog.encoder import JSONEncoder

    _, bd, _, _, _, _, _, md = _sdk()
    b = (bd.Dashboard(d.title).uid(d.uid).description(d.description).tags(list(d.tags)).editable()
         .tooltip(md.DashboardCursorSync.CROSSHAIR).refresh(d.refresh).time(d.time_from, "now").timezone("")
         .version(1)
         .with_variable(bd.DatasourceVariable("datasource").label("Data source").type("prometheus")
                        .hide(md.VariableHide.DONT_HIDE)))
    pid = 1
    for row in d.rows:
        b = b.with_row(bd.Row(row.title).id(pid))
        pid += 1
        for p in row.panels:
            b = b.with_panel(_panel_builder(p, pid))
            pid += 1
    out = json.loads(json.dumps(b.build(), cls=JSONEncoder))
    for panel in out["panels"]:
        g = panel["gridPos"]
        if g["x"] + g["w"] > GRID_WIDTH:  # the builders wrap only after a row is full: widths must add up
            raise ValueError(f"panel {panel['title']!r} overflows the {GRID_WIDTH}-column grid; fix the row's widths")
    out.update(d.extra)
    return out


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
