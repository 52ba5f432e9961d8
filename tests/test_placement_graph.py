"""Layer graph extras: host profiling replaces FLOP estimates without a second code path."""

from __future__ import annotations

import math

from tierflow.placement.cost import Profile, TierSpeeds, batch_time_s
from tierflow.placement.graph import attach_profile, build_layer_graph
from tierflow.placement.partition import partition
from tierflow.placement.profile import time_layers
from tierflow.tiers.models import InputShape, build_model


def test_a_timed_profile_feeds_the_partitioner():
    model = build_model("mlp", InputShape(1, 8, 8, 10))
    graph = build_layer_graph(model, (1, 8, 8), batch_size=4)
    seconds = time_layers(model, "mlp", (1, 8, 8, 10), batch_size=4, repeats=3).per_sample_seconds()
    assert set(seconds) == set(graph.nodes)
    assert all(f >= 0 and b >= 0 for f, b in seconds.values())
    assert seconds["fc1"][0] > 0
    timed = attach_profile(graph, seconds, host_flops_per_s=1e9)
    assert math.isclose(timed.nodes["fc1"]["fwd_flops"], seconds["fc1"][0] * 1e9)
    assert timed.nodes["fc1"]["fwd_s"] == seconds["fc1"][0]
    assert graph.nodes["fc1"]["fwd_flops"] != timed.nodes["fc1"]["fwd_flops"]  # the original is untouched
    # At host speed on every tier and free links, the batch time is the measured host time.
    profile = Profile(TierSpeeds(1e9, 1e9, 1e30), batch_size=4)
    plan = partition(timed, profile)
    host_s = 4 * sum(f + b for f, b in seconds.values())
    assert math.isclose(batch_time_s(timed, plan.assignment, profile), host_s, rel_tol=1e-9)


def test_building_the_graph_leaves_the_model_untouched():
    model = build_model("resnet_small", InputShape(3, 16, 16, 10))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    build_layer_graph(model, (3, 16, 16))
    after = model.state_dict()
    assert all((before[k] == after[k]).all() for k in before)
