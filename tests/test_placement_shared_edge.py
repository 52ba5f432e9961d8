"""Shared edge: the makespan plan against brute force over all devices' placements."""

from __future__ import annotations

import math
import random

import networkx as nx
import pytest

from tierflow.placement.cost import Profile, TierSpeeds
from tierflow.placement.shared_edge import SharedDevice, brute_force_shared, plan_shared_edge


def _graph(rng: random.Random, n: int, chain: bool) -> nx.DiGraph:
    g = nx.DiGraph(source="n0")
    for i in range(n):
        g.add_node(
            f"n{i}",
            order=i,
            fwd_flops=0.0 if i == 0 else rng.uniform(1e5, 1e7),
            bwd_flops=0.0 if i == 0 else rng.uniform(0, 2e7),
            activation_bytes=rng.uniform(1e2, 1e5),
            param_bytes=rng.randint(0, 1000),
        )
        if i:
            preds = {i - 1} if chain else set(rng.sample(range(i), k=min(i, rng.randint(1, 2))))
            for p in preds:
                g.add_edge(f"n{p}", f"n{i}")
    return g


def _instance(seed: int) -> list[SharedDevice]:
    rng = random.Random(seed)
    tiers = rng.choice([2, 3])
    num = rng.choice([2, 3])
    edge = rng.uniform(1e9, 2e10)
    cloud = rng.uniform(2e10, 1e11)
    devices = []
    for i in range(num):
        chain = rng.random() < 0.5
        n = rng.randint(3, 5 if num == 2 else 4)
        speeds = TierSpeeds(
            rng.uniform(1e8, 5e9),
            edge,
            rng.uniform(1e6, 1e8),
            cloud if tiers == 3 else None,
            rng.uniform(1e6, 1e9) if tiers == 3 else None,
        )
        devices.append(SharedDevice(f"d{i}", _graph(rng, n, chain), Profile(speeds, batch_size=4)))
    return devices


@pytest.mark.parametrize("seed", range(40))
def test_shared_edge_plan_equals_brute_force(seed):
    devices = _instance(seed)
    plan = plan_shared_edge(devices)
    oracle = brute_force_shared(devices)
    assert plan.exact
    assert math.isclose(plan.makespan_s, oracle, rel_tol=1e-12)
    assert plan.makespan_s == max(max(plan.device_times_s.values()), plan.edge_busy_s)


def test_lagrangian_heuristic_against_brute_force():
    """The min-cut path for big DAGs: never below the optimum, and close to it on small cases."""
    ratios = []
    for seed in range(40):
        devices = _instance(seed)
        plan = plan_shared_edge(devices, method="lagrangian")
        oracle = brute_force_shared(devices)
        assert not plan.exact
        assert plan.makespan_s >= oracle * (1 - 1e-12)
        ratios.append(plan.makespan_s / oracle)
    exact_share = sum(r <= 1 + 1e-9 for r in ratios) / len(ratios)
    assert exact_share >= 0.6, ratios
    assert max(ratios) <= 1.5, ratios


def test_sharing_moves_work_off_a_crowded_edge():
    rng = random.Random(3)
    g = _graph(rng, 5, chain=True)
    speeds = TierSpeeds(2e9, 4e9, 1e9)
    alone = plan_shared_edge([SharedDevice("a", g, Profile(speeds, batch_size=4))])
    crowd = plan_shared_edge([SharedDevice(f"d{i}", g, Profile(speeds, batch_size=4)) for i in range(8)])
    edge_nodes = lambda p: sum(t == 1 for a in p.assignments.values() for t in a.values()) / len(p.assignments)  # noqa: E731
    assert edge_nodes(crowd) < edge_nodes(alone)
    assert crowd.makespan_s >= alone.makespan_s
