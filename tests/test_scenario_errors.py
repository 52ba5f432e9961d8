"""Every bad scenario file fails before Ray starts, with the file, the field and what was expected."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tierflow.orchestrator.cli import main
from tierflow.orchestrator.scenario import load_scenario

HERE = Path(__file__).parent
BAD = HERE / "bad_scenarios"

EXPECTED = {
    "empty.yaml": "the scenario file is empty",
    "not_yaml.yaml": "not valid YAML at line",
    "not_mapping.yaml": "top level: expected a mapping",
    "missing_cloud.yaml": "cloud: missing (required)",
    "zero_edge_speed.yaml": "edges[0].flops_per_s: expected a positive number, got 0",
    "negative_bandwidth.yaml": "devices[0].bandwidth_mbps: expected a positive number, got -5",
    "string_speed.yaml": "devices[0].flops_per_s: expected a positive number, got 'fast'",
    "unknown_model.yaml": "model.name: expected one of vgg5, resnet_small, mlp or 'module:callable', got 'alexnet'",
    "unknown_split_layer.yaml": "split[0]: unknown layer 'fc9'",
    "split_past_last_layer.yaml": "split[0]: expected a layer count between 0 and 12",
    "split_backwards.yaml": "split[1]: cut 'conv1' comes before the previous cut 'conv3'",
    "missing_rounds.yaml": "training.rounds: missing (required)",
    "fractional_rounds.yaml": "training.rounds: expected an integer >= 1, got 2.5",
    "unknown_optimizer.yaml": "training.optimizer.name: expected one of 'sgd', 'adam', got 'rmsprop'",
    "duplicate_device.yaml": "devices[1].name: expected a unique name, got duplicate 'd0'",
    "device_out_of_coverage.yaml": "devices[1].position: expected a position inside some edge server's coverage",
    "unknown_edge_field.yaml": "edges[0].colour: unknown field",
    "no_edges.yaml": "edges: expected at least one edge server",
    "bad_policy.yaml": "policy.handover: expected one of 'migrate', 'restart', got 'teleport'",
    "bad_plan_costs.yaml": "policy.plan_costs: expected nothing: it is replaced by execution.compute",
    "bad_compute.yaml": "execution.compute: expected one of 'profile', 'flops', 'measured', got 'guessed'",
    "bad_engine.yaml": "execution.engine: expected one of 'auto', 'vectorized', 'looped', got 'batched'",
    "cifar_without_path.yaml": "dataset.path: expected the local directory holding CIFAR-10's python batches",
    "bad_position.yaml": "devices[0].position: expected a pair of numbers [x, y], got [10]",
    "trace_without_file.yaml": "mobility.trace: missing (required)",
    "resource_trace_bad_line.yaml": "resources.trace: ",  # then the CSV, its line and field (below)
    "resource_walk_unknown_device.yaml": "resources.bandwidth_walk.devices: expected a list of device names",
    "resource_walk_crawling_link.yaml": "resources.bandwidth_walk.min: expected a floor at which device d1 still "
                                        "sends 1 kB per 0.01 s step",
    # numbers the code cannot hold, or work without end: bounded, with the reason
    "huge_seed.yaml": "training.seed: expected an integer <= 4,294,967,295 (a 32-bit seed",
    "huge_local_steps.yaml": "training.local_steps: expected an integer <= 100,000 (every device trains",
    "float_local_steps.yaml": "training.local_steps: expected an integer >= 1, got 1e+30",
    "float_cloud_every.yaml": "aggregation.cloud_every: expected an integer >= 1, got 1e+30",
    "huge_cloud_every.yaml": "aggregation.cloud_every: expected an integer <= 10,000 (every round runs",
    "too_many_steps.yaml": "training.local_steps: expected rounds x aggregation.cloud_every x local_steps <= "
                           "100,000,000 batches per device",
    "nan_rounds.yaml": "training.rounds: expected an integer >= 1, got nan",
    "huge_batch_size.yaml": "training.batch_size: expected an integer <= 65,536 (a batch and its activations",
    "huge_device_hosts.yaml": "execution.device_hosts: expected an integer <= 1,024 (each host is a Ray actor",
    "huge_step_timeout.yaml": "policy.step_timeout_s: expected a number <= 86400 (timeouts count whole milliseconds",
    "tiny_migration_timeout.yaml": "policy.migration_timeout_s: expected a number >= 0.001 (timeouts count",
    "huge_speed.yaml": "mobility.speed_mps: expected speeds <= 300 (m/s: faster than an airliner)",
    "huge_position.yaml": "devices[0].position: expected a pair of numbers [x, y] within +-1e+08 (metres",
    "huge_round_duration.yaml": "mobility.round_duration_s: expected a number <= 1e+06 (seconds of movement",
    "tiny_area.yaml": "mobility.area_m: expected two sizes >= 1 m (the walk's legs need room)",
    # every trace: one reader, one set of rules
    "mobility_trace_random_bytes.yaml": "mobility.trace: ",  # then the file: expected UTF-8 text ... offset
    "mobility_trace_dev_zero.yaml": "mobility.trace: /dev/zero: expected a regular file for the mobility trace",
    "mobility_trace_unknown_device.yaml": "mobility_unknown_device.csv:3: device: expected a device of the "
                                          "scenario (d0, d1), got 'd7'",
    "resource_trace_dev_zero.yaml": "resources.trace: /dev/zero: expected a regular file for the resource trace",
}


def test_corpus_is_complete():
    assert {p.name for p in BAD.glob("*.yaml")} == set(EXPECTED)
    assert len(EXPECTED) >= 15


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bad_scenario_gets_a_clear_error(name, capsys):
    path = BAD / name
    code = main(["run", str(path), "--out", "/nonexistent/never-created"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"tierflow: error: {path}: ")
    assert EXPECTED[name] in err
    assert "Traceback" not in err


def test_missing_file_is_a_clear_error(capsys):
    assert main(["run", str(BAD / "no-such-file.yaml")]) == 2
    assert "cannot read the scenario file" in capsys.readouterr().err


def test_the_good_base_loads():
    scenario = load_scenario(HERE / "good_scenario.yaml")
    assert [d.edge for d in scenario.devices] == ["e0", "e0"]


def test_cli_exits_non_zero_without_traceback():
    proc = subprocess.run([sys.executable, "-m", "tierflow.orchestrator.cli", "run",
                           str(BAD / "negative_bandwidth.yaml")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "devices[0].bandwidth_mbps: expected a positive number, got -5" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_bad_resource_trace_names_the_csv_line_and_field(capsys):
    assert main(["run", str(BAD / "resource_trace_bad_line.yaml")]) == 2
    assert "resource_trace_bad_line.csv:3: flops_per_s: expected a number, got 'fast'" in capsys.readouterr().err


def test_rings_off_as_bare_yaml_is_off(tmp_path):
    text = (HERE / "good_scenario.yaml").read_text() + "\npolicy: {rings: off}\n"
    (tmp_path / "s.yaml").write_text(text)
    assert load_scenario(tmp_path / "s.yaml").policy.rings == "off"  # YAML 1.1 reads `off` as false


def test_a_mobility_trace_of_random_bytes_names_the_byte_and_offset(capsys):
    assert main(["run", str(BAD / "mobility_trace_random_bytes.yaml")]) == 2
    assert "mobility_random_bytes.csv: expected UTF-8 text for the mobility trace, got byte 0x80 at offset 27" \
        in capsys.readouterr().err


def test_a_walk_area_the_edges_leave_empty_is_refused_before_start(tmp_path):
    from tierflow.orchestrator.errors import TierflowError
    from tierflow.orchestrator.mobility import build_mobility

    text = (HERE / "good_scenario.yaml").read_text().replace("position: [0, 0], radius_m: 500",
                                                             "position: [-600, -600], radius_m: 500")
    text = text.replace("position: [10, 0]", "position: [-590, -600]").replace("position: [20, 0]",
                                                                               "position: [-580, -600]")
    path = tmp_path / "s.yaml"
    path.write_text(text + "mobility: {model: random_waypoint}\n")
    with pytest.raises(TierflowError, match=r"mobility\.area_m: expected two sizes >= 1 m; the box from \(0, 0\) "
                                            r"the edges cover is -100 x -100 m"):
        build_mobility(load_scenario(path))
