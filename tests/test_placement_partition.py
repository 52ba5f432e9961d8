"""Min cut vs brute force on random DAGs, and on the real VGG-5 and ResNet graphs."""

from __future__ import annotations

import math
from dataclasses import replace

import networkx as nx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tierflow.placement.cost import Profile, TierSpeeds, batch_time_s, cost_graph, round_time_s
from tierflow.placement.errors import InfeasiblePlacementError
from tierflow.placement.graph import build_layer_graph, model_flops
from tierflow.placement.partition import brute_force, partition
from tierflow.tiers.models import InputShape, build_model

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def random_instance(draw, max_nodes: int = 8, pins: bool = True, memory: bool = True):
    n = draw(st.integers(2, max_nodes))
    k = draw(st.sampled_from([2, 3]))
    g = nx.DiGraph()
    g.graph["source"] = "n0"
    magnitude = st.sampled_from([0.0, 1.0, 3.0, 1e3, 7e5, 2e6, 1.234567e7])
    for i in range(n):
        g.add_node(
            f"n{i}",
            order=i,
            fwd_flops=0.0 if i == 0 else draw(magnitude) * draw(st.floats(0.5, 2.0)),
            bwd_flops=0.0 if i == 0 else draw(magnitude),
            activation_bytes=draw(magnitude) * draw(st.floats(0.5, 2.0)),
            param_bytes=draw(st.integers(0, 100)),
        )
        if i > 0:
            preds = draw(st.sets(st.integers(0, i - 1), min_size=1, max_size=min(3, i)))
            for p in preds:
                g.add_edge(f"n{p}", f"n{i}")
        if pins and i > 0 and draw(st.integers(0, 5)) == 0:
            g.nodes[f"n{i}"]["tier"] = draw(st.integers(0, k - 1))
    speeds = TierSpeeds.of(
        [draw(st.floats(1e3, 1e9)) for _ in range(k)], [draw(st.floats(1e2, 1e9)) for _ in range(k - 1)]
    )
    profile = Profile(
        speeds, batch_size=draw(st.integers(1, 4)), private_layers=draw(st.integers(0, 2)), param_state_factor=1.0,
        steps_per_round=draw(st.integers(1, 8)), syncs_per_round=draw(st.integers(0, 2)),
    )
    fraction = draw(st.sampled_from([None, None, 0.2, 0.5, 0.8])) if memory else None
    if fraction is not None:  # a limit that binds: a share of the all-on-device memory
        total = sum(cost_graph(g, profile).memory_bytes)
        profile = replace(profile, device_memory_bytes=fraction * total)
    return g, profile


def _check_against_oracle(g: nx.DiGraph, profile: Profile, method: str) -> None:
    try:
        oracle = brute_force(g, profile)
    except InfeasiblePlacementError:
        with pytest.raises(InfeasiblePlacementError):
            partition(g, profile, method=method)
        return
    plan = partition(g, profile, method=method)
    # The reported cost is the exact float cost of the returned assignment.
    assert plan.batch_time_s == batch_time_s(g, plan.assignment, profile)
    assert plan.device_memory_bytes <= profile.device_memory_bytes
    # Never better than the optimum; worse by at most the integer-rounding bound (usually equal).
    tol = 1e-9 * oracle.batch_time_s + plan.rounding_bound_s
    assert oracle.batch_time_s - 1e-12 * oracle.batch_time_s <= plan.batch_time_s <= oracle.batch_time_s + tol


@SETTINGS
@given(random_instance())
def test_min_cut_equals_brute_force_on_random_dags(inst):
    _check_against_oracle(*inst, method="mincut")


@SETTINGS
@given(random_instance(pins=False, memory=False))
def test_min_cut_cost_is_exactly_the_brute_force_cost_without_ties(inst):
    g, profile = inst
    plan, oracle = partition(g, profile, method="mincut"), brute_force(g, profile)
    assert plan.batch_time_s <= oracle.batch_time_s + plan.rounding_bound_s
    if plan.assignment != oracle.assignment:  # only a tie (within rounding) may pick another plan
        assert math.isclose(plan.batch_time_s, oracle.batch_time_s, rel_tol=1e-9, abs_tol=plan.rounding_bound_s)


