"""The instance format: solving a valid file, and one clear error per invalid kind."""

from __future__ import annotations

import copy
import json
import math

import pytest

from tierflow.placement.errors import InvalidInstanceError
from tierflow.placement.instance import load_instance, solve_instance

VALID = {
    "nodes": [
        {"id": "x", "fwd_flops": 0, "bwd_flops": 0, "activation_bytes": 3072},
        {"id": "conv1", "fwd_flops": 1.2e6, "bwd_flops": 2.4e6, "activation_bytes": 32768},
        {"id": "left", "fwd_flops": 5e8, "bwd_flops": 1e9, "activation_bytes": 512},
        {"id": "right", "fwd_flops": 2e6, "bwd_flops": 4e6, "activation_bytes": 4096},
        {"id": "add", "fwd_flops": 1e3, "bwd_flops": 0, "activation_bytes": 512},
        {"id": "fc", "fwd_flops": 1e9, "bwd_flops": 2e9, "activation_bytes": 40},
    ],
    "edges": [["x", "conv1"], ["conv1", "left"], ["conv1", "right"], ["left", "add"], ["right", "add"], ["add", "fc"]],
    "source": "x",
    "tier_flops_per_s": [1e9, 2e10, 1e11],
    "link_bandwidth_bps": [2e7, 1e9],
}


def _write(tmp_path, data, name="inst.json"):
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else json.dumps(data))
    return p


def _expected_time(data, assignment):
    s, b = data["tier_flops_per_s"], data["link_bandwidth_bps"]
    by_id = {n["id"]: n for n in data["nodes"]}
    t = sum((n["fwd_flops"] + n["bwd_flops"]) / s[assignment[n["id"]]] for n in data["nodes"])
    for u, node in by_id.items():
        top = max((assignment[w] for a, w in data["edges"] if a == u), default=-1)
        for k in range(assignment[u] + 1, top + 1):
            t += 2 * 8 * node["activation_bytes"] / b[k - 1]
    return t


def test_valid_instance_solves_to_the_brute_force_optimum(tmp_path):
    inst = load_instance(_write(tmp_path, VALID))
    out = solve_instance(inst)
    oracle = solve_instance(inst, method="brute_force")
    assert set(out) == {"assignment", "batch_time_s"}
    assert out["assignment"]["x"] == 0
    assert math.isclose(out["batch_time_s"], oracle["batch_time_s"], rel_tol=1e-9)
    assert math.isclose(out["batch_time_s"], _expected_time(VALID, out["assignment"]), rel_tol=1e-12)
    json.dumps(out)


def test_pins_and_two_tiers(tmp_path):
    data = copy.deepcopy(VALID)
    data["tier_flops_per_s"] = [1e9, 2e10]
    data["link_bandwidth_bps"] = [2e7]
    data["nodes"][2]["tier"] = 0
    out = solve_instance(load_instance(_write(tmp_path, data)))
    assert out["assignment"]["left"] == 0 and out["assignment"]["conv1"] == 0
    assert max(out["assignment"].values()) <= 1
    assert math.isclose(out["batch_time_s"], _expected_time(data, out["assignment"]), rel_tol=1e-12)


def _mutate(fn):
    data = copy.deepcopy(VALID)
    fn(data)
    return data


