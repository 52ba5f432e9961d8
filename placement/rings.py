"""Capability rings (FedHiSyn): group devices by round time, order each ring.

Grouping is optimal 1-D k-means (least within-ring sum of squares), exact, in O(k·n log n)
(:class:`KMeans1DLayers`). Each ring is then ordered as a cycle so the model's hops from member to
member stay cheap: by site when a hop costs only when it changes site, else by networkx's TSP
approximation over link latencies.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import networkx as nx
import numpy as np

LatencyFn = Callable[[str, str], float]


@dataclass(frozen=True)
class KMeans1D:
    """Clusters as tuples of input indices (ascending values), labels per input, and the SSE."""

    clusters: tuple[tuple[int, ...], ...]
    labels: tuple[int, ...]
    sse: float


@dataclass(frozen=True)
class Ring:
    """Members in visit order (a cycle), the ring's pace (its slowest member) and its hop cost."""

    members: tuple[str, ...]
    round_time_s: float
    fastest_round_s: float
    cycle_latency_s: float

    @property
    def spread_ratio(self) -> float:
        return self.round_time_s / self.fastest_round_s if self.fastest_round_s > 0 else math.inf


class KMeans1DLayers:
    """Exact 1-D k-means for every k up to the one asked, sharing work between k.

    In one dimension an optimal clustering is contiguous in sorted order, so a dynamic programme
    over prefix cut points is exact: ``best[m][j]`` is the least SSE of the ``j`` smallest values in
    ``m`` clusters. The cost of a cluster is O(1) from prefix sums, and the leftmost optimal cut
    point is non-decreasing in ``j`` (the SSE is a Monge cost), so each layer is filled by divide
    and conquer over ``j`` in O(n log n), one recursion depth at a time as numpy arrays (the same
    idea as Ckmeans.1d.dp). Layer ``m`` does not depend on the k asked, so asking for k + 1 after
    k costs one more layer.
    """

    def __init__(self, values: Sequence[float]):
        self.n = len(values)
        raw = np.asarray(values, dtype=np.float64)
        self.order = np.lexsort((np.arange(self.n), raw))  # by value, ties by input index
        v = raw[self.order]
        self.sorted_values = v
        centred = v - (v.mean() if self.n else 0.0)  # smaller prefix sums: less cancellation
        self._s1 = np.concatenate(([0.0], np.cumsum(centred)))
        self._s2 = np.concatenate(([0.0], np.cumsum(centred * centred)))
        first = np.full(self.n + 1, np.inf)
        first[0] = 0.0
        self._best = [first]  # best[m], m = 0 .. layers filled
        self._cut: list[np.ndarray] = [np.zeros(self.n + 1, dtype=np.int64)]

    def _cost(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        m = j - i
        total = self._s1[j] - self._s1[i]
        return np.maximum(0.0, (self._s2[j] - self._s2[i]) - total * total / m)

    def _fill_next_layer(self) -> None:
        m = len(self._best)
        prev, n = self._best[-1], self.n
        best = np.full(n + 1, np.inf)
        cut = np.zeros(n + 1, dtype=np.int64)
        # Pending ranges of j, each with the range its optimal cut point lies in.
        j_lo, j_hi = np.array([m]), np.array([n])
        o_lo, o_hi = np.array([m - 1]), np.array([n - 1])
        while j_lo.size:
            mid = (j_lo + j_hi) // 2
            hi = np.minimum(o_hi, mid - 1)
            width = hi - o_lo + 1
            starts = np.concatenate(([0], np.cumsum(width)[:-1]))
            i = np.repeat(o_lo - starts, width) + np.arange(width.sum())
            j = np.repeat(mid, width)
            c = prev[i] + self._cost(i, j)
            lowest = np.minimum.reduceat(c, starts)
            # The leftmost argmin of each range: the first position holding its minimum.
            at_min = np.flatnonzero(c == np.repeat(lowest, width))
            arg = i[at_min[np.searchsorted(at_min, starts)]]
            best[mid], cut[mid] = lowest, arg
            left, right = j_lo <= mid - 1, mid + 1 <= j_hi
            j_lo, j_hi, o_lo, o_hi = (np.concatenate((j_lo[left], mid[right] + 1)),
                                      np.concatenate((mid[left] - 1, j_hi[right])),
                                      np.concatenate((o_lo[left], arg[right])),
                                      np.concatenate((arg[left], o_hi[right])))
        self._best.append(best)
        self._cut.append(cut)

    def bounds(self, k: int) -> list[tuple[int, int]]:
        """The optimal k clusters as [start, end) ranges of the sorted values."""
        if not 1 <= k <= self.n:
            raise ValueError(f"k must be between 1 and the number of values ({self.n}), got {k}")
        while len(self._best) <= k:
            self._fill_next_layer()
        out, j = [], self.n
        for m in range(k, 0, -1):
            i = int(self._cut[m][j])
            out.append((i, j))
            j = i
        return out[::-1]

    def result(self, k: int) -> KMeans1D:
        ranges = self.bounds(k)
        clusters = tuple(tuple(int(x) for x in self.order[a:b]) for a, b in ranges)
        labels = np.empty(self.n, dtype=np.int64)
        for c, (a, b) in enumerate(ranges):
            labels[self.order[a:b]] = c
        # The SSE summed directly per cluster, not from the prefix sums (which cancel).
        sse = float(sum(((self.sorted_values[a:b] - self.sorted_values[a:b].mean()) ** 2).sum() for a, b in ranges))
        return KMeans1D(clusters=clusters, labels=tuple(int(x) for x in labels), sse=sse)


def optimal_kmeans_1d(values: Sequence[float], k: int) -> KMeans1D:
    """Exact k-means of real numbers into ``k`` non-empty clusters (min sum of squared errors)."""
    n = len(values)
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the number of values ({n}), got {k}")
    return KMeans1DLayers(values).result(k)


def _latency_fn(latency_s: LatencyFn | Mapping[tuple[str, str], float] | None) -> LatencyFn | None:
    if latency_s is None or callable(latency_s):
        return latency_s
    table = latency_s

    def lookup(a: str, b: str) -> float:
        if (a, b) in table and (b, a) in table:
            return (table[(a, b)] + table[(b, a)]) / 2  # TSP here is symmetric: average directions
        if (a, b) in table:
            return table[(a, b)]
        if (b, a) in table:
            return table[(b, a)]
        raise KeyError(f"no latency given between {a!r} and {b!r}")

    return lookup


def order_ring(members: Sequence[str], latency: LatencyFn | None) -> tuple[tuple[str, ...], float]:
    """A cheap cycle through ``members`` (TSP approximation) and its total latency."""
    members = list(members)
    if latency is None or len(members) <= 1:
        return tuple(members), 0.0
    if len(members) == 2:
        a, b = members
        return (a, b), latency(a, b) + latency(b, a)
    g = nx.Graph()
    for i, a in enumerate(members):
        for b in members[i + 1 :]:
            g.add_edge(a, b, weight=float(latency(a, b)))
    cycle = nx.approximation.traveling_salesman_problem(g, weight="weight", cycle=True)
    # networkx walks the metric closure and may revisit a member when latencies break the
    # triangle inequality; a ring passes the model to each member once, so shortcut repeats.
    tour = list(dict.fromkeys(cycle))
    start = tour.index(members[0])  # keep the ring's first (fastest) member first
    tour = tour[start:] + tour[:start]
    total = sum(latency(tour[i], tour[(i + 1) % len(tour)]) for i in range(len(tour)))
    return tuple(tour), total


def fewest_groups(sorted_times: np.ndarray, max_ratio: float) -> int:
    """The fewest contiguous groups of sorted times whose slowest is at most ``max_ratio`` x their
    fastest (greedy from the fastest is optimal): no clustering into fewer rings can meet the rule."""
    groups, i, n = 0, 0, len(sorted_times)
    while i < n:
        i = int(np.searchsorted(sorted_times, max_ratio * sorted_times[i], side="right"))
        groups += 1
    return groups


def _meets_ratio(layers: KMeans1DLayers, k: int, max_ratio: float) -> bool:
    v = layers.sorted_values
    return all(v[b - 1] <= max_ratio * v[a] for a, b in layers.bounds(k))


def choose_k(round_times: Sequence[float], max_ratio: float) -> int:
    """Fewest rings such that in every ring the slowest member is at most ``max_ratio`` × the fastest.

    The rule bounds what a ring wastes: its members wait at most (max_ratio - 1) of their own round
    time for the slowest one. K = n (singletons) always satisfies it.
    """
    return _choose_k(KMeans1DLayers(round_times), max_ratio)


def _choose_k(layers: KMeans1DLayers, max_ratio: float) -> int:
    # Below the fewest groups meeting the rule no clustering meets it: start the search there.
    k = max(1, fewest_groups(layers.sorted_values, max_ratio))
    while k < layers.n and not _meets_ratio(layers, k, max_ratio):
        k += 1
    return k


def form_rings(
    round_times: Mapping[str, float],
    k: int | None = None,
    latency_s: LatencyFn | Mapping[tuple[str, str], float] | None = None,
    max_ratio: float = 1.5,
    site_of: Mapping[str, str] | None = None,
) -> list[Ring]:
    """Group devices into rings by per-round time (fastest ring first), each ordered as a cycle.

    ``k=None`` picks K by :func:`choose_k` with ``max_ratio``. ``latency_s`` is a function or a
    dict of (a, b) pairs (each ring is then ordered by a TSP approximation, quadratic in its size);
    ``site_of`` instead names each member's site when a hop costs only when it changes site: members
    of one site are then kept together, which is optimal for that cost and linear. With neither,
    members are ordered by round time.
    """
    names = sorted(round_times, key=lambda n: (round_times[n], n))
    if not names:
        return []
    times = [float(round_times[n]) for n in names]
    if any(not math.isfinite(t) or t <= 0 for t in times):
        raise ValueError("round times must be positive finite seconds")
    layers = KMeans1DLayers(times)
    if k is None:
        k = _choose_k(layers, max_ratio)
    k = min(k, len(names))
    latency = _latency_fn(latency_s)
    rings = []
    for a, b in layers.bounds(k):
        members = names[a:b]  # the values were given sorted: ranges of sorted order are ranges of names
        if site_of is not None:
            tour, cycle_s = order_by_site(members, site_of)
        else:
            tour, cycle_s = order_ring(members, latency)
        member_times = [round_times[m] for m in members]
        rings.append(Ring(tour, max(member_times), min(member_times), cycle_s))
    return rings


def order_by_site(members: Sequence[str], site_of: Mapping[str, str]) -> tuple[tuple[str, ...], float]:
    """Members grouped by site, sites in the order their fastest member comes, the first member
    first; the cycle's cost is its number of site changes (0 on one site, else the number of sites)."""
    by_site: dict[str, list[str]] = {}
    for m in members:
        by_site.setdefault(site_of[m], []).append(m)
    tour = tuple(m for group in by_site.values() for m in group)
    return tour, float(len(by_site)) if len(by_site) > 1 else 0.0