def _chain(n: int, k: int, seed: int) -> tuple[nx.DiGraph, Profile]:
    import random

    rng = random.Random(seed)
    g = nx.DiGraph(source="n0")
    for i in range(n):
        g.add_node(
            f"n{i}",
            order=i,
            fwd_flops=0.0 if i == 0 else rng.uniform(0, 1e6),
            bwd_flops=0.0 if i == 0 else rng.uniform(0, 2e6),
            activation_bytes=rng.uniform(1, 1e4),
            param_bytes=rng.randint(0, 100),
        )
        if i:
            g.add_edge(f"n{i - 1}", f"n{i}")
    speeds = TierSpeeds.of([rng.uniform(1e6, 1e9) for _ in range(k)], [rng.uniform(1e4, 1e8) for _ in range(k - 1)])
    return g, Profile(speeds, batch_size=2, device_memory_bytes=rng.choice([math.inf, 6e4]))


@pytest.mark.parametrize("seed", range(20))
def test_chain_fast_path_equals_brute_force(seed):
    g, profile = _chain(7, 2 + seed % 2, seed)
    assert partition(g, profile, method="chain").batch_time_s == brute_force(g, profile).batch_time_s
    _check_against_oracle(g, profile, "mincut")


@pytest.fixture(scope="module")
def real_graphs():
    shape = InputShape(3, 32, 32, 10)
    return {name: build_layer_graph(build_model(name, shape), (3, 32, 32)) for name in ("vgg5", "resnet_small")}


def test_layer_graph_flops_add_up_to_the_whole_model(real_graphs):
    shape = InputShape(3, 32, 32, 10)
    for name, g in real_graphs.items():
        fwd, bwd = model_flops(build_model(name, shape), (3, 32, 32))
        assert sum(d["fwd_flops"] for _, d in g.nodes(data=True)) == fwd
        assert sum(d["bwd_flops"] for _, d in g.nodes(data=True)) == bwd
        assert g.graph["source"] == "x" and g.in_degree("x") == 0
    vgg = real_graphs["vgg5"]
    assert vgg.nodes["x"]["activation_bytes"] == 3 * 32 * 32 * 4
    assert vgg.nodes["conv1"]["param_bytes"] == (3 * 9 * 32 + 32) * 4
    # The first conv computes no grad-input: the raw data needs none.
    assert vgg.nodes["conv1"]["bwd_flops"] == vgg.nodes["conv1"]["fwd_flops"]
    assert vgg.nodes["conv2"]["bwd_flops"] == 2 * vgg.nodes["conv2"]["fwd_flops"]
    resnet = real_graphs["resnet_small"]
    assert sum(resnet.out_degree(n) > 1 for n in resnet) == 3  # one skip connection per block


def test_layer_graph_names_match_the_split_code(real_graphs):
    from tierflow.tiers.split import compute_nodes, trace

    gm = trace(build_model("resnet_small", InputShape(3, 32, 32, 10)))
    assert set(real_graphs["resnet_small"].nodes) == set(compute_nodes(gm)) | {"x"}


def _exhaustive_real(g: nx.DiGraph, profile: Profile):
    """Exhaustive search for the real graphs: the chain path for VGG, brute force over ResNet blocks."""
    return brute_force(g, profile)


