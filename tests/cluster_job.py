"""Run a short scenario on a real three-node Ray cluster (head + two workers) on this machine.

Started by tests/test_cluster.py in its own process, because a process holds one Ray instance and
the test session already has one. Prints one JSON line: node resources and where each actor ran.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

from tierflow.orchestrator.runner import RunOptions, run_scenario
from tierflow.orchestrator.scenario import load_scenario


def main(scenario_path: str) -> None:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"tierflow_cloud": 1}})
    edge_node = cluster.add_node(num_cpus=1, resources={"tierflow_edge": 1})
    device_node = cluster.add_node(num_cpus=1, resources={"tierflow_device": 1})
    cluster.wait_for_nodes()
    try:
        with tempfile.TemporaryDirectory() as out:
            summary = run_scenario(load_scenario(scenario_path),
                                   RunOptions(out_dir=Path(out), address=cluster.address, progress=False))
        print(json.dumps({
            "nodes": {"cloud": cluster.head_node.node_id, "edge": edge_node.node_id, "device": device_node.node_id},
            "actor_nodes": summary["actor_nodes"], "final_accuracy": summary["final_accuracy"],
        }))
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
