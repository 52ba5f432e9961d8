"""Oracle: tierflow's own SGD and Adam (tiers/optim.py) == torch.optim's, bit for bit, and their state
round-trips the way sessions and checkpoints move it. No Ray here."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tierflow.tiers.models import InputShape, build_model
from tierflow.tiers.optim import OptimizerSpec, make_optimizer
from tierflow.tiers.session import Session, SplitKey, StageFactory, load_optimizer_state, optimizer_state
from tierflow.tiers.split import assignment_from_cuts, trace

SHAPE = InputShape(1, 8, 8, 10)
STEPS = 40
SPECS = {
    "sgd": OptimizerSpec("sgd", lr=0.05),
    "sgd-wd": OptimizerSpec("sgd", lr=0.05, weight_decay=1e-3),
    "momentum": OptimizerSpec("sgd", lr=0.05, momentum=0.9),
    "momentum-wd": OptimizerSpec("sgd", lr=0.03, momentum=0.9, weight_decay=5e-4),
    "adam": OptimizerSpec("adam", lr=0.01),
    "adam-wd": OptimizerSpec("adam", lr=0.003, weight_decay=1e-3),
}


def _torch_optimizer(params, spec: OptimizerSpec) -> torch.optim.Optimizer:
    if spec.name == "adam":
        return torch.optim.Adam(params, lr=spec.lr, weight_decay=spec.weight_decay)
    return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)


def _batches(n: int, seed: int = 3):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        x = torch.from_numpy(rng.standard_normal((16, 1, 8, 8)).astype(np.float32))
        yield x, torch.from_numpy(rng.integers(0, 10, 16).astype(np.int64))


def _train(model, opt, batches) -> None:
    for x, y in batches:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()


def _assert_same_model(a, b) -> None:
    for (name, ta), tb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(ta, tb), name


@pytest.mark.parametrize("name", sorted(SPECS))
def test_bit_identical_to_torch_over_many_steps(name):
    spec = SPECS[name]
    ours_model, torch_model = build_model("vgg5", SHAPE, seed=1), build_model("vgg5", SHAPE, seed=1)
    ours, ref = make_optimizer(ours_model.parameters(), spec), _torch_optimizer(torch_model.parameters(), spec)
    _train(ours_model, ours, _batches(STEPS))
    _train(torch_model, ref, _batches(STEPS))
    _assert_same_model(ours_model, torch_model)
    ours_state, ref_state = ours.state_dict()["state"], ref.state_dict()["state"]
    assert ours_state.keys() == ref_state.keys()
    for idx, entry in ref_state.items():
        assert ours_state[idx].keys() == entry.keys()
        for field, value in entry.items():
            assert ours_state[idx][field].dtype == value.dtype, field
            assert torch.equal(ours_state[idx][field], value), (idx, field)


def test_a_parameter_without_a_gradient_is_skipped_like_torch():
    """A frozen or unused parameter gets no step and no state, as in torch."""
    spec = SPECS["adam-wd"]
    models = [torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2)) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    opts = [make_optimizer(models[0].parameters(), spec), _torch_optimizer(models[1].parameters(), spec)]
    x = torch.ones(5, 4)
    for m, opt in zip(models, opts, strict=True):
        for _ in range(3):
            opt.zero_grad()
            m[0](x).sum().backward()  # the second layer takes no part
            opt.step()
    _assert_same_model(*models)
    assert sorted(opts[0].state_dict()["state"]) == sorted(opts[1].state_dict()["state"]) == [0, 1]


@pytest.mark.parametrize("name", ["momentum-wd", "adam-wd"])
def test_torch_state_dict_loads_and_training_continues_identically(name):
    """A checkpoint written while sessions used torch.optim loads into ours, and the other way round."""
    spec = SPECS[name]
    a, b = build_model("vgg5", SHAPE, seed=2), build_model("vgg5", SHAPE, seed=2)
    ref = _torch_optimizer(a.parameters(), spec)
    _train(a, ref, _batches(10))
    b.load_state_dict(a.state_dict())
    ours = make_optimizer(b.parameters(), spec)
    ours.load_state_dict(ref.state_dict())
    _train(a, ref, _batches(10, seed=9))
    _train(b, ours, _batches(10, seed=9))
    _assert_same_model(a, b)
    back = _torch_optimizer(a.parameters(), spec)
    back.load_state_dict(ours.state_dict())  # ours -> torch.optim
    for idx, entry in back.state_dict()["state"].items():
        for field, value in entry.items():
            assert torch.equal(value, ours.state_dict()["state"][idx][field])


def test_unsupported_loaded_settings_are_refused():
    model = build_model("mlp", SHAPE)
    ref = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    ours = make_optimizer(model.parameters(), OptimizerSpec("sgd", lr=0.1, momentum=0.9))
    with pytest.raises(ValueError, match="nesterov"):
        ours.load_state_dict(ref.state_dict())


@pytest.mark.parametrize("name", ["momentum-wd", "adam-wd"])
def test_session_export_and_per_parameter_state_round_trip(name):
    """What migration and re-splits move: a session's export (JSON header + arrays) and a stage's
    optimizer state by parameter name both continue exactly as the unmoved session would."""
    spec = SPECS[name]
    factory = StageFactory("vgg5", SHAPE)
    gm = trace(build_model("vgg5", SHAPE))
    key = SplitKey.of(assignment_from_cuts(gm, ["pool1"]), 2)
    runner = factory.runner(key, 1, spec)
    rng = np.random.default_rng(0)
    acts = [rng.standard_normal((8, 32, 4, 4)).astype(np.float32) for _ in range(12)]
    labels = [rng.integers(0, 10, 8).astype(np.int64) for _ in range(12)]
    for a, y in zip(acts[:6], labels[:6], strict=True):
        runner.forward_loss_backward([a], y, track_input_grad=True)
    session = Session("d0", 1, key, runner, 8.0)
    meta, arrays = session.export()
    moved = Session.from_export(json.loads(json.dumps(meta)), arrays, factory, spec)
    resplit = factory.runner(key, 1, spec)
    resplit.module.load_state_dict(runner.module.state_dict())
    load_optimizer_state(resplit, {k: {f: np.array(v) for f, v in s.items()}
                                   for k, s in optimizer_state(runner).items()})
    for a, y in zip(acts[6:], labels[6:], strict=True):
        for r in (runner, moved.runner, resplit):
            r.forward_loss_backward([a], y, track_input_grad=True)
    _assert_same_model(runner.module, moved.runner.module)
    _assert_same_model(runner.module, resplit.module)


_ACTOR_CODE = """
import sys
import numpy as np
import tierflow.tiers.actors
from tierflow.tiers.hosts import EdgeServer
from tierflow.tiers.models import InputShape, build_model
from tierflow.tiers.optim import OptimizerSpec
from tierflow.tiers.session import SplitKey
from tierflow.tiers.split import assignment_from_cuts, trace

shape = InputShape(1, 8, 8, 10)
key = SplitKey.of(assignment_from_cuts(trace(build_model("vgg5", shape)), ["pool1"]), 2)
state = {k: v.numpy() for k, v in build_model("vgg5", shape).state_dict().items()}
for name in ("sgd", "adam"):
    edge = EdgeServer("e", "vgg5", shape, OptimizerSpec(name, 0.1), token="0123456789abcdef0123456789abcdef")
    edge.open_session("d0", key, state, 1.0)
    edge.step("d0", [np.ones((4, 32, 4, 4), np.float32)], np.zeros(4, np.int64))
print(sorted(m for m in ("torch._dynamo", "sklearn") if m in sys.modules))
"""


def test_actor_imports_do_not_pull_in_dynamo():
    """torch.optim's optimizers import torch._dynamo (a second or more per actor process); an edge that
    opens a session and steps it must not, nor import scikit-learn."""
    out = subprocess.run([sys.executable, "-c", _ACTOR_CODE], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout
