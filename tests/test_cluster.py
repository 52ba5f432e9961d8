"""Tier actors land on nodes of their kind when the cluster offers the custom resources."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent


def test_actors_run_on_nodes_of_their_kind(tmp_path):
    scenario = tmp_path / "tiny.yaml"
    scenario.write_text((HERE / "good_scenario.yaml").read_text().replace("rounds: 1", "rounds: 2"))
    # Its own Ray temp dir (short: socket paths are bounded): the cluster's address file must not
    # send other runs on this machine to it.
    with tempfile.TemporaryDirectory(prefix="tfcl-", dir="/tmp") as ray_tmp:
        env = {**os.environ, "PYTHONPATH": str(HERE.parent), "RAY_TMPDIR": ray_tmp}
        proc = subprocess.run([sys.executable, str(HERE / "cluster_job.py"), str(scenario)], capture_output=True,
                              text=True, timeout=400, env=env)
        assert any((Path(ray_tmp) / "ray").glob("session_*")), "the cluster did not use its own temp dir"
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    nodes, placed = result["nodes"], result["actor_nodes"]
    assert len(set(nodes.values())) == 3
    assert placed["cloud"] == nodes["cloud"]
    assert placed["edge:e0"] == nodes["edge"]
    assert all(v == nodes["device"] for k, v in placed.items() if k.startswith("devices:"))
