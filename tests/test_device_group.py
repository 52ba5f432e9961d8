"""Oracle: a device group's batched step == each device training alone through tiers/hosts.py.

The looped side is DeviceHost.train itself (against plain EdgeServer/Cloud objects for splits), so
the reference is the code that runs today, not a second implementation of it. No Ray here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tierflow.tiers.device_group import DeviceGroup, DeviceState, draw_batch
from tierflow.tiers.hosts import Cloud, DeviceHost, DeviceSetup, EdgeServer
from tierflow.tiers.models import InputShape, build_model
from tierflow.tiers.optim import OptimizerSpec
from tierflow.tiers.session import SplitKey, partition_state
from tierflow.tiers.split import assignment_from_cuts, trace

SHAPE = InputShape(1, 8, 8, 10)
BATCH = 4
SHARDS = (13, 20, 9)  # unequal: the devices reshuffle at different steps
TOL = 1e-5
TOKEN = "0123456789abcdef0123456789abcdef"  # the data plane wants one; nothing here uses the network
MOMENTUM = OptimizerSpec("sgd", lr=0.05, momentum=0.9, weight_decay=1e-4)
OPTIMIZERS = {
    "momentum": MOMENTUM,
    "sgd": OptimizerSpec("sgd", lr=0.05),
    "adam": OptimizerSpec("adam", lr=0.01, weight_decay=1e-4),
}


def _setups(shards=SHARDS, prefix="d"):
    rng = np.random.default_rng(7)
    out = []
    for i, n in enumerate(shards):
        x = rng.standard_normal((n, SHAPE.channels, SHAPE.height, SHAPE.width)).astype(np.float32)
        y = rng.integers(0, SHAPE.num_classes, n).astype(np.int64)
        out.append(DeviceSetup(f"{prefix}{i}", x, y, BATCH, seed=100 + i))
    return out


def _key(model: str, cuts) -> SplitKey:
    gm = trace(build_model(model, SHAPE))
    return SplitKey.of(assignment_from_cuts(gm, cuts), len(cuts) + 1)


def _full_states(model: str, setups):
    """Each device starts from different weights, so a mixed-up slice cannot pass."""
    return {s.device_id: {k: v.numpy().copy() for k, v in build_model(model, SHAPE, seed=i).state_dict().items()}
            for i, s in enumerate(setups)}


def _host(model, opt, key, setups, states) -> DeviceHost:
    host = DeviceHost("h", model, SHAPE, opt, token=TOKEN)
    host.add_devices(setups)
    for s in setups:
        host.configure(s.device_id, key, states[s.device_id])
    return host


def _group(host: DeviceHost, key, opt, ids) -> DeviceGroup:
    """A group built from the devices' current state, as a host would build one."""
    states = {d: DeviceState(partition_state(host.devices[d].session.runner), host.optimizer_state(d)) for d in ids}
    return DeviceGroup(host.factory, key, opt, states)


MAX_DIFF: dict[str, float] = {}


def _diff(label: str, got: np.ndarray, want: np.ndarray) -> float:
    d = float(np.max(np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64)))) if np.size(want) else 0.0
    MAX_DIFF[label] = max(MAX_DIFF.get(label, 0.0), d)
    return d


def _assert_device_matches(label: str, got: DeviceState, host: DeviceHost, device_id: str) -> None:
    want = partition_state(host.devices[device_id].session.runner)
    assert set(got.weights) == set(want)
    for name, value in want.items():
        assert _diff(f"{label}/weights", got.weights[name], value) <= TOL, f"{device_id} {name}"
    want_opt = host.optimizer_state(device_id)
    assert set(got.optimizer) == set(want_opt), device_id
    for name, fields in want_opt.items():
        assert set(got.optimizer[name]) == set(fields)
        for f, value in fields.items():
            assert _diff(f"{label}/optimizer", got.optimizer[name][f], value) <= TOL, f"{device_id} {name} {f}"


@pytest.fixture(scope="module", autouse=True)
def _print_max_diffs():
    yield
    for label, d in sorted(MAX_DIFF.items()):
        print(f"max abs diff {label}: {d:.3g}")


# ----- device-only (1-tier) -----
ONE_TIER = [("mlp", "momentum"), ("vgg5", "momentum"), ("resnet_small", "momentum"),
            ("mlp", "sgd"), ("mlp", "adam"), ("resnet_small", "adam")]


