"""The looped engine's interleaving: several devices' steps in flight over the data plane train
exactly as the same devices trained one after another, and a device's failure stays its own."""

from __future__ import annotations

import numpy as np
import pytest
from test_device_group import MOMENTUM, SHAPE, TOKEN, _full_states, _key, _setups

from tierflow.tiers import looped
from tierflow.tiers.edge_host import EdgeHost
from tierflow.tiers.hosts import Cloud, DeviceHost
from tierflow.tiers.upper import route

SHARDS = (13, 20, 9, 17, 11)


def _world(model: str, cuts, opened: set[str] | None = None):
    """A device host and an edge host with two logical edges (and a cloud for 3-tier splits),
    talking over the real pyzmq data plane; devices alternate between the two edges."""
    key, setups = _key(model, cuts), _setups(SHARDS)
    states = _full_states(model, setups)
    cloud = None
    if key.n_tiers == 3:
        cloud = Cloud("c", model, SHAPE, MOMENTUM, token=TOKEN)
        for s in setups:
            cloud.open_session(s.device_id, key, states[s.device_id], 1.0)
    edges = EdgeHost("eh", ["a", "b"], model, SHAPE, MOMENTUM, cloud=cloud, token=TOKEN)
    endpoint = edges.start_dataplane()
    host = DeviceHost("h", model, SHAPE, MOMENTUM, token=TOKEN, engine="looped")
    host.add_devices(setups)
    jobs = []
    for i, s in enumerate(setups):
        edge = "ab"[i % 2]
        host.configure(s.device_id, key, states[s.device_id])
        if opened is None or s.device_id in opened:
            edges.on(edge, "open_session", s.device_id, key, states[s.device_id], 1.0)
        jobs.append((s.device_id, 3 + i % 3, route(endpoint, edge), edge))  # unequal step counts
    return host, edges, jobs


def _states(host: DeviceHost, edges: EdgeHost, jobs) -> dict[str, dict[str, np.ndarray]]:
    out = {}
    for device_id, _, _, edge in jobs:
        out[device_id] = {f"device/{k}": np.array(v) for k, v in host.devices[device_id].session.export()[1].items()}
        if device_id in edges.edges[edge].sessions:
            out[device_id].update({f"edge/{k}": np.array(v)
                                   for k, v in edges.edges[edge].sessions[device_id].export()[1].items()})
    return out


def _counts(report) -> tuple:
    return (report.steps, report.samples, report.loss_sum, report.correct, report.bytes_up, report.bytes_down,
            report.n_tiers, report.finite, report.error)


@pytest.mark.parametrize("in_flight", [1, 2, 4])
@pytest.mark.parametrize(("model", "cuts"), [("vgg5", ["pool1"]), ("mlp", ["fc1", "relu2"]),
                                             ("vgg5", ["pool1", "relu4"])])
def test_interleaved_steps_equal_devices_trained_one_after_another(monkeypatch, model, cuts, in_flight):
    one_by_one, edges_a, jobs_a = _world(model, cuts)
    try:
        want = [one_by_one.train(*job) for job in jobs_a]
        want_states = _states(one_by_one, edges_a, jobs_a)
    finally:
        edges_a.shutdown()
    monkeypatch.setattr(looped, "IN_FLIGHT", in_flight)
    interleaved, edges_b, jobs_b = _world(model, cuts)
    try:
        got = interleaved.train_many(jobs_b)
        got_states = _states(interleaved, edges_b, jobs_b)
    finally:
        edges_b.shutdown()
    assert [_counts(r) for r in got] == [_counts(r) for r in want]
    assert all(r.error == "" and r.steps > 0 for r in got)
    for device_id, state in want_states.items():
        assert state.keys() == got_states[device_id].keys()
        for name, value in state.items():
            np.testing.assert_array_equal(got_states[device_id][name], value, err_msg=f"{device_id} {name}")


def test_a_refused_device_fails_alone_and_the_others_train_as_if_it_were_not_there():
    skipped = "d2"
    opened = {s.device_id for s in _setups(SHARDS)} - {skipped}
    reference, edges_a, jobs_a = _world("vgg5", ["pool1"], opened)
    try:
        want = {job[0]: reference.train(*job) for job in jobs_a if job[0] != skipped}
        want_states = _states(reference, edges_a, [j for j in jobs_a if j[0] != skipped])
    finally:
        edges_a.shutdown()
    host, edges_b, jobs_b = _world("vgg5", ["pool1"], opened)
    try:
        got = host.train_many(jobs_b)
        got_states = _states(host, edges_b, jobs_b)
    finally:
        edges_b.shutdown()
    by_id = {r.device_id: r for r in got}
    assert by_id[skipped].steps == 0 and "KeyError: 'd2'" in by_id[skipped].error  # the edge holds no session
    for device_id, report in want.items():
        assert _counts(by_id[device_id]) == _counts(report)
        for name, value in want_states[device_id].items():
            np.testing.assert_array_equal(got_states[device_id][name], value)
