"""`tierflow compare`: variants derive the scenarios they name, the table and ratios are honest
about runs that miss the target, unknown names fail before Ray, and one small real comparison
writes its files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tierflow.orchestrator.cli import main
from tierflow.orchestrator.compare import (
    VARIANTS,
    Row,
    compare,
    human_bytes,
    markdown,
    migration_saving,
    parse_policies,
    summary_ratios,
    to_json,
)
from tierflow.orchestrator.errors import TierflowError
from tierflow.orchestrator.profiles import profile_digest
from tierflow.orchestrator.scenario import load_scenario, parse_scenario
from tierflow.orchestrator.world import build_world
from tierflow.placement.profile import LayerProfile

ROOT = Path(__file__).resolve().parents[1]


def row(name: str, ttt: float | None, acc: float = 0.9, same_as: str | None = None) -> Row:
    return Row(name, ttt, None if ttt is None else 3, acc, 5, 10.0 if ttt is None else ttt + 5, 3.0,
               {"device-edge": 1500, "edge-cloud": 2_500_000}, {"device-edge": 999, "edge-cloud": 0}, 4, 3, 1,
               [(1.0, 0.5), (2.0, acc)], "p", same_as)


@pytest.fixture(scope="module")
def city():
    return load_scenario(ROOT / "examples" / "city.yaml")


def test_city_is_the_scenario_issue_5_asks_for(city):
    assert len(city.devices) >= 50 and len(city.edges) == 4
    speeds = [d.flops_per_s for d in city.devices]
    assert max(speeds) / min(speeds) >= 10
    assert len({d.edge for d in city.devices}) == 4  # every edge starts with devices
    assert city.mobility.model == "random_waypoint" and city.mobility.round_duration_s is not None
    assert city.mobility.check_every_steps is not None
    assert city.dataset.partition == "dirichlet" and city.model.name == "vgg5" and city.split
    assert 0.85 <= city.training.target_accuracy <= 0.9


def test_variants_derive_the_scenarios_they_name(city):
    device_only = VARIANTS["device-only"].derive(city)
    assert device_only.split == () and all(d.split is None for d in device_only.devices)
    world = build_world(device_only)
    assert {k.n_tiers for k in world.splits.values()} == {1}  # no cuts: every layer on the device
    assert {k.n_tiers for k in build_world(VARIANTS["fixed"].derive(city)).splits.values()} == {len(city.split) + 1}

    def policy(name):
        p = VARIANTS[name].derive(city).policy
        return p.placement, p.rings, p.handover

    assert policy("fixed") == ("fixed", "off", city.policy.handover)
    assert policy("fixed+migrate") == ("fixed", "off", "migrate")
    assert policy("fixed+restart") == ("fixed", "off", "restart")
    assert VARIANTS["fixed+static"].derive(city).mobility.model == "static"
    assert policy("adaptive") == ("adaptive", "off", city.policy.handover)
    assert policy("adaptive+rings") == ("adaptive", "auto", city.policy.handover)
    assert policy("adaptive+rings+migrate") == ("adaptive", "auto", "migrate")
    assert policy("adaptive+rings+restart") == ("adaptive", "auto", "restart")
    static = VARIANTS["adaptive+rings+static"].derive(city)
    assert static.mobility.model == "static" and static.mobility.check_every_steps == city.mobility.check_every_steps
    for v in VARIANTS.values():  # only policy (and, where named, the split or mobility) changes: same seeds and data
        sc = v.derive(city)
        assert (sc.training, sc.dataset, sc.edges, sc.aggregation) == (city.training, city.dataset, city.edges,
                                                                       city.aggregation)
        assert [(d.name, d.flops_per_s, d.position) for d in sc.devices] == \
               [(d.name, d.flops_per_s, d.position) for d in city.devices]
    # A scenario that already migrates derives one scenario for both names: compare runs it once.
    assert city.policy.handover == "migrate"
    assert VARIANTS["adaptive+rings"].derive(city) == VARIANTS["adaptive+rings+migrate"].derive(city)
    assert VARIANTS["fixed"].derive(city) == VARIANTS["fixed+migrate"].derive(city)
    assert VARIANTS["adaptive"].derive(city) != VARIANTS["adaptive+rings"].derive(city)


def test_a_configured_ring_count_is_kept(city):
    from dataclasses import replace

    three = replace(city, policy=replace(city.policy, rings=3))
    assert VARIANTS["adaptive+rings"].derive(three).policy.rings == 3
    assert VARIANTS["adaptive"].derive(three).policy.rings == "off"


def test_ratios_say_why_when_a_run_missed_the_target_or_was_not_run():
    rows = {r.variant: r for r in [row("device-only", 40.0), row("adaptive", 10.0), row("adaptive+rings", None),
                                   row("adaptive+rings+restart", 12.0), row("adaptive+rings+migrate", 8.0)]}
    ratios = summary_ratios(rows)
    assert ratios["device-only / adaptive"] == (4.0, "4.00 (40.0 s / 10.0 s)")
    assert ratios["restart / migrate (adaptive+rings)"][0] == pytest.approx(1.5)
    assert ratios["sync / rings (adaptive / adaptive+rings)"] == (None, "n/a (adaptive+rings did not reach the target)")
    over_all = summary_ratios(rows, "virtual_time_s")["sync / rings (adaptive / adaptive+rings)"]
    assert over_all == (1.5, "1.50 (15.0 s / 10.0 s)")  # adaptive+rings ran 10 virtual s without reaching it
    assert ratios["fixed / adaptive"] == (None, "n/a (fixed was not run)")
    both = summary_ratios({r.variant: r for r in [row("adaptive", None), row("adaptive+rings", None)]})
    both = both["sync / rings (adaptive / adaptive+rings)"]
    assert both == (None, "n/a (adaptive and adaptive+rings did not reach the target)")
    assert "needs adaptive+rings+restart" in ratios["migration's saving of what restarting loses (adaptive+rings)"][1]


def test_migration_saving_is_measured_against_nobody_moving():
    three = {r.variant: r for r in [row("adaptive+rings+restart", 20.0), row("adaptive+rings+migrate", 14.0),
                                    row("adaptive+rings+static", 12.0)]}
    assert migration_saving(three) == (0.75, "75% of 8.0 s")  # restarting lost 8 s; migrating won 6 back
    fixed = {r.variant.replace("adaptive+rings", "fixed"): r for r in three.values()}
    assert migration_saving(fixed, "fixed")[0] == 0.75 and migration_saving(fixed)[0] is None
    three["adaptive+rings+static"] = row("adaptive+rings+static", 21.0)
    value, text = migration_saving(three)
    assert value is None and "restarting lost no time" in text


def test_markdown_and_json_tables():
    rows = [row("fixed", 12.5), row("adaptive+rings", None),
            row("adaptive+rings+migrate", None, same_as="adaptive+rings")]
    table = markdown(rows, 0.9)
    assert table.splitlines()[0].startswith("| variant | time to 90% (virtual s) | final accuracy | rounds |")
    assert "| fixed | 12.5 (round 3) | 0.900 | 5 | 17.5 | 1.5 kB / 999 B | 2.5 MB / 0 B | 4 / 3 / 1 |" in table
    assert "| adaptive+rings | not reached |" in table
    assert "adaptive+rings+migrate derives the same scenario as adaptive+rings" in table
    assert "- restart / migrate (adaptive+rings): n/a (adaptive+rings+restart was not run)" in table
    doc = json.loads(json.dumps(to_json(rows, "s", 0.9)))  # JSON-clean
    assert [r["variant"] for r in doc["rows"]] == ["fixed", "adaptive+rings", "adaptive+rings+migrate"]
    assert doc["rows"][0]["bytes_up"] == {"device-edge": 1500, "edge-cloud": 2_500_000}  # raw ints
    assert doc["rows"][1]["time_to_target_s"] is None
    assert doc["ratios"]["sync / rings (adaptive / adaptive+rings)"]["value"] is None
    # Over all rounds every run has a time, so the ratio exists where the time to target does not.
    assert doc["ratios_all_rounds"]["sync / rings (adaptive / adaptive+rings)"]["value"] is None  # adaptive not run
    assert summary_ratios({r.variant: r for r in rows}, "virtual_time_s")["fixed / adaptive"][1] == \
        "n/a (adaptive was not run)"
    assert "The same over the virtual time of all 5 rounds" in table
    assert [human_bytes(n) for n in (0, 999, 1000, 1_234_567, 5e9, 7e12)] == \
           ["0 B", "999 B", "1.0 kB", "1.2 MB", "5.0 GB", "7.0 TB"]


def test_policies_parse_in_order_and_unknown_names_fail_before_ray(capsys, monkeypatch):
    assert parse_policies(None) == list(VARIANTS)
    assert parse_policies(" fixed, device-only ,fixed") == ["fixed", "device-only"]
    with pytest.raises(TierflowError, match="--policies: expected a comma-separated list of device-only, fixed"):
        parse_policies("adaptive,teleport")
    with pytest.raises(TierflowError):
        parse_policies(" , ")

    from tierflow.orchestrator import compare, runner

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray must not start for a bad --policies")

    monkeypatch.setattr(runner, "ensure_ray", no_ray)
    monkeypatch.setattr(compare, "ensure_ray", no_ray)
    assert main(["compare", str(ROOT / "examples" / "quickstart.yaml"), "--policies", "fixed,teleport"]) == 2
    err = capsys.readouterr().err
    assert "teleport" in err and "adaptive+rings+restart" in err


TINY = {
    "name": "tiny",
    "cloud": {"flops_per_s": 1e12},
    "edges": [{"name": "w", "position": [0, 0], "radius_m": 300, "flops_per_s": 1e11},
              {"name": "e", "position": [400, 0], "radius_m": 300, "flops_per_s": 1e11}],
    "devices": [{"name": "slow", "count": 2, "position": [0, 0], "flops_per_s": 1e9, "bandwidth_mbps": 20},
                {"name": "fast", "count": 2, "position": [400, 0], "flops_per_s": 2e10, "bandwidth_mbps": 50}],
    "model": {"name": "vgg5"},
    "dataset": {"name": "digits", "partition": "dirichlet", "alpha": 1.0},
    "training": {"rounds": 2, "local_steps": 2, "batch_size": 16, "seed": 3, "target_accuracy": 0.2,
                 "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}},
    "aggregation": {"schedule": "hierfavg", "cloud_every": 1},
    "split": ["pool1"],
    "mobility": {"model": "random_waypoint", "speed_mps": [20, 40], "area_m": [400, 50], "round_duration_s": 10,
                 "check_every_steps": 1},
    "execution": {"device_hosts": 1},
}


@pytest.mark.ray
def test_a_small_comparison_writes_its_table_json_and_plot(ray_session, tmp_path, capsys):
    scenario = parse_scenario(TINY, "tiny.yaml")
    names = ["device-only", "fixed", "adaptive+rings", "adaptive+rings+migrate"]
    rows = compare(scenario, names, tmp_path, progress=False)
    assert [r.variant for r in rows] == names
    printed = capsys.readouterr().out
    assert "[1/4] device-only" in printed and "[4/4] adaptive+rings+migrate" in printed
    assert "same run as adaptive+rings" in printed
    doc = json.loads((tmp_path / "compare.json").read_text())
    assert [r["variant"] for r in doc["rows"]] == names
    by = {r["variant"]: r for r in doc["rows"]}
    for r in doc["rows"]:
        assert r["rounds"] == 2 and len(r["curve"]) == 2 and 0 <= r["final_accuracy"] <= 1
        assert r["virtual_time_s"] > 0 and all(isinstance(v, int) and v >= 0 for v in r["bytes_up"].values())
        assert r["migrations"] + r["restarts"] <= r["handovers"]  # a ring's session passes are counted apart
        assert r["ring_passes"] == json.loads((tmp_path / r["variant"] / "summary.json").read_text())["ring_passes"]
        assert (tmp_path / r["variant"] / "summary.json").exists()
    # No offloading: nothing migrates, and the device-edge link carries only the whole model's sync.
    assert by["device-only"]["migrations"] == by["device-only"]["restarts"] == 0
    assert by["device-only"]["bytes_up"]["device-edge"] > 0
    assert by["fixed"]["bytes_up"]["device-edge"] != by["device-only"]["bytes_up"]["device-edge"]
    assert by["adaptive+rings+migrate"]["same_as"] == "adaptive+rings"
    assert (tmp_path / "adaptive+rings+migrate").is_symlink()
    assert {k: v for k, v in by["adaptive+rings+migrate"].items() if k not in ("variant", "same_as")} == \
           {k: v for k, v in by["adaptive+rings"].items() if k not in ("variant", "same_as")}
    assert (tmp_path / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Every variant charged (and planned with) the one profile timed for the comparison.
    profile = (tmp_path / "layer_profile.json").read_text()
    for name in names:
        assert (tmp_path / name / "layer_profile.json").read_text() == profile
    ring_state = json.loads((tmp_path / "adaptive+rings" / "checkpoint" / "state.json").read_text())["state"]
    assert ring_state["profile_digest"] == profile_digest(LayerProfile.from_json(profile))
    md = (tmp_path / "compare.md").read_text()
    assert all(f"| {n} |" in md for n in names) and "- device-only / adaptive: n/a (adaptive was not run)" in md


def test_seeds_fold_into_means_and_min_max():
    from tierflow.orchestrator.compare_seeds import markdown_seeds, spread, to_json_seeds

    by_seed = {1: [row("device-only", 40.0, 0.95), row("adaptive", 10.0, 0.96)],
               2: [row("device-only", 30.0, 0.97), row("adaptive", 15.0, 0.94)],
               3: [row("device-only", 50.0, 0.96), row("adaptive", None, 0.93)]}
    assert spread([1.0, 2.0, 6.0]).text() == "3.0 (1.0-6.0)" and spread([1.0, None]) is None
    table = markdown_seeds(by_seed, 0.9)
    assert "| device-only | 40.0 (30.0-50.0) | 0.960 (0.950-0.970) |" in table
    assert "| adaptive | not reached on seed 3 |" in table
    assert "- device-only / adaptive: n/a on seed 3 (seed 3: n/a (adaptive did not reach the target))" in table
    doc = json.loads(json.dumps(to_json_seeds(by_seed, "s", 0.9)))
    assert doc["seeds"] == [1, 2, 3] and len(doc["rows"]["2"]) == 2
    all_rounds = doc["ratios_all_rounds"]["device-only / adaptive"]
    assert all_rounds["values"] == [45 / 15, 35 / 20, 55 / 10] and all_rounds["min"] == 35 / 20


@pytest.mark.ray
def test_compare_over_seeds_runs_every_variant_on_each_seed(ray_session, tmp_path, capsys):
    path = tmp_path / "tiny.yaml"
    path.write_text(json.dumps(TINY))
    assert main(["compare", str(path), "--policies", "fixed,adaptive", "--seeds", "4,5", "--rounds", "1",
                 "--out", str(tmp_path / "cmp")]) == 0
    out = tmp_path / "cmp"
    for seed in (4, 5):
        for variant in ("fixed", "adaptive"):
            summary = json.loads((out / f"seed{seed}" / variant / "summary.json").read_text())
            assert summary["rounds"] == 1
        assert (out / f"seed{seed}" / "compare.md").exists()
    doc = json.loads((out / "compare.json").read_text())
    assert doc["seeds"] == [4, 5] and set(doc["rows"]) == {"4", "5"}
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Seeds 4, 5" in (out / "compare.md").read_text()
    # The seeds really draw other cities: the shards differ.
    a = build_world(load_scenario(path, seed=4)).shards[0]
    b = build_world(load_scenario(path, seed=5)).shards[0]
    assert len(a) != len(b) or (a != b).any()
    assert main(["compare", str(path), "--seeds", "1,x"]) == 2 and "--seeds: expected" in capsys.readouterr().err
