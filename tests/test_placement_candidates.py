"""The candidate set gives every device in the box the same cost as its own min cut."""

from __future__ import annotations

import math
from dataclasses import replace

import networkx as nx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_placement_partition import random_instance

from tierflow.placement.candidates import ParameterBox, build_candidate_set
from tierflow.placement.cost import Profile, TierSpeeds, cost_graph, time_of
from tierflow.placement.graph import build_layer_graph
from tierflow.placement.partition import brute_force_vector, min_cut
from tierflow.tiers.models import InputShape, build_model

BOX3 = ParameterBox((1e8, 1e11), (1e9, 1e12), (1e5, 1e9), (1e10, 1e13), (1e5, 1e10))
BOX2 = ParameterBox((1e8, 1e11), (1e9, 1e12), (1e5, 1e9))


def _sample(box: ParameterBox, n: int, seed: int) -> np.ndarray:
    r = np.array(box.ranges())
    return np.exp(np.random.default_rng(seed).uniform(np.log(r[:, 0]), np.log(r[:, 1]), size=(n, len(r))))


def _speeds(row: np.ndarray, k: int) -> TierSpeeds:
    return TierSpeeds.of(row[:k].tolist(), row[k:].tolist())


def _plan(cs, params: np.ndarray):
    k = cs.box.num_tiers
    if k == 3:
        return cs.plan(params[:, 0], params[:, 1], params[:, 2], params[:, 3], params[:, 4])
    return cs.plan(params[:, 0], params[:, 1], None, params[:, 2])


def _check_against_brute_force(cg, box: ParameterBox, params: np.ndarray) -> np.ndarray:
    """Every device's plan (candidate or min-cut fallback) costs what brute force costs."""
    cs = build_candidate_set(cg, box)
    idx = _plan(cs, params)
    plans = cs.plans([_speeds(row, cg.num_tiers) for row in params])
    for row, j, plan in zip(params, idx, plans, strict=True):
        speeds = _speeds(row, cg.num_tiers)
        best = time_of(cg, brute_force_vector(cg, speeds), speeds)
        assert plan.method == ("candidates" if j >= 0 else "mincut")
        assert math.isclose(plan.batch_time_s, best, rel_tol=1e-9), (row.tolist(), plan.method)
        if j >= 0:
            assert math.isclose(time_of(cg, cs.assignments[j], speeds), best, rel_tol=1e-9)
    return idx


def _random_dag_case(inst, seed: int) -> None:
    g, profile = inst
    cg = cost_graph(g, profile)
    box = BOX3 if cg.num_tiers == 3 else BOX2
    try:
        brute_force_vector(cg, profile.speeds)
    except Exception:
        return  # contradictory pins: nothing to plan
    _check_against_brute_force(cg, box, _sample(box, 40, seed))


# A fixed set of examples for reproducible CI, and a fresh random set on every run: an unseeded
# run is what found the unscaled-LP and min-cut-rounding gaps (see the regressions below).
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(random_instance(max_nodes=7, memory=False), st.integers(0, 2**31))
def test_candidate_plan_equals_brute_force_on_random_dags(inst, seed):
    _random_dag_case(inst, seed)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_instance(max_nodes=7, memory=False), st.integers(0, 2**31))
def test_candidate_plan_equals_brute_force_on_random_dags_unseeded(inst, seed):
    _random_dag_case(inst, seed)


def _graph(nodes: list[tuple[str, dict]], edges: list[tuple[str, str]]) -> nx.DiGraph:
    g = nx.DiGraph(source="n0")
    for i, (name, attrs) in enumerate(nodes):
        g.add_node(name, order=i, **{"fwd_flops": 0.0, "bwd_flops": 0.0, "activation_bytes": 0.0, **attrs})
    g.add_edges_from(edges)
    return g


def test_regression_region_of_tiny_time_differences_is_not_lost():
    """Shrunk unseeded counterexample: one layer of 1 FLOP, nothing to transfer, two tiers.

    The two partitions' times differ by about 1e-10 s, so the region halfspaces had rows of size
    1e-8; the Chebyshev LP (absolute tolerances) called the device-side region empty and it was
    pruned, and a device faster than its edge was sent to the edge: 1.55e-10 s instead of 1.23e-10.
    """
    g = _graph([("n0", {}), ("n1", {"bwd_flops": 1.0})], [("n0", "n1")])
    cg = cost_graph(g, Profile(TierSpeeds(1e3, 1e3, 1e2), batch_size=1, param_state_factor=1.0))
    cs = build_candidate_set(cg, BOX2)
    assert set(cs.assignments) == {(0, 0), (0, 1)} and cs.proved.all()
    failing_device = np.array([[8144886973.076105, 6447036682.71645, 145845.8566595888]])
    idx = _check_against_brute_force(cg, BOX2, np.vstack([failing_device, _sample(BOX2, 40, 0)]))
    assert cs.assignments[idx[0]] == (0, 0)


def test_regression_candidate_set_is_never_empty():
    """Shrunk unseeded counterexample: the same LP trouble pruned every candidate (a crash)."""
    pinned = {"tier": 0}
    g = _graph(
        [("n0", {}), ("n1", pinned), ("n2", pinned), ("n3", pinned), ("n4", {"bwd_flops": 1.0})],
        [("n0", "n1"), ("n0", "n2"), ("n0", "n3"), ("n0", "n4")],
    )
    cg = cost_graph(g, Profile(TierSpeeds(1e3, 1e3, 1e2, 1e3, 1e2), batch_size=1, param_state_factor=1.0))
    assert len(build_candidate_set(cg, BOX3)) == 3
    _check_against_brute_force(cg, BOX3, _sample(BOX3, 40, 0))


