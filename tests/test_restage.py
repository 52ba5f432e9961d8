"""A re-split moves each layer's optimizer state with it: training goes on exactly as if unsplit."""

from __future__ import annotations

import numpy as np

from tierflow.tiers.models import InputShape, build_model
from tierflow.tiers.optim import OptimizerSpec
from tierflow.tiers.session import (
    SplitKey,
    StageFactory,
    load_optimizer_state,
    load_partition,
    optimizer_state,
    partition_state,
)
from tierflow.tiers.split import assignment_from_cuts
from tierflow.tiers.step import run_local_step

SHAPE = InputShape(1, 8, 8, 10)


def _key(factory: StageFactory, cuts: list) -> SplitKey:
    return SplitKey.of(assignment_from_cuts(factory._gm, cuts), len(cuts) + 1)


def _runners(factory, key, spec, state, opt_state=None):
    runners = [factory.runner(key, k, spec) for k in range(key.n_tiers)]
    for r in runners:
        load_partition(r, state)
        if opt_state:
            load_optimizer_state(r, opt_state)
    return runners


def test_a_re_split_mid_training_continues_like_the_unsplit_model():
    for spec in (OptimizerSpec("sgd", lr=0.05, momentum=0.9, weight_decay=1e-4), OptimizerSpec("adam", lr=1e-3)):
        factory = StageFactory("vgg5", SHAPE)
        state = {k: v.detach().numpy().copy() for k, v in build_model("vgg5", SHAPE, seed=1).state_dict().items()}
        rng = np.random.default_rng(0)
        batches = [(rng.standard_normal((8, 1, 8, 8)).astype(np.float32), rng.integers(0, 10, 8)) for _ in range(6)]
        whole = _runners(factory, _key(factory, []), spec, state)
        split = _runners(factory, _key(factory, ["pool1"]), spec, state)
        for x, y in batches[:3]:
            run_local_step(whole, x, y)
            run_local_step(split, x, y)
        # Re-split device | edge | cloud at other cuts: weights and every layer's optimizer state move.
        merged_state, merged_opt = {}, {}
        for r in split:
            merged_state.update(partition_state(r))
            merged_opt.update(optimizer_state(r))
        assert "conv1.weight" in merged_opt and "fc2.weight" in merged_opt
        resplit = _runners(factory, _key(factory, ["pool2", "relu4"]), spec, merged_state, merged_opt)
        for x, y in batches[3:]:
            run_local_step(whole, x, y)
            run_local_step(resplit, x, y)
        got = {}
        for r in resplit:
            got.update(partition_state(r))
        want = partition_state(whole[0])
        for name, value in want.items():
            assert np.allclose(got[name], value, atol=1e-6), (spec.name, name)


def test_losing_the_optimizer_state_would_show():
    """The oracle can fail: the same re-split without the carried state differs from the unsplit run."""
    spec = OptimizerSpec("sgd", lr=0.05, momentum=0.9)
    factory = StageFactory("mlp", SHAPE)
    state = {k: v.detach().numpy().copy() for k, v in build_model("mlp", SHAPE, seed=1).state_dict().items()}
    rng = np.random.default_rng(1)
    batches = [(rng.standard_normal((8, 1, 8, 8)).astype(np.float32), rng.integers(0, 10, 8)) for _ in range(4)]
    whole = _runners(factory, _key(factory, []), spec, state)
    split = _runners(factory, _key(factory, [2]), spec, state)
    for x, y in batches[:2]:
        run_local_step(whole, x, y)
        run_local_step(split, x, y)
    merged = {}
    for r in split:
        merged.update(partition_state(r))
    fresh = _runners(factory, _key(factory, [4]), spec, merged)  # no optimizer state carried
    for x, y in batches[2:]:
        run_local_step(whole, x, y)
        run_local_step(fresh, x, y)
    got = {}
    for r in fresh:
        got.update(partition_state(r))
    assert not np.allclose(got["fc1.weight"], partition_state(whole[0])["fc1.weight"], atol=1e-6)
