"""The shared-server planner minimises the clock's own makespan; checked against brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tierflow.placement.cost import Charge, Profile, TierSpeeds, cost_graph, makespan_s, period_cost
from tierflow.placement.graph import build_layer_graph
from tierflow.placement.makespan import (
    SharedDevices,
    _dominance_filter,
    _uniform_best,
    brute_force_makespan,
    keep_unneeded,
    makespan_of,
    option_costs,
    partition_options,
    plan_makespan,
)
from tierflow.placement.partition import _monotone_assignments
from tierflow.tiers.models import InputShape, build_model

SHAPE = InputShape(1, 8, 8, 10)


@pytest.fixture(scope="module")
def graphs():
    return {name: build_layer_graph(build_model(name, SHAPE), (1, 8, 8)) for name in ("mlp", "vgg5", "resnet_small")}


def random_devices(rng, n: int, n_edges: int, batch: int = 16, steps: int = 4) -> SharedDevices:
    edge = rng.integers(0, n_edges, n)
    edge_speed = 10 ** rng.uniform(9.5, 11.5, n_edges)
    uplink = 10 ** rng.uniform(7, 9, n_edges)
    return SharedDevices(edge, 10 ** rng.uniform(8.5, 10.5, n), 10 ** rng.uniform(6.5, 8.5, n), edge_speed[edge],
                         uplink[edge], float(10 ** rng.uniform(11, 12.5)), np.full(n, batch), np.full(n, np.inf), steps)


def test_options_are_monotone_undominated_and_cover_the_pinned_space(graphs):
    for name, graph in graphs.items():
        opts = partition_options(graph, private_layers=1)
        one = cost_graph(graph, Profile(TierSpeeds(1, 1, 1, 1, 1), batch_size=1, private_layers=1))
        every = list(_monotone_assignments(one, one.lo, one.hi))
        assert set(opts.vectors) <= set(every) and len(opts) >= 2
        costs = np.column_stack([opts.features, opts.sync_bits, opts.memory_fixed, opts.memory_per_sample])
        assert len(_dominance_filter(costs)) == len(opts), name  # none dominates another
    assert len(partition_options(graphs["vgg5"])) == 24  # of VGG-5's 78 pinned splits


def test_vectorized_option_costs_equal_the_cost_models_period(graphs):
    """The planner's matrices are the clock's function: each entry equals period_cost for that device."""
    rng = np.random.default_rng(0)
    graph = graphs["vgg5"]
    opts = partition_options(graph)
    dev = random_devices(rng, 5, 2, batch=16, steps=3)
    costs = option_costs(opts, dev)
    cg = cost_graph(graph, Profile(TierSpeeds(1, 1, 1, 1, 1), batch_size=16))
    for i in range(len(dev)):
        speeds = TierSpeeds(dev.device_flops_per_s[i], dev.edge_flops_per_s[i], dev.device_bandwidth_bps[i],
                            dev.cloud_flops_per_s, dev.edge_cloud_bandwidth_bps[i])
        for p, x in enumerate(opts.vectors):
            cost = period_cost(cg, x, speeds, 3)
            assert math.isclose(costs.device_s[i, p], cost.total_s, rel_tol=1e-12)
            assert math.isclose(costs.edge_s[i, p], cost.compute_s[1], rel_tol=1e-12, abs_tol=1e-300)
            assert math.isclose(costs.cloud_s[i, p], cost.compute_s[2], rel_tol=1e-12, abs_tol=1e-300)
    choice = rng.integers(0, len(opts), len(dev))
    charges = [Charge(f"d{i}", str(dev.edge[i]),
                      period_cost(cg, opts.vectors[choice[i]], TierSpeeds(
                          dev.device_flops_per_s[i], dev.edge_flops_per_s[i], dev.device_bandwidth_bps[i],
                          dev.cloud_flops_per_s, dev.edge_cloud_bandwidth_bps[i]), 3)) for i in range(len(dev))]
    assert math.isclose(makespan_of(costs, dev.edge, choice), makespan_s(charges), rel_tol=1e-12)


def test_memory_limits_rule_options_out(graphs):
    opts = partition_options(graphs["vgg5"])
    rng = np.random.default_rng(1)
    dev = random_devices(rng, 3, 1)
    need = opts.memory_fixed + 16 * opts.memory_per_sample
    tight = SharedDevices(**{**dev.__dict__, "memory_bytes": np.full(3, float(np.sort(need)[len(need) // 2]))})
    costs = option_costs(opts, tight)
    assert np.isinf(costs.device_s).any() and np.isfinite(costs.device_s).any(axis=1).all()
    plan = plan_makespan(costs, tight.edge)
    assert np.isfinite(costs.device_s[np.arange(3), plan.choice]).all()


@pytest.mark.parametrize("model", ["mlp", "vgg5"])
def test_the_plan_is_never_worse_than_a_fixed_split_or_selfish_plans_and_near_brute_force(graphs, model):
    opts = partition_options(graphs[model])
    rng = np.random.default_rng(7)
    optimal, checked, worst = 0, 0, 1.0
    for _ in range(60):
        n = int(rng.integers(2, 5))
        dev = random_devices(rng, n, int(rng.integers(1, 3)))
        costs = option_costs(opts, dev)
        plan = plan_makespan(costs, dev.edge)
        assert math.isclose(plan.makespan_s, makespan_of(costs, dev.edge, plan.choice), rel_tol=1e-12)
        assert plan.makespan_s <= _uniform_best(costs, dev.edge)[0] * (1 + 1e-12)
        assert plan.makespan_s <= makespan_of(costs, dev.edge, costs.device_s.argmin(axis=1)) * (1 + 1e-12)
        if len(opts) ** n <= 400_000:
            checked += 1
            best = brute_force_makespan(costs, dev.edge)
            assert plan.makespan_s >= best * (1 - 1e-12)
            ratio = plan.makespan_s / best
            worst = max(worst, ratio)
            optimal += ratio <= 1 + 1e-9
    assert checked >= 40 and worst <= 1.05, (checked, worst)
    assert optimal >= 0.9 * checked, (optimal, checked)  # measured: every one of them optimal


def test_keeping_unneeded_switches_back_never_raises_the_makespan(graphs):
    opts = partition_options(graphs["vgg5"])
    rng = np.random.default_rng(3)
    for _ in range(30):
        dev = random_devices(rng, 12, 3)
        costs = option_costs(opts, dev)
        old = rng.integers(0, len(opts), len(dev))
        new = plan_makespan(costs, dev.edge, current=old).choice
        kept = keep_unneeded(costs, dev.edge, new, old)
        assert makespan_of(costs, dev.edge, kept) <= makespan_of(costs, dev.edge, new) * (1 + 1e-12)
        assert (kept != old).sum() <= (new != old).sum()
