"""Benchmark: planning many devices with the candidate set vs one min cut per device.

Run ``python benchmarks/placement.py``. Progress goes to stdout; the last line is one JSON object.
Devices the candidate set does not vouch for (see :mod:`placement.candidates`) get their own min
cut inside the timed loop; ``fallback_fraction`` says how many. ``exact_fraction`` compares the
final plans (candidate or fallback) of 1,000 other devices with their own min cuts.
"""

from __future__ import annotations

import json
import math
import time

import numpy as np

from tierflow.placement.candidates import ParameterBox, build_candidate_set
from tierflow.placement.cost import Profile, TierSpeeds, cost_graph, time_of
from tierflow.placement.graph import build_layer_graph
from tierflow.placement.partition import min_cut
from tierflow.tiers.models import InputShape, build_model

BOX = ParameterBox(
    device_flops_per_s=(1e8, 1e11),
    edge_flops_per_s=(1e9, 1e12),
    device_edge_bandwidth_bps=(1e5, 1e9),
    cloud_flops_per_s=(1e10, 1e13),
    edge_cloud_bandwidth_bps=(1e5, 1e10),
)


def sample_devices(n: int, seed: int) -> np.ndarray:
    """Log-uniform speeds and bandwidths over the box: columns s0, s1, s2, B1, B2."""
    r = np.array(BOX.ranges())
    return np.exp(np.random.default_rng(seed).uniform(np.log(r[:, 0]), np.log(r[:, 1]), size=(n, len(r))))


def speeds_of(row: np.ndarray) -> TierSpeeds:
    return TierSpeeds(row[0], row[1], row[3], row[2], row[4])


def main() -> None:
    t0 = time.perf_counter()
    graph = build_layer_graph(build_model("resnet_small", InputShape(3, 32, 32, 10)), (3, 32, 32))
    graph_s = time.perf_counter() - t0
    cg = cost_graph(graph, Profile(TierSpeeds(1, 1, 1, 1, 1), batch_size=32, private_layers=1))
    print(f"layer graph: {len(cg.names)} nodes, {graph.number_of_edges()} edges in {graph_s:.2f} s", flush=True)

    t0 = time.perf_counter()
    cs = build_candidate_set(cg, BOX)
    preprocess_s = time.perf_counter() - t0
    print(
        f"candidate set: {len(cs)} partitions ({int(cs.proved.sum())} proved) "
        f"from {cs.mincuts} min cuts in {preprocess_s:.2f} s",
        flush=True,
    )

    devices = sample_devices(100_000, seed=1)
    cs.plan(*devices[:1000].T)  # warm-up
    t0 = time.perf_counter()
    idx = cs.plan(*devices.T)
    fallback = np.flatnonzero(idx < 0)  # unproved or ambiguous: exact per-device min cut
    for i in fallback:
        min_cut(cg, speeds_of(devices[i]))
    plan_s = time.perf_counter() - t0
    devices_per_s = len(devices) / plan_s
    print(
        f"planned {len(devices)} devices in {plan_s * 1e3:.1f} ms ({devices_per_s:,.0f} devices/s), "
        f"{len(fallback)} by min cut",
        flush=True,
    )

    check = sample_devices(1000, seed=2)
    exact = 0
    cut_s = 0.0
    worst_rel = 0.0
    plans = cs.plans([speeds_of(row) for row in check])
    for row, plan in zip(check, plans, strict=True):
        speeds = speeds_of(row)
        t0 = time.perf_counter()
        cut = min_cut(cg, speeds)
        cut_s += time.perf_counter() - t0
        best = time_of(cg, cut.x, speeds)
        mine = plan.batch_time_s
        worst_rel = max(worst_rel, (mine - best) / best)
        exact += math.isclose(mine, best, rel_tol=1e-9)
    mincut_ms = cut_s / len(check) * 1e3
    print(
        f"checked {len(check)} devices against their own min cut ({mincut_ms:.2f} ms each), "
        f"{sum(p.method != 'candidates' for p in plans)} of them planned by min cut",
        flush=True,
    )
    result = {
        "model": "resnet_small",
        "input": [3, 32, 32],
        "candidates": len(cs),
        "proved_candidates": int(cs.proved.sum()),
        "graph_s": round(graph_s, 3),
        "preprocess_s": round(preprocess_s, 3),
        "preprocess_mincuts": cs.mincuts,
        "devices": len(devices),
        "devices_per_s": round(devices_per_s),
        "fallback_fraction": len(fallback) / len(devices),
        "exact_fraction": exact / len(check),
        "worst_relative_excess": worst_rel,
        "mincut_ms": round(mincut_ms, 3),
        "speedup_vs_mincut": round(devices_per_s / (1000.0 / mincut_ms), 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