@pytest.mark.parametrize(("model", "opt_name"), ONE_TIER)
def test_one_tier_group_equals_looped(model, opt_name):
    opt, key, setups = OPTIMIZERS[opt_name], _key(model, []), _setups()
    states = _full_states(model, setups)
    ids = [s.device_id for s in setups]
    looped, grouped = _host(model, opt, key, setups, states), _host(model, opt, key, setups, states)
    steps = 6  # past every shard's first epoch
    reports = {d: looped.train(d, steps, None, None) for d in ids}
    group = _group(grouped, key, opt, ids)
    results = group.step([draw_batch([grouped.devices[d] for d in ids]) for _ in range(steps)])
    got = group.unstack()
    for k, d in enumerate(ids):
        _assert_device_matches(f"1-tier/{model}/{opt_name}", got[d], looped, d)
        loss_sum = sum(float(r.loss[k]) * BATCH for r in results)
        assert _diff(f"1-tier/{model}/{opt_name}/loss", loss_sum, reports[d].loss_sum) <= 1e-4
        assert sum(int(r.correct[k]) for r in results) == reports[d].correct


def test_batch_norm_running_stats_stay_per_device():
    opt, key, setups = MOMENTUM, _key("resnet_small", []), _setups()
    same = {s.device_id: _full_states("resnet_small", setups[:1])["d0"] for s in setups}  # identical starts
    host = _host("resnet_small", opt, key, setups, same)
    ids = [s.device_id for s in setups]
    group = _group(host, key, opt, ids)
    group.step([draw_batch([host.devices[d] for d in ids]) for _ in range(2)])
    got = group.unstack()
    name = "block1.bn_a.running_mean"
    means = [got[d].weights[name] for d in ids]
    assert not np.allclose(means[0], 0.0)  # they moved
    assert not np.allclose(means[0], means[1]) and not np.allclose(means[1], means[2])  # each its own
    assert all(int(got[d].weights["block1.bn_a.num_batches_tracked"]) == 2 for d in ids)
    looped = _host("resnet_small", opt, key, setups, same)
    for d in ids:
        looped.train(d, 2, None, None)
        _assert_device_matches("batchnorm", got[d], looped, d)


def test_devices_with_different_batch_shapes_cannot_share_a_group():
    setups = _setups((13, 3))  # the second draws batches of 3
    host = _host("mlp", MOMENTUM, _key("mlp", []), setups, _full_states("mlp", setups))
    with pytest.raises(ValueError, match="one batch shape"):
        draw_batch([host.devices["d0"], host.devices["d1"]])


# ----- the device side of splits -----
class RecordingEdge:
    """Stands where DeviceHost.train expects its edge: records what crossed the device's link."""

    def __init__(self, edge):
        self.edge = edge
        self.log: dict[str, list[tuple[list[np.ndarray], list[np.ndarray]]]] = {}

    def step(self, device_id, arrays, labels):
        reply = self.edge.step(device_id, arrays, labels)
        self.log.setdefault(device_id, []).append(([np.array(a) for a in arrays], [np.array(g) for g in reply.grads]))
        return reply


def _edge(model, opt, key, states, ids) -> EdgeServer:
    cloud = None
    if key.n_tiers == 3:
        cloud = Cloud("c", model, SHAPE, opt, token=TOKEN)
        for d in ids:
            cloud.open_session(d, key, states[d], 1.0)
    edge = EdgeServer("e", model, SHAPE, opt, cloud=cloud, token=TOKEN)
    for d in ids:
        edge.open_session(d, key, states[d], 1.0)
    return edge


SPLITS = [
    ("mlp", ["relu1"]),
    ("mlp", ["fc1", "relu2"]),
    ("vgg5", ["pool1"]),
    ("vgg5", ["pool1", "relu4"]),
    ("vgg5", [0, 5]),  # the device only holds the data: a stage without parameters
    ("resnet_small", ["stem_2"]),
    ("resnet_small", ["block1_conv_b", "block3_relu_a"]),  # a skip connection: two tensors cross
]


