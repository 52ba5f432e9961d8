"""`tierflow compare`: variants derive the intended scenarios, the table and ratios are honest
about runs that miss the target, and one small real comparison writes its files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_runner import small_scenario

from orchestrator.cli import main
from orchestrator.compare import VARIANTS, Row, compare, markdown, migration_saving, parse_policies, summary_ratios
from orchestrator.errors import TierflowError
from orchestrator.scenario import load_scenario, parse_scenario
from orchestrator.world import build_world

ROOT = Path(__file__).resolve().parents[1]


def row(name: str, ttt: float | None, acc: float = 0.9) -> Row:
    links = {"device-edge": 1000, "edge-cloud": 0}
    return Row(name, ttt, acc, 5, 10.0, 3.0, links, links, 0, 0, 0, [(1.0, 0.5), (2.0, acc)])


def test_variants_derive_the_scenarios_they_name():
    city = load_scenario(ROOT / "examples" / "city.yaml")
    assert len(city.devices) >= 50 and len(city.edges) == 4
    speeds = [d.flops_per_s for d in city.devices]
    assert max(speeds) / min(speeds) >= 10
    assert city.mobility.model == "random_waypoint" and city.dataset.partition == "dirichlet"
    device_only = VARIANTS["device-only"].derive(city)
    world = build_world(device_only)
    assert {k.n_tiers for k in world.splits.values()} == {1}  # every layer on the device
    assert VARIANTS["fixed"].derive(city).policy.placement == "fixed"
    assert VARIANTS["adaptive"].derive(city).policy.rings == "off"
    rings = VARIANTS["adaptive+rings"].derive(city)
    assert (rings.policy.placement, rings.policy.rings, rings.policy.handover) == ("adaptive", "auto", "migrate")
    assert VARIANTS["adaptive+rings+restart"].derive(city).policy.handover == "restart"
    assert VARIANTS["adaptive+rings+static"].derive(city).mobility.model == "static"


def test_ratios_say_why_when_a_run_missed_the_target():
    rows = {r.variant: r for r in [row("device-only", 40.0), row("adaptive", 10.0), row("adaptive+rings", None),
                                   row("adaptive+rings+restart", 12.0)]}
    ratios = summary_ratios(rows)
    assert ratios["device-only / adaptive"] == (4.0, "4.00")
    assert ratios["sync / rings"][0] is None and "adaptive+rings did not reach" in ratios["sync / rings"][1]
    assert "was not run" in ratios["fixed / adaptive"][1]
    saving = migration_saving({r.variant: r for r in [row("adaptive+rings+restart", 20.0), row("adaptive+rings", 14.0),
                                                       row("adaptive+rings+static", 12.0)]})
    assert saving == (0.75, "75%")  # restarting lost 8 s over not moving; migrating got 6 of them back
    table = markdown(list(rows.values()), 0.9)
    assert "| adaptive+rings | not reached |" in table and "1.0 KB / 1.0 KB" in table


def test_unknown_policy_is_a_clear_error_before_anything_runs(capsys):
    with pytest.raises(TierflowError, match="--policies: expected"):
        parse_policies("adaptive,teleport")
    assert main(["compare", str(ROOT / "examples" / "quickstart.yaml"), "--policies", "teleport"]) == 2
    assert "teleport" in capsys.readouterr().err


@pytest.mark.ray
def test_a_small_comparison_writes_its_table_json_and_plot(ray_session, tmp_path):
    spec = small_scenario("vgg5", ["pool1"], devices=4, edges=2, rounds=2, local_steps=2, cloud_every=1)
    scenario = parse_scenario(spec, "small.yaml")
    rows = compare(scenario, ["device-only", "fixed", "adaptive+rings"], tmp_path, progress=False)
    assert [r.variant for r in rows] == ["device-only", "fixed", "adaptive+rings"]
    doc = json.loads((tmp_path / "compare.json").read_text())
    assert [r["variant"] for r in doc["rows"]] == ["device-only", "fixed", "adaptive+rings"]
    by = {r["variant"]: r for r in doc["rows"]}
    assert by["device-only"]["bytes_up"]["device-edge"] > 0  # FedAvg still uploads the model
    # Device-only moves the whole model each period; a split moves activations and only its first layers.
    assert by["fixed"]["bytes_up"]["device-edge"] != by["device-only"]["bytes_up"]["device-edge"]
    assert all(len(r["curve"]) == 2 and 0 <= r["final_accuracy"] <= 1 for r in doc["rows"])
    assert (tmp_path / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| device-only |" in (tmp_path / "compare.md").read_text()