INVALID = {
    "not_json": ("{nodes: [", r"inst\.json: not valid JSON"),
    "not_object": ("[1, 2]", r"inst\.json: expected a JSON object"),
    "cycle": (
        _mutate(lambda d: d["edges"].append(["fc", "conv1"])),
        r"inst\.json: edges: expected an acyclic graph, found the cycle",
    ),
    "unknown_edge_id": (
        _mutate(lambda d: d["edges"].append(["add", "conv9"])),
        r'inst\.json: edges\[6\]\[1\]: unknown node id "conv9"',
    ),
    "bad_edge_shape": (_mutate(lambda d: d["edges"].append(["x"])), r"inst\.json: edges\[6\]: expected a \[from, to\]"),
    "duplicate_id": (
        _mutate(lambda d: d["nodes"].append(dict(d["nodes"][1]))),
        r'inst\.json: nodes\[6\]\.id: duplicate id "conv1" \(first at nodes\[1\]\)',
    ),
    "zero_speed": (
        _mutate(lambda d: d["tier_flops_per_s"].__setitem__(1, 0)),
        r"inst\.json: tier_flops_per_s\[1\]: expected a positive number, got 0",
    ),
    "negative_bandwidth": (
        _mutate(lambda d: d["link_bandwidth_bps"].__setitem__(0, -5)),
        r"inst\.json: link_bandwidth_bps\[0\]: expected a positive number, got -5",
    ),
    "missing_source": (_mutate(lambda d: d.pop("source")), r"inst\.json: source: expected the id of a node, got null"),
    "unknown_source": (_mutate(lambda d: d.__setitem__("source", "y")), r'inst\.json: source: .*got "y"'),
    "wrong_bandwidth_count": (
        _mutate(lambda d: d["link_bandwidth_bps"].pop()),
        r"inst\.json: link_bandwidth_bps: expected a list of 2 positive number",
    ),
    "wrong_speed_count": (
        _mutate(lambda d: d["tier_flops_per_s"].append(1e12)),
        r"inst\.json: tier_flops_per_s: expected a list of 2 or 3",
    ),
    "bad_pin": (
        _mutate(lambda d: d["nodes"][3].__setitem__("tier", 3)),
        r"inst\.json: nodes\[3\]\.tier: expected an integer tier from 0 to 2, got 3",
    ),
    "bool_pin": (_mutate(lambda d: d["nodes"][3].__setitem__("tier", True)), r"nodes\[3\]\.tier: expected an integer"),
    "source_pinned_up": (
        _mutate(lambda d: d["nodes"][0].__setitem__("tier", 1)),
        r"inst\.json: nodes\[0\]\.tier: the source is on the device",
    ),
    "negative_flops": (
        _mutate(lambda d: d["nodes"][2].__setitem__("fwd_flops", -1)),
        r"inst\.json: nodes\[2\]\.fwd_flops: expected a non-negative number, got -1",
    ),
    "string_flops": (
        _mutate(lambda d: d["nodes"][2].__setitem__("fwd_flops", "abc")),
        r'inst\.json: nodes\[2\]\.fwd_flops: expected a non-negative number, got "abc"',
    ),
    "missing_bytes": (
        _mutate(lambda d: d["nodes"][4].pop("activation_bytes")),
        r"inst\.json: nodes\[4\]\.activation_bytes: missing",
    ),
    "empty_nodes": (_mutate(lambda d: d.__setitem__("nodes", [])), r"inst\.json: nodes: expected a non-empty list"),
    "source_with_input": (
        _mutate(lambda d: d["edges"].append(["conv1", "x"])),
        r"inst\.json: (edges: expected an acyclic|source: the source)",
    ),
}


@pytest.mark.parametrize("kind", sorted(INVALID))
def test_invalid_instances_name_file_and_field(tmp_path, kind):
    data, pattern = INVALID[kind]
    with pytest.raises(InvalidInstanceError, match=pattern):
        load_instance(_write(tmp_path, data))


def test_contradictory_pins_are_an_instance_error(tmp_path):
    data = _mutate(lambda d: (d["nodes"][1].__setitem__("tier", 2), d["nodes"][2].__setitem__("tier", 1)))
    with pytest.raises(InvalidInstanceError, match=r"inst\.json: nodes: the tier pins admit no placement"):
        solve_instance(load_instance(_write(tmp_path, data)))


def test_missing_file(tmp_path):
    with pytest.raises(InvalidInstanceError, match=r"nope\.json: cannot read the file"):
        load_instance(tmp_path / "nope.json")
