"""clone_module: a stage's private copy equals a deepcopy in every value and in training, and is
independent of its template (the oracle is copy.deepcopy, what the stages used before)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tierflow.tiers.clone import clone_module
from tierflow.tiers.models import BUILTIN_MODELS, InputShape, build_model
from tierflow.tiers.split import trace

SHAPE = InputShape(channels=1, height=8, width=8, num_classes=10)


def _train(module, x, y, steps=3):
    opt = torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.9)
    module.train()
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(module(x), y).backward()
        opt.step()
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("name", sorted(BUILTIN_MODELS))
def test_a_clone_trains_exactly_as_a_deepcopy_and_leaves_the_template_alone(name):
    torch.manual_seed(0)
    template = trace(build_model(name, SHAPE, seed=3))
    before = {k: v.detach().clone() for k, v in template.state_dict().items()}
    x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 10, (6,))
    clone = clone_module(template)
    assert type(clone) is type(template)  # the generated class (and its compiled forward) is shared
    got = _train(clone, x, y)
    want = _train(copy.deepcopy(template), x, y)
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k], want[k]), k  # batch norm's running statistics included
    for k, v in template.state_dict().items():
        assert torch.equal(v, before[k]), f"training the clone changed the template's {k}"


def test_a_clones_tensors_and_hooks_are_its_own():
    template = trace(build_model("mlp", SHAPE, seed=0))
    a, b = clone_module(template), clone_module(template)
    shared = {p.data_ptr() for p in template.parameters()}
    assert not shared & {p.data_ptr() for p in a.parameters()}
    assert not {p.data_ptr() for p in a.parameters()} & {p.data_ptr() for p in b.parameters()}
    calls = []
    a.register_forward_hook(lambda *_: calls.append("a"))
    b(torch.randn(2, 1, 8, 8))
    template(torch.randn(2, 1, 8, 8))
    assert calls == []
    a(torch.randn(2, 1, 8, 8))
    assert calls == ["a"]
    a.eval()
    assert b.training and template.training


@pytest.mark.parametrize("name", sorted(BUILTIN_MODELS))
def test_a_clone_given_values_equals_a_clone_loaded_with_them(name):
    """What a migrated or opened session is built with: the arrays' values (float64 arrays cast to
    the stage's float32, as load_partition casts), and the template untouched."""
    from tierflow.tiers.optim import OptimizerSpec
    from tierflow.tiers.session import StageFactory, load_partition
    from tierflow.tiers.step import StageRunner

    template = trace(build_model(name, SHAPE, seed=3))
    before = {k: v.detach().clone() for k, v in template.state_dict().items()}
    values = {k: (v.detach().numpy() * 2 + 1).astype(np.float64 if v.is_floating_point() else v.numpy().dtype)
              for k, v in build_model(name, SHAPE, seed=4).state_dict().items()}
    got = clone_module(template, values).state_dict()
    want_runner = StageRunner(StageFactory(name, SHAPE).stage(*_whole(name)), OptimizerSpec("sgd", lr=0.1))
    load_partition(want_runner, values)
    want = want_runner.module.state_dict()
    for k in want:
        assert got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]), k
    for k, v in template.state_dict().items():
        assert torch.equal(v, before[k]), k


def _whole(name):
    from tierflow.tiers.session import SplitKey
    from tierflow.tiers.split import assignment_from_cuts

    return SplitKey.of(assignment_from_cuts(trace(build_model(name, SHAPE)), []), 1), 0
