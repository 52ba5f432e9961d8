"""Planning at scale: adaptive placement (the makespan planner) for 10,000 and 100,000 devices.

The whole path `tierflow plan` runs: the model's partition options, every device's costs under
every option, the makespan search, and capability rings over the planned round times. The
baseline, measured in the same run: the planner it replaced, an exact minimum cut per device with
fair shares of the servers, on a few hundred devices (reported per device). Prints one JSON line
last with the times and the devices-per-second ratio.
"""

from __future__ import annotations

import json
import time

from tierflow.orchestrator.clock import build_cost_model
from tierflow.orchestrator.planning import Planner
from tierflow.orchestrator.scenario import parse_scenario
from tierflow.orchestrator.world import build_world
from tierflow.placement.cost import Profile, TierSpeeds
from tierflow.placement.partition import partition
from tierflow.placement.rings import form_rings


def metro(devices: int) -> dict:
    edges = [{"name": f"e{i}{j}", "position": [500 + 1000 * i, 500 + 1000 * j], "radius_m": 800,
              "flops_per_s": 2e11 if (i + j) % 2 else 1e11, "cloud_bandwidth_mbps": 1000}
             for i in range(4) for j in range(4)]
    return {
        "name": f"plan-{devices}", "cloud": {"flops_per_s": 1e13}, "edges": edges,
        "devices": [{"name": "d", "count": devices, "position": [2000, 2000], "spread_m": 1900,
                     "flops_per_s": [1e9, 3e10], "bandwidth_mbps": [5, 150], "memory_mb": [512, 4096]}],
        "model": {"name": "vgg5"}, "training": {"rounds": 1, "local_steps": 2, "batch_size": 16},
        "policy": {"placement": "adaptive"},
    }


def plan_path(devices: int) -> dict:
    sc = parse_scenario(metro(devices), "bench.yaml")
    world = build_world(sc)
    cost, _ = build_cost_model(sc, world.dataset.shape)
    t0 = time.perf_counter()
    planner = Planner(sc, cost, world.batch_sizes())
    t1 = time.perf_counter()
    plans = planner.initial_plan()
    t2 = time.perf_counter()
    rings = form_rings({d: p.period_s for d, p in plans.items()}, None)
    t3 = time.perf_counter()
    return {"devices": devices, "options": len(planner.options), "options_s": round(t1 - t0, 3),
            "plan_s": round(t2 - t1, 3), "rings_s": round(t3 - t2, 3), "rings": len(rings),
            "total_s": round(t3 - t0, 3)}


def old_planner_per_device_s(devices: int = 300) -> float:
    """The replaced planner: one exact min cut per device, the edge and cloud shared fairly."""
    sc = parse_scenario(metro(devices), "bench.yaml")
    world = build_world(sc)
    cost, _ = build_cost_model(sc, world.dataset.shape)
    per_edge: dict[str, int] = {}
    for d in sc.devices:
        per_edge[d.edge] = per_edge.get(d.edge, 0) + 1
    t0 = time.perf_counter()
    for d in sc.devices:
        edge = sc.edge(d.edge)
        speeds = TierSpeeds(d.flops_per_s, edge.flops_per_s / per_edge[d.edge], d.bandwidth_mbps * 1e6,
                            sc.cloud.flops_per_s / len(sc.devices), edge.cloud_bandwidth_mbps * 1e6)
        partition(cost.graph, Profile(speeds, batch_size=16, steps_per_round=2, device_memory_bytes=d.memory_mb * 2**20,
                                      private_layers=1))
    return (time.perf_counter() - t0) / devices


def main() -> None:
    old = old_planner_per_device_s()
    runs = [plan_path(n) for n in (10_000, 100_000)]
    for r in runs:
        print(json.dumps(r), flush=True)
    ten, hundred = runs
    print(json.dumps({
        "plan_10k_s": ten["total_s"], "plan_100k_s": hundred["total_s"],
        "target_10k_s": 2.0, "target_100k_s": 20.0,
        "old_planner_ms_per_device": round(1e3 * old, 3),
        "speedup_vs_old_at_10k": round(old * 10_000 / ten["total_s"], 1),
    }))


if __name__ == "__main__":
    main()
