"""`tierflow plan`: bare instances in and out as JSON, scenarios as a table, bad input as a clear error."""

from __future__ import annotations

import json
from pathlib import Path

from tierflow.orchestrator.cli import main
from tierflow.placement.instance import load_instance, solve_instance

ROOT = Path(__file__).resolve().parents[1]

INSTANCE = {
    "nodes": [{"id": "x", "fwd_flops": 0, "bwd_flops": 0, "activation_bytes": 3072},
              {"id": "conv1", "fwd_flops": 1.2e6, "bwd_flops": 2.4e6, "activation_bytes": 32768},
              {"id": "conv2", "fwd_flops": 9e7, "bwd_flops": 1.8e8, "activation_bytes": 8192},
              {"id": "skip", "fwd_flops": 1e5, "bwd_flops": 2e5, "activation_bytes": 8192},
              {"id": "fc", "fwd_flops": 4e6, "bwd_flops": 8e6, "activation_bytes": 40}],
    "edges": [["x", "conv1"], ["conv1", "conv2"], ["conv1", "skip"], ["conv2", "fc"], ["skip", "fc"]],
    "source": "x",
    "tier_flops_per_s": [1e9, 2e10, 1e11],
    "link_bandwidth_bps": [2e7, 1e9],
}


def test_instance_json_round_trip(tmp_path, capsys):
    path = tmp_path / "inst.json"
    path.write_text(json.dumps(INSTANCE))
    assert main(["plan", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == json.loads(json.dumps(solve_instance(load_instance(path))))
    assert set(out["assignment"]) == {n["id"] for n in INSTANCE["nodes"]} and out["assignment"]["x"] == 0


def test_invalid_instance_exits_non_zero_naming_the_field(tmp_path, capsys):
    bad = dict(INSTANCE, link_bandwidth_bps=[2e7, -1])
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    assert main(["plan", str(path), "--json"]) == 2
    err = capsys.readouterr().err
    assert "bad.json" in err and "link_bandwidth_bps[1]" in err and "Traceback" not in err


def test_scenario_plan_lists_every_device_with_its_ring(capsys):
    assert main(["plan", str(ROOT / "examples" / "quickstart.yaml"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["device"] for r in rows} == {"pi4-0", "pi4-1", "pi3-0", "pi3-1", "jetson-0", "phone-0"}
    for r in rows:
        assert r["device_layers"] + r["edge_layers"] + r["cloud_layers"] == 12
        assert r["period_s"] > 0 and r["round_time_s"] >= r["period_s"] and r["ring"] >= 0
