"""Rings: exact 1-D k-means against brute force, automatic K, and TSP ordering."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tierflow.placement.rings import choose_k, form_rings, optimal_kmeans_1d


def _sse(groups):
    total = 0.0
    for g in groups:
        mean = sum(g) / len(g)
        total += sum((x - mean) ** 2 for x in g)
    return total


def _brute_contiguous(values, k):
    v = sorted(values)
    best = math.inf
    for cuts in itertools.combinations(range(1, len(v)), k - 1):
        bounds = [0, *cuts, len(v)]
        best = min(best, _sse([v[a:b] for a, b in itertools.pairwise(bounds)]))
    return best


def _brute_any(values, k):
    best = math.inf
    for labels in itertools.product(range(k), repeat=len(values)):
        if len(set(labels)) != k:
            continue
        best = min(best, _sse([[v for v, lab in zip(values, labels, strict=True) if lab == c] for c in range(k)]))
    return best


@settings(max_examples=150, deadline=None)
@given(st.lists(st.floats(0.1, 100.0), min_size=1, max_size=9), st.data())
def test_kmeans_dp_equals_brute_force_over_contiguous_partitions(values, data):
    k = data.draw(st.integers(1, len(values)))
    km = optimal_kmeans_1d(values, k)
    assert math.isclose(km.sse, _brute_contiguous(values, k), rel_tol=1e-9, abs_tol=1e-9)
    assert sorted(i for c in km.clusters for i in c) == list(range(len(values)))
    assert all(c for c in km.clusters)
    assert math.isclose(km.sse, _sse([[values[i] for i in c] for c in km.clusters]), rel_tol=1e-9, abs_tol=1e-9)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0.1, 100.0), min_size=1, max_size=6), st.data())
def test_kmeans_dp_equals_brute_force_over_all_partitions(values, data):
    k = data.draw(st.integers(1, min(3, len(values))))
    assert math.isclose(optimal_kmeans_1d(values, k).sse, _brute_any(values, k), rel_tol=1e-9, abs_tol=1e-9)


def test_kmeans_rejects_bad_k():
    with pytest.raises(ValueError):
        optimal_kmeans_1d([1.0, 2.0], 3)


def test_auto_k_bounds_the_spread_in_every_ring():
    times = {"a": 10.0, "b": 11.0, "c": 12.0, "d": 30.0, "e": 33.0, "f": 100.0}
    rings = form_rings(times, k=None, max_ratio=1.5)
    assert [sorted(r.members) for r in rings] == [["a", "b", "c"], ["d", "e"], ["f"]]
    assert all(r.spread_ratio <= 1.5 for r in rings)
    assert choose_k(list(times.values()), 1000.0) == 1
    assert rings[0].round_time_s == 12.0 and rings[0].fastest_round_s == 10.0


def test_rings_are_ordered_to_keep_hops_cheap():
    # Positions on a line: the cheap cycle visits them in order and back (total 2 * span).
    pos = {"a": 0.0, "b": 5.0, "c": 1.0, "d": 4.0, "e": 2.0}
    times = dict.fromkeys(pos, 1.0)
    rings = form_rings(times, k=1, latency_s=lambda x, y: abs(pos[x] - pos[y]))
    (ring,) = rings
    assert sorted(ring.members) == sorted(pos)
    assert math.isclose(ring.cycle_latency_s, 10.0)
    pairs = {("a", "b"): 1.0, ("b", "c"): 1.0, ("a", "c"): 5.0}
    (ring,) = form_rings({"a": 1.0, "b": 1.1, "c": 1.2}, k=1, latency_s=pairs)
    assert math.isclose(ring.cycle_latency_s, 7.0)
    with pytest.raises(KeyError):
        form_rings({"a": 1.0, "b": 1.0, "z": 1.0}, k=1, latency_s=pairs)


def test_form_rings_edge_cases():
    assert form_rings({}) == []
    assert form_rings({"a": 2.0}, k=3)[0].members == ("a",)
    with pytest.raises(ValueError):
        form_rings({"a": 0.0})


def _reference_kmeans_sse(values, k):
    """The O(k n^2) dynamic programme over sorted prefix cut points, summing each cluster directly."""
    v = sorted(values)
    n = len(v)

    def sse(i, j):
        mean = sum(v[i:j]) / (j - i)
        return sum((x - mean) ** 2 for x in v[i:j])

    best = [[math.inf] * (n + 1) for _ in range(k + 1)]
    best[0][0] = 0.0
    for m in range(1, k + 1):
        for j in range(m, n + 1):
            best[m][j] = min(best[m - 1][i] + sse(i, j) for i in range(m - 1, j))
    return best[k][n]


def _reference_choose_k(values, max_ratio):
    for k in range(1, len(values) + 1):
        km = optimal_kmeans_1d(values, k)
        if all(max(values[i] for i in c) <= max_ratio * min(values[i] for i in c) for c in km.clusters):
            return k
    return len(values)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.01, 1000.0), min_size=1, max_size=40), st.data())
def test_divide_and_conquer_kmeans_equals_the_quadratic_programme(values, data):
    k = data.draw(st.integers(1, len(values)))
    km = optimal_kmeans_1d(values, k)
    assert math.isclose(km.sse, _reference_kmeans_sse(values, k), rel_tol=1e-9, abs_tol=1e-9)
    assert sorted(i for c in km.clusters for i in c) == list(range(len(values)))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.5, 50.0), min_size=1, max_size=30), st.floats(1.05, 3.0))
def test_choose_k_starts_at_the_fewest_groups_and_agrees_with_a_scan_from_one(values, ratio):
    assert choose_k(values, ratio) == _reference_choose_k(values, ratio)


def test_many_devices_are_clustered_exactly_against_the_reference_on_a_sample():
    import random

    rng = random.Random(7)
    values = [rng.lognormvariate(0.0, 1.0) for _ in range(120)]
    for k in (1, 2, 5, 17):
        assert math.isclose(optimal_kmeans_1d(values, k).sse, _reference_kmeans_sse(values, k), rel_tol=1e-9)
    big = [rng.uniform(1.0, 30.0) for _ in range(20_000)]
    rings = form_rings({f"d{i}": t for i, t in enumerate(big)}, k=None, max_ratio=1.5)
    assert sum(len(r.members) for r in rings) == len(big)
    assert all(r.spread_ratio <= 1.5 for r in rings)


def test_rings_by_site_keep_each_site_together_and_the_fastest_first():
    times = {"a": 1.0, "b": 1.1, "c": 1.2, "d": 1.3, "e": 1.4}
    site = {"a": "x", "b": "y", "c": "x", "d": "y", "e": "z"}
    (ring,) = form_rings(times, k=1, site_of=site)
    assert ring.members == ("a", "c", "b", "d", "e")
    assert ring.cycle_latency_s == 3.0
    (ring,) = form_rings({"a": 1.0, "b": 1.0}, k=1, site_of={"a": "x", "b": "x"})
    assert ring.cycle_latency_s == 0.0
