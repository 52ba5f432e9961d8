"""Capability rings as a round policy: the plan as data, the ring average, and the oracle: a
ring's split training through real actors equals one plain model trained member after member."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_runner import small_scenario

from orchestrator.rings_round import hops_in_interval, plan_ring_round, ring_average
from orchestrator.runner import RunOptions, run_scenario
from orchestrator.scenario import parse_scenario
from orchestrator.world import build_world
from tiers.hosts import BatchSampler
from tiers.models import build_model
from tiers.optim import make_optimizer
from tiers.session import SplitKey


def test_hops_fill_the_interval_fast_rings_make_more_and_every_ring_at_least_one():
    assert hops_in_interval((1.0, 1.0, 1.0), 3.0) == 3
    assert hops_in_interval((0.25, 0.25), 3.0) == 12
    assert hops_in_interval((5.0,), 3.0) == 1  # slower than the interval: still one hop
    assert hops_in_interval((1.0, 2.0), 4.0) == 3  # 1 + 2 + 1 fits, the next 2 does not
    key = SplitKey((("x", 0),), 1)
    plan = plan_ring_round([("ring:0", ("a", "b"), key, (0.5, 0.5)), ("ring:1", ("c",), key, (2.0,))], 2.0)
    assert [r.hops for r in plan.rings] == [4, 1]
    assert "ring:0: 4 hops over a -> b" in str(plan)
    assert plan == plan_ring_round([("ring:0", ("a", "b"), key, (0.5, 0.5)), ("ring:1", ("c",), key, (2.0,))], 2.0)


def test_ring_average_weights_by_samples_and_drops_rings_that_trained_nothing():
    a, b = {"w": np.array([1.0, 3.0])}, {"w": np.array([5.0, 7.0])}
    np.testing.assert_allclose(ring_average([(a, 30.0), (b, 10.0)])["w"], [2.0, 4.0])
    np.testing.assert_allclose(ring_average([(a, 0.0), (b, 10.0)])["w"], [5.0, 7.0])


def sequential_oracle(scenario, rounds: int, order: list[str]) -> dict[str, torch.Tensor]:
    """One plain model: each round, member 0 trains local_steps on its batches, then member 1, ...;
    one optimizer per round (the ring's state passes along; ring sessions start afresh each round)."""
    world = build_world(scenario)
    tr = scenario.training
    model = build_model(scenario.model.name, world.dataset.shape, seed=tr.seed)
    model.train()
    samplers = [BatchSampler(len(idx), tr.batch_size, tr.seed * 100_003 + i) for i, idx in enumerate(world.shards)]
    for _ in range(rounds):
        opt = make_optimizer(model.parameters(), tr.optimizer)
        for name in order:
            i = [d.name for d in scenario.devices].index(name)
            idx = world.shards[i]
            x, y = world.dataset.x_train[idx], world.dataset.y_train[idx]
            for _ in range(tr.local_steps):
                b = samplers[i].next_indices()
                opt.zero_grad()
                F.cross_entropy(model(torch.from_numpy(x[b])), torch.from_numpy(y[b])).backward()
                opt.step()
    return model.state_dict()


@pytest.mark.ray
@pytest.mark.parametrize("split", [["pool1"], ["pool1", "relu4"]])
def test_a_ring_equals_sequential_training_member_after_member(ray_session, tmp_path, split):
    # Three equal devices on two edges, one ring, cloud_every = 3: the interval holds exactly three hops,
    # so each member trains once per round, and the ring session moves between the edges.
    spec = small_scenario("vgg5", split, devices=3, edges=2, rounds=2, local_steps=3, cloud_every=3)
    spec["policy"] = {"rings": 1}
    scenario = parse_scenario(spec, "ring.yaml")
    summary = run_scenario(scenario, RunOptions(out_dir=tmp_path, progress=False))
    events = [json.loads(x) for x in (tmp_path / "events.jsonl").read_text().splitlines()]
    rings = [e for e in events if e["event"] == "rings_formed"]
    assert len(rings) == 1 and sorted(rings[0]["rings"]["ring:0"]) == ["d0", "d1", "d2"]
    order = rings[0]["rings"]["ring:0"]
    assert summary["migrations"] >= 2  # the ring's session followed its members across the edges
    rounds = [e for e in events if e["event"] == "round_end"]
    assert all(e["devices_per_ring"] == {"ring:0": 3} for e in rounds)
    assert all(e["samples"] == 3 * 3 * 16 for e in rounds)
    got = torch.load(tmp_path / "model.pt")
    expected = sequential_oracle(scenario, rounds=2, order=order)  # the ring's visit order
    for name, value in expected.items():
        diff = (got[name].double() - value.double()).abs().max().item()
        assert diff <= 1e-5, f"{name}: {diff}"