@pytest.mark.parametrize(("model", "cuts"), SPLITS)
def test_split_device_side_group_equals_looped(model, cuts):
    opt, key, setups = MOMENTUM, _key(model, cuts), _setups()
    states = _full_states(model, setups)
    ids = [s.device_id for s in setups]
    label = f"{len(cuts) + 1}-tier/{model}/{'-'.join(map(str, cuts))}"
    looped = _host(model, opt, key, setups, states)
    edge = RecordingEdge(_edge(model, opt, key, states, ids))
    steps = 4
    for d in ids:
        looped.train(d, steps, edge, "e")

    grouped = _host(model, opt, key, setups, states)
    group_edge = _edge(model, opt, key, states, ids)  # the edge side stays looped: only its input is compared
    group = _group(grouped, key, opt, ids)
    for step in range(steps):
        x, y = draw_batch([grouped.devices[d] for d in ids])
        acts = group.forward([x])
        replies = [group_edge.step(d, [a[k] for a in acts], y[k]) for k, d in enumerate(ids)]
        for k, d in enumerate(ids):
            want_acts, want_grads = edge.log[d][step]
            for a, w in zip(acts, want_acts, strict=True):
                assert _diff(f"{label}/activations", a[k], w) <= TOL
            for g, w in zip(replies[k].grads, want_grads, strict=True):
                assert _diff(f"{label}/activation grads", g, w) <= TOL
        group.backward([np.stack([r.grads[i] for r in replies]) for i in range(len(acts))])
    got = group.unstack()
    for d in ids:
        _assert_device_matches(label, got[d], looped, d)
        want_edge = edge.edge.session_state(d)
        for name, value in group_edge.session_state(d).items():
            assert _diff(f"{label}/edge weights", value, want_edge[name]) <= TOL


def _session_group(host, key, opt, ids, tier) -> DeviceGroup:
    states = {d: DeviceState(host.session_state(d), host.optimizer_state(d)) for d in ids}
    return DeviceGroup(host.factory, key, opt, states, tier=tier)


@pytest.mark.parametrize(("model", "cuts"), [SPLITS[1], SPLITS[2], SPLITS[4], SPLITS[6]])
def test_every_tier_as_a_group_equals_looped(model, cuts):
    """The edge (and cloud) hold the same devices' sessions as groups of their tier: one call per step."""
    opt, key, setups = MOMENTUM, _key(model, cuts), _setups()
    states = _full_states(model, setups)
    ids = [s.device_id for s in setups]
    label = f"all tiers grouped/{len(cuts) + 1}-tier/{model}/{'-'.join(map(str, cuts))}"
    looped = _host(model, opt, key, setups, states)
    edge = _edge(model, opt, key, states, ids)
    steps = 4
    reports = {d: looped.train(d, steps, edge, "e") for d in ids}

    grouped = _host(model, opt, key, setups, states)
    edge_sessions = _edge(model, opt, key, states, ids)
    device = _group(grouped, key, opt, ids)
    edge_group = _session_group(edge_sessions, key, opt, ids, 1)
    cloud_group = _session_group(edge_sessions.cloud, key, opt, ids, 2) if key.n_tiers == 3 else None
    loss_sums = np.zeros(len(ids))
    for _ in range(steps):
        x, y = draw_batch([grouped.devices[d] for d in ids])
        acts = device.forward([x])
        if cloud_group is None:
            grads, result = edge_group.forward_loss_backward(acts, y, track_input_grad=True)
        else:
            upper, result = cloud_group.forward_loss_backward(edge_group.forward(acts, track_input_grad=True), y,
                                                              track_input_grad=True)
            grads = edge_group.backward(upper)
        device.backward(grads)
        loss_sums += result.loss * BATCH
    for k, d in enumerate(ids):
        _assert_device_matches(label, device.state_of(d), looped, d)
        assert _diff(f"{label}/loss", loss_sums[k], reports[d].loss_sum) <= 1e-4
        for group, host, name in [(edge_group, edge, "edge")] + (
                [(cloud_group, edge.cloud, "cloud")] if cloud_group is not None else []):
            got, want = group.state_of(d), host.session_state(d)
            for n, value in want.items():
                assert _diff(f"{label}/{name} weights", got.weights[n], value) <= TOL, f"{name} {d} {n}"
            for n, fields in host.optimizer_state(d).items():
                for f, value in fields.items():
                    assert _diff(f"{label}/{name} optimizer", got.optimizer[n][f], value) <= TOL


