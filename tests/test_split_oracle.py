"""Oracle: split training through the tiers equals monolithic training (no Ray in this file)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tierflow.tiers.models import InputShape, build_model
from tierflow.tiers.optim import OptimizerSpec, make_optimizer
from tierflow.tiers.split import SplitError, assignment_from_cuts, split_graph, split_model, trace
from tierflow.tiers.step import StageRunner, run_local_step

SHAPE = InputShape(1, 8, 8, 10)
OPT = OptimizerSpec("sgd", lr=0.05, momentum=0.9, weight_decay=1e-4)


def _batches(n_steps: int, batch: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    for _ in range(n_steps):
        x = rng.standard_normal((batch, 1, 8, 8)).astype(np.float32)
        y = rng.integers(0, 10, batch).astype(np.int64)
        yield x, y


def _train_monolithic(model, n_steps):
    model.train()
    opt = make_optimizer(model.parameters(), OPT)
    for x, y in _batches(n_steps):
        opt.zero_grad()
        F.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        opt.step()
    return model.state_dict()


def _train_split(model, cuts, n_steps):
    runners = [StageRunner(s, OPT) for s in split_model(model, cuts)]
    for x, y in _batches(n_steps):
        run_local_step(runners, x, y)
    merged = {}
    for r in runners:
        merged.update(r.module.state_dict())
    return merged


CASES = [
    ("vgg5", ["pool1"]),
    ("vgg5", ["pool1", "relu4"]),
    ("vgg5", [0, 5]),  # the edge runs the front, the device only holds the data
    ("vgg5", ["fc2"]),  # everything on the device, the edge computes the loss
    ("resnet_small", ["stem_2"]),
    ("resnet_small", ["block1_conv_b", "block3_relu_a"]),  # both cuts crossed by a skip connection
    ("resnet_small", ["block2_bn_b", "fc"]),
]


@pytest.mark.parametrize(("model_name", "cuts"), CASES)
def test_split_training_equals_monolithic(model_name, cuts):
    base = build_model(model_name, SHAPE, seed=3)
    expected = _train_monolithic(copy.deepcopy(base), n_steps=6)
    got = _train_split(copy.deepcopy(base), cuts, n_steps=6)
    assert set(got) == set(expected)
    for name, value in expected.items():
        diff = (got[name].double() - value.double()).abs().max().item()
        assert diff <= 1e-5, f"{name}: {diff}"


def test_skip_connection_cut_sends_more_than_one_tensor():
    stages = split_model(build_model("resnet_small", SHAPE), ["block1_conv_b"])
    assert len(stages[1].input_names) == 2  # block1's residual input and its main branch


def test_single_tier_trains_on_the_device_alone():
    base = build_model("mlp", SHAPE, seed=1)
    expected = _train_monolithic(copy.deepcopy(base), n_steps=3)
    got = _train_split(copy.deepcopy(base), [], n_steps=3)
    for name, value in expected.items():
        assert torch.allclose(got[name], value, atol=1e-6)


def test_split_rejects_bad_cuts():
    gm = trace(build_model("vgg5", SHAPE))
    with pytest.raises(SplitError, match="unknown layer 'nope'"):
        assignment_from_cuts(gm, ["nope"])
    with pytest.raises(SplitError, match="between 0 and 12"):
        assignment_from_cuts(gm, [13])
    with pytest.raises(SplitError, match="comes before"):
        assignment_from_cuts(gm, ["conv3", "conv1"])


def test_split_rejects_downward_flow():
    gm = trace(build_model("vgg5", SHAPE))
    assignment = assignment_from_cuts(gm, ["conv2"])
    assignment["conv1"] = 1  # conv1 above relu1, which consumes it: data would flow down
    assignment["relu1"] = 0
    with pytest.raises(SplitError, match="only flow upward"):
        split_graph(gm, assignment, 2)