@pytest.mark.parametrize("model", ["vgg5", "resnet_small"])
@pytest.mark.parametrize(
    "speeds",
    [
        TierSpeeds(1e9, 2e10, 1e7),
        TierSpeeds(1e9, 2e10, 5e6, 1e11, 1e8),
        TierSpeeds(5e10, 1e10, 1e9, 1e11, 1e7),
        TierSpeeds(1e8, 1e11, 1e9, 1e12, 1e6),
        TierSpeeds(3e9, 3e10, 2e7, 3e11, 5e8),
    ],
)
def test_real_models_min_cut_equals_exhaustive(real_graphs, model, speeds):
    g = real_graphs[model]
    profile = Profile(speeds, batch_size=32, private_layers=1)
    plan = partition(g, profile, method="mincut")
    if model == "vgg5":
        best = partition(g, profile, method="chain")
    else:
        best = _exhaustive_real(g, profile)
    assert plan.batch_time_s <= best.batch_time_s + plan.rounding_bound_s
    assert math.isclose(plan.batch_time_s, best.batch_time_s, rel_tol=1e-9)
    assert plan.assignment["x"] == 0 and plan.assignment[sorted(g, key=lambda n: g.nodes[n]["order"])[1]] == 0


def test_memory_limit_is_respected_on_resnet(real_graphs):
    g = real_graphs["resnet_small"]
    speeds = TierSpeeds(1e11, 1e10, 1e9, 1e11, 1e8)  # a fast device: everything wants to stay local
    free = partition(g, Profile(speeds, batch_size=8))
    limit = free.device_memory_bytes / 3
    plan = partition(g, Profile(speeds, batch_size=8, device_memory_bytes=limit))
    assert plan.device_memory_bytes <= limit < free.device_memory_bytes
    assert plan.batch_time_s >= free.batch_time_s


def test_round_time_adds_steps_and_device_parameter_sync(real_graphs):
    g = real_graphs["vgg5"]
    profile = Profile(TierSpeeds(1e9, 2e10, 1e7), batch_size=16, steps_per_round=5, syncs_per_round=2)
    local = {n: 0 for n in g.nodes}  # every weight on the device: two syncs of all of them a round
    compute = sum(16 * (g.nodes[n]["fwd_flops"] + g.nodes[n]["bwd_flops"]) / 1e9 for n in g.nodes)
    params = sum(g.nodes[n]["param_bytes"] for n in g.nodes)
    expect = 5 * compute + 2 * (2 * 8 * params / 1e7)
    assert math.isclose(round_time_s(g, local, profile), expect, rel_tol=1e-12)
    assert cost_graph(g, profile).is_chain()


def _two_layer_chain(param_bytes: float) -> nx.DiGraph:
    g = nx.DiGraph(source="x")
    g.add_node("x", order=0, fwd_flops=0.0, bwd_flops=0.0, activation_bytes=100.0, param_bytes=0.0)
    g.add_node("fc", order=1, fwd_flops=1e3, bwd_flops=2e3, activation_bytes=10.0, param_bytes=param_bytes)
    g.add_node("head", order=2, fwd_flops=1e3, bwd_flops=2e3, activation_bytes=4.0, param_bytes=0.0)
    g.add_edges_from([("x", "fc"), ("fc", "head")])
    return g


@pytest.mark.parametrize("method", ["chain", "mincut"])
def test_the_sync_of_heavy_device_weights_is_part_of_what_the_planner_minimises(method):
    """A fast device on a slow link keeps light layers, but not a layer whose weights it must sync."""
    speeds = TierSpeeds(1e9, 1e9, 1e6)
    profile = Profile(speeds, batch_size=1, steps_per_round=4, syncs_per_round=1)
    light = partition(_two_layer_chain(0.0), profile, method=method)
    assert light.assignment == {"x": 0, "fc": 0, "head": 0}
    heavy_graph = _two_layer_chain(1e6)  # 1 MB of weights: 16 s of sync a round at 1 Mbit/s
    heavy = partition(heavy_graph, profile, method=method)
    assert heavy.assignment == {"x": 0, "fc": 1, "head": 1}
    expect = 6e3 / 1e9 + 2 * 8 * 100 / 1e6  # both layers on the edge, x's 100 bytes up and back
    assert math.isclose(heavy.batch_time_s, expect, rel_tol=1e-12)
    oracle = brute_force(heavy_graph, profile)
    assert math.isclose(oracle.batch_time_s, heavy.batch_time_s, rel_tol=1e-12)