# ----- migration: leave one group, join another, continue as if unmoved -----
@pytest.mark.parametrize(("model", "opt_name"), [("resnet_small", "momentum"), ("mlp", "adam")])
def test_device_moving_between_groups_continues_as_if_unmoved(model, opt_name):
    opt, key = OPTIMIZERS[opt_name], _key(model, [])
    a_setups, b_setups = _setups(SHARDS, "a"), _setups((11, 16), "b")
    setups = a_setups + b_setups
    states = _full_states(model, setups)
    a_ids, b_ids = [s.device_id for s in a_setups], [s.device_id for s in b_setups]
    host = _host(model, opt, key, setups, states)
    group_a, group_b = _group(host, key, opt, a_ids), _group(host, key, opt, b_ids)

    def train(group, n):
        group.step([draw_batch([host.devices[d] for d in group.device_ids]) for _ in range(n)])

    train(group_b, 1)  # b is a step ahead: Adam's step counts differ inside the group it joins
    train(group_a, 2)
    train(group_b, 2)
    moved = group_a.leave("a1")
    group_b.join({"a1": moved})
    assert group_a.device_ids == ["a0", "a2"] and group_b.device_ids == ["b0", "b1", "a1"]
    train(group_a, 2)
    train(group_b, 2)

    looped = _host(model, opt, key, setups, states)
    totals = {"a0": 4, "a1": 4, "a2": 4, "b0": 5, "b1": 5}
    for d, n in totals.items():
        looped.train(d, n, None, None)
    got = {**group_a.unstack(), **group_b.unstack()}
    for d in totals:
        _assert_device_matches(f"moved/{model}/{opt_name}", got[d], looped, d)


@pytest.mark.parametrize(("model", "opt_name"), [("resnet_small", "momentum"), ("mlp", "adam")])
def test_group_and_loop_hand_devices_over_both_ways(model, opt_name):
    """Grouped for two steps, back on the loop for two (through DeviceHost.configure), grouped again:
    the same as six steps alone."""
    opt, key, setups = OPTIMIZERS[opt_name], _key(model, []), _setups()
    states = _full_states(model, setups)
    ids = [s.device_id for s in setups]
    host = _host(model, opt, key, setups, states)
    group = _group(host, key, opt, ids)
    group.step([draw_batch([host.devices[d] for d in ids]) for _ in range(2)])
    for d, state in group.unstack().items():
        host.configure(d, key, state.weights, optimizer_states=state.optimizer)
        host.train(d, 2, None, None)
    group = _group(host, key, opt, ids)
    group.step([draw_batch([host.devices[d] for d in ids]) for _ in range(2)])
    looped = _host(model, opt, key, setups, states)
    for d in ids:
        looped.train(d, 6, None, None)
        _assert_device_matches(f"group-loop-group/{model}/{opt_name}", group.state_of(d), looped, d)


def test_leaving_before_any_step_leaves_no_optimizer_state():
    opt, key, setups = MOMENTUM, _key("mlp", []), _setups()
    host = _host("mlp", opt, key, setups, _full_states("mlp", setups))
    group = _group(host, key, opt, ["d0", "d1"])
    assert group.leave("d1").optimizer == {}
    group.join({"d2": DeviceState(partition_state(host.devices["d2"].session.runner), {})})
    group.step([draw_batch([host.devices[d] for d in group.device_ids])])
    assert set(group.state_of("d2").optimizer) == set(group.param_names)


def test_choose_engine_names_one_of_the_two():
    from tierflow.tiers.device_group import choose_engine, time_engines
    from tierflow.tiers.session import StageFactory

    factory = StageFactory("mlp", SHAPE)
    timing = time_engines(factory, _key("mlp", []), MOMENTUM, BATCH, 16, repeats=1)
    assert timing.vectorized_s > 0 and timing.looped_s > 0
    assert timing.engine == ("vectorized" if timing.vectorized_s < timing.looped_s else "looped")
    assert choose_engine(factory, _key("mlp", ["relu1"]), MOMENTUM, BATCH, 16) in ("vectorized", "looped")


def test_timing_stops_repeating_once_one_engine_is_clearly_faster():
    """An MLP group of 64 devices is many times faster vectorized than looped: one timed
    repetition decides, not three (a conv-heavy stage spends seconds a repetition)."""
    from tierflow.tiers.device_group import CLEAR_RATIO, time_engines
    from tierflow.tiers.session import StageFactory

    timing = time_engines(StageFactory("mlp", SHAPE), _key("mlp", []), MOMENTUM, 8, 64, repeats=3)
    assert timing.looped_s >= CLEAR_RATIO * timing.vectorized_s
    assert timing.repetitions == 1 and timing.engine == "vectorized"