def test_regression_min_cut_is_exact_relative_to_the_optimum():
    """A huge transfer nobody pays set the integer scale, and 1e-11 s choices rounded to a tie.

    The min cut then returned a plan 50% slower than brute force; at a box vertex that would
    certify a wrong candidate.
    """
    g = _graph(
        [("n0", {"activation_bytes": 1.2e7}), ("n1", {"fwd_flops": 1.0}), ("n2", {"fwd_flops": 1.0})],
        [("n0", "n1"), ("n1", "n2")],
    )
    speeds = TierSpeeds(2e11, 1e11, 1e5)
    cg = cost_graph(g, Profile(speeds, batch_size=1))
    cut = min_cut(cg, speeds)
    assert cut.x == brute_force_vector(cg, speeds) == (0, 0, 0)
    assert cut.rounding_bound_s <= 1e-12 * time_of(cg, cut.x, speeds)


def test_unproved_candidates_send_their_devices_to_a_min_cut():
    g = _graph([("n0", {}), ("n1", {"bwd_flops": 1.0})], [("n0", "n1")])
    cg = cost_graph(g, Profile(TierSpeeds(1e3, 1e3, 1e2), batch_size=1, param_state_factor=1.0))
    cs = build_candidate_set(cg, BOX2)
    device_side = cs.assignments.index((0, 0))
    proved = np.ones(len(cs), dtype=bool)
    proved[device_side] = False
    half = replace(cs, proved=proved)
    params = _sample(BOX2, 200, 3)
    idx, full = _plan(half, params), _plan(cs, params)
    # Exactly the devices whose best candidate is the unproved one (or ties with it) fall back.
    assert ((idx == -1) == (full == device_side)).all() and (idx == -1).any() and (idx >= 0).any()
    plans = half.plans([_speeds(row, 2) for row in params])
    for row, j, plan in zip(params, idx, plans, strict=True):
        assert plan.method == ("mincut" if j < 0 else "candidates")
        speeds = _speeds(row, 2)
        assert math.isclose(plan.batch_time_s, time_of(cg, brute_force_vector(cg, speeds), speeds), rel_tol=1e-9)


@pytest.fixture(scope="module")
def resnet_cg():
    g = build_layer_graph(build_model("resnet_small", InputShape(3, 32, 32, 10)), (3, 32, 32))
    return cost_graph(g, Profile(TierSpeeds(1, 1, 1, 1, 1), batch_size=32, private_layers=1))


def test_resnet_candidate_set_matches_per_device_min_cuts(resnet_cg):
    cs = build_candidate_set(resnet_cg, BOX3)
    assert cs.proved.all()
    params = _sample(BOX3, 300, 7)
    idx = _plan(cs, params)
    for row, j in zip(params, idx, strict=True):
        speeds = _speeds(row, 3)
        cut = min_cut(resnet_cg, speeds)
        best = time_of(resnet_cg, cut.x, speeds)
        assert math.isclose(time_of(resnet_cg, cs.assignments[j], speeds), best, rel_tol=1e-9)


def test_outside_box_and_memory_fall_back_to_min_cut(resnet_cg):
    cs = build_candidate_set(resnet_cg, BOX2 if resnet_cg.num_tiers == 2 else BOX3)
    inside = TierSpeeds(1e10, 1e11, 1e7, 1e12, 1e8)
    outside = TierSpeeds(1e12, 1e11, 1e7, 1e12, 1e8)  # device faster than the box allows
    idx = cs.plan([1e10, 1e12], [1e11, 1e11], [1e12, 1e12], [1e7, 1e7], [1e8, 1e8])
    assert idx[0] >= 0 and idx[1] == -1
    plans = cs.plans([inside, outside])
    assert plans[0].method == "candidates" and plans[1].method == "mincut"
    for p, s in zip(plans, [inside, outside], strict=True):
        assert math.isclose(p.batch_time_s, time_of(resnet_cg, min_cut(resnet_cg, s).x, s), rel_tol=1e-9)
    # A memory limit the envelope's choice breaks sends the device to the exact constrained solver.
    fast_device = TierSpeeds(1e11, 1e10, 1e6, 1e12, 1e8)
    unconstrained = cs.plans([fast_device])[0]
    limit = unconstrained.device_memory_bytes / 2
    constrained = cs.plans([fast_device], device_memory_bytes=[limit])[0]
    assert constrained.method == "mincut" and constrained.device_memory_bytes <= limit


def test_fixed_dimensions_in_the_box(resnet_cg):
    box = ParameterBox((1e9, 1e9), (1e10, 1e12), (1e6, 1e6), (1e11, 1e11), (1e7, 1e10))
    cs = build_candidate_set(resnet_cg, box)
    params = np.array([[1e9, e, 1e11, 1e6, b] for e in (1e10, 1e11, 1e12) for b in (1e7, 1e8, 1e10)])
    for row, j in zip(params, _plan(cs, params), strict=True):
        speeds = _speeds(row, 3)
        best = time_of(resnet_cg, min_cut(resnet_cg, speeds).x, speeds)
        assert math.isclose(time_of(resnet_cg, cs.assignments[j], speeds), best, rel_tol=1e-9)
