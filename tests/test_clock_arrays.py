"""The clock prices many devices at once (orchestrator/clock.py ``periods``, ``PricedPeriod``): the
same floats, bit for bit, as one scalar ``period`` per device and ``makespan_s`` over the charges,
which is what the planner predicts with (a ring's hop, an adaptive plan)."""

from __future__ import annotations

import numpy as np
import pytest

from tierflow.orchestrator.clock import CostModel, PricedPeriod, TierSpeedArrays
from tierflow.orchestrator.rounds import add_compute
from tierflow.placement.cost import Charge, TierSpeeds, makespan_s
from tierflow.placement.graph import build_layer_graph
from tierflow.tiers.models import InputShape, build_model
from tierflow.tiers.session import SplitKey
from tierflow.tiers.split import assignment_from_cuts, trace

SHAPE = InputShape(1, 8, 8, 10)
CUTS = ([], ["relu1"], ["relu2"], ["relu1", "relu2"], ["fc1", "relu2"])


def _keys() -> list[SplitKey]:
    gm = trace(build_model("mlp", SHAPE))
    return [SplitKey.of(assignment_from_cuts(gm, cuts), len(cuts) + 1) for cuts in CUTS]


@pytest.mark.parametrize("compute", ["flops", "measured"])
def test_many_devices_priced_at_once_cost_what_each_costs_alone(compute):
    rng = np.random.default_rng(11)
    graph = build_layer_graph(build_model("mlp", SHAPE), (1, 8, 8), batch_size=8)
    cost = CostModel(graph, compute, host_flops_per_s=3.7e9 if compute == "measured" else None)
    keys = _keys()
    n = 400
    ids = [f"d{i:03d}" for i in rng.permutation(n)]  # not in sorted order: the sums must be
    edges = [["e0", "e1", "e2", None][i] for i in rng.integers(0, 4, n)]
    split = [keys[i] for i in rng.integers(0, len(keys), n)]
    steps = rng.integers(1, 5, n).tolist()
    batches = rng.choice([4, 8, 13], n).tolist()
    speeds = TierSpeedArrays(rng.uniform(1e8, 3e10, n), rng.uniform(1e10, 2e11, n), rng.uniform(1e6, 1e8, n),
                             np.full(n, 1e12), rng.uniform(1e7, 1e9, n))
    measured = rng.uniform(0, 1e-2, (n, 3))
    extra = np.where(rng.random(n) < 0.2, rng.uniform(0, 3, n), 0.0)
    priced = PricedPeriod(ids, edges, cost.periods(split, steps, batches, speeds, measured), extra)
    alone = [Charge(ids[i], edges[i],
                    cost.period(split[i], steps[i], batches[i],
                                TierSpeeds(float(speeds.device_flops_per_s[i]), float(speeds.edge_flops_per_s[i]),
                                           float(speeds.device_edge_bandwidth_bps[i]), 1e12,
                                           float(speeds.edge_cloud_bandwidth_bps[i])),
                                measured_compute_s=tuple(measured[i])), float(extra[i])) for i in range(n)]
    assert priced.charges() == alone  # every float of every device, exactly
    assert priced.makespan_s() == makespan_s(alone)
    assert priced.add_compute((0.5, 0.25, 0.0)) == add_compute((0.5, 0.25, 0.0), alone)
    assert [c.total_s for c in priced.charges()] == (priced.costs.total_s + extra).tolist()
    if compute == "flops":  # the three terms all count
        assert all(c.cost.transfer_s > 0 for c in alone if c.cost.compute_s[1] > 0)


def test_no_devices_price_to_nothing():
    graph = build_layer_graph(build_model("mlp", SHAPE), (1, 8, 8), batch_size=8)
    empty = np.zeros(0)
    priced = PricedPeriod([], [], CostModel(graph, "flops").periods([], [], [], TierSpeedArrays(*[empty] * 5)), empty)
    assert priced.makespan_s() == makespan_s([]) == 0.0 and priced.charges() == []