class WithDropout(torch.nn.Module):
    def __init__(self, shape: InputShape):
        super().__init__()
        self.flatten = torch.nn.Flatten()
        self.fc = torch.nn.Linear(shape.channels * shape.height * shape.width, shape.num_classes)
        self.drop = torch.nn.Dropout(0.5)

    def forward(self, x):
        return self.drop(self.fc(self.flatten(x)))


def test_a_stage_vmap_cannot_give_each_device_its_own_step_stays_looped():
    from tierflow.tiers.device_group import choose_engine
    from tierflow.tiers.session import StageFactory

    name = f"{__name__}:WithDropout"
    factory, key = StageFactory(name, SHAPE), _key(name, [])
    assert choose_engine(factory, key, MOMENTUM, BATCH, 16) == "looped"
    weights = {k: v.numpy() for k, v in factory.stage(key, 0).module.state_dict().items()}
    with pytest.raises(ValueError, match="dropout"):
        DeviceGroup(factory, key, MOMENTUM, {"d0": DeviceState(weights, {})})


@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("model", ["mlp", "resnet_small"])
def test_a_group_of_live_stages_equals_one_of_their_exports_to_the_bit(model, opt_name):
    """live_state / store_into (what hosts use per step) against partition_state / unstack / load:
    the same group, the same steps, the same weights, buffers and optimizer state afterwards, and
    a device without optimizer state yet leaves without it."""
    from tierflow.tiers.device_group import live_state
    from tierflow.tiers.session import load_optimizer_state, load_partition, optimizer_state

    opt, setups = OPTIMIZERS[opt_name], _setups()
    key = _key(model, [])
    states = _full_states(model, setups)
    ids = [s.device_id for s in setups]
    a, b = (_host(model, opt, key, setups, states) for _ in range(2))
    for step in range(3):
        via_live = DeviceGroup(a.factory, key, opt, {d: live_state(a.devices[d].session.runner) for d in ids})
        via_copy = _group(b, key, opt, ids)
        batches = [draw_batch([host.devices[d] for d in ids]) for host in (a, b)]
        if step > 0:  # the first pass leaves without a step: optimizer-less devices stay so
            for group, (x, y) in zip((via_live, via_copy), batches, strict=True):
                group.step([(x, y)])
        via_live.store_into([a.devices[d].session.runner for d in ids])
        for d, state in via_copy.unstack().items():
            load_partition(b.devices[d].session.runner, state.weights)
            load_optimizer_state(b.devices[d].session.runner, state.optimizer)
        assert via_live.finite().all()
        if step == 0:
            assert not any(optimizer_state(a.devices[d].session.runner) for d in ids)
    for d in ids:
        ra, rb = a.devices[d].session.runner, b.devices[d].session.runner
        pa, pb = partition_state(ra), partition_state(rb)
        assert pa.keys() == pb.keys() and all(np.array_equal(pa[n], pb[n]) for n in pa), d
        oa, ob = optimizer_state(ra), optimizer_state(rb)
        assert oa.keys() == ob.keys(), d
        for n in oa:
            assert oa[n].keys() == ob[n].keys() and all(np.array_equal(oa[n][f], ob[n][f]) for f in oa[n]), (d, n)
    assert (opt_name == "sgd") or any(optimizer_state(a.devices[d].session.runner) for d in ids)


def test_a_group_template_is_kept_per_thread_and_a_stages_tensors_stay_its_own_after_a_load():
    """Groups of one split share a template per thread (functional_call swaps tensors into it for
    the call, so two threads must not share one); a stage's cached tensors are still the ones it
    trains with after values are loaded into it."""
    import threading

    from tierflow.tiers.session import StageFactory, load_partition

    factory, key = StageFactory("mlp", SHAPE), _key("mlp", [2])
    here = factory.group_template(key, 1)
    assert factory.group_template(key, 1) is here
    other = []
    t = threading.Thread(target=lambda: other.append(factory.group_template(key, 1)))
    t.start()
    t.join()
    assert other[0] is not here and other[0].module is not here.module
    runner = factory.runner(key, 1, MOMENTUM)
    cached = dict(runner.parameters_by_name)
    state = _full_states("mlp", _setups(shards=[13]))["d0"]
    load_partition(runner, state)
    assert {n: p for n, p in runner.module.named_parameters()} == cached
    for name, p in cached.items():
        assert np.array_equal(p.detach().numpy(), state[name]), name
