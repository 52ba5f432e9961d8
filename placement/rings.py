"""Capability rings (FedHiSyn): group devices by round time, order each ring.

Grouping is optimal 1-D k-means (least within-ring sum of squares) by dynamic programme: in one
dimension an optimal clustering is contiguous in sorted order, so DP over prefix cut points is
exact, O(k·n²). Each ring is then ordered as a cycle by networkx's TSP approximation over link
latencies, so the model's hops from member to member stay cheap.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import networkx as nx

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


def optimal_kmeans_1d(values: Sequence[float], k: int) -> KMeans1D:
    """Exact k-means of real numbers into ``k`` non-empty clusters (min sum of squared errors)."""
    n = len(values)
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the number of values ({n}), got {k}")
    order = sorted(range(n), key=lambda i: (values[i], i))
    v = [float(values[i]) for i in order]
    s1 = [0.0]
    s2 = [0.0]
    for x in v:
        s1.append(s1[-1] + x)
        s2.append(s2[-1] + x * x)

    def sse(i: int, j: int) -> float:  # values v[i:j]
        m = j - i
        mean = (s1[j] - s1[i]) / m
        # Direct sum for small groups keeps it exact enough; the prefix formula cancels badly.
        if m <= 16:
            return sum((x - mean) ** 2 for x in v[i:j])
        return max(0.0, (s2[j] - s2[i]) - m * mean * mean)

    inf = math.inf
    dp = [[inf] * (n + 1) for _ in range(k + 1)]
    cut = [[0] * (n + 1) for _ in range(k + 1)]
    dp[0][0] = 0.0
    for m in range(1, k + 1):
        for j in range(m, n - (k - m) + 1):
            best, arg = inf, m - 1
            for i in range(m - 1, j):
                c = dp[m - 1][i] + sse(i, j)
                if c < best:
                    best, arg = c, i
            dp[m][j], cut[m][j] = best, arg
    bounds = []
    j = n
    for m in range(k, 0, -1):
        i = cut[m][j]
        bounds.append((i, j))
        j = i
    bounds.reverse()
    clusters = tuple(tuple(order[a:b]) for a, b in bounds)
    labels = [0] * n
    for c, members in enumerate(clusters):
        for i in members:
            labels[i] = c
    return KMeans1D(clusters=clusters, labels=tuple(labels), sse=dp[k][n])


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


def choose_k(round_times: Sequence[float], max_ratio: float) -> int:
    """Fewest rings such that in every ring the slowest member is at most ``max_ratio`` × the fastest.

    The rule bounds what a ring wastes: its members wait at most (max_ratio - 1) of their own round
    time for the slowest one. K = n (singletons) always satisfies it.
    """
    n = len(round_times)
    for k in range(1, n + 1):
        km = optimal_kmeans_1d(round_times, k)
        if all(max(round_times[i] for i in c) <= max_ratio * min(round_times[i] for i in c) for c in km.clusters):
            return k
    return n


def form_rings(
    round_times: Mapping[str, float],
    k: int | None = None,
    latency_s: LatencyFn | Mapping[tuple[str, str], float] | None = None,
    max_ratio: float = 1.5,
) -> list[Ring]:
    """Group devices into rings by per-round time (fastest ring first), each ordered as a cycle.

    ``k=None`` picks K by :func:`choose_k` with ``max_ratio``. ``latency_s`` is a function or a
    dict of (a, b) pairs; without it members are ordered by round time.
    """
    names = sorted(round_times, key=lambda n: (round_times[n], n))
    if not names:
        return []
    times = [float(round_times[n]) for n in names]
    if any(not math.isfinite(t) or t <= 0 for t in times):
        raise ValueError("round times must be positive finite seconds")
    if k is None:
        k = choose_k(times, max_ratio)
    k = min(k, len(names))
    latency = _latency_fn(latency_s)
    rings = []
    for cluster in optimal_kmeans_1d(times, k).clusters:
        members = [names[i] for i in cluster]
        tour, cycle_s = order_ring(members, latency)
        member_times = [round_times[m] for m in members]
        rings.append(Ring(tour, max(member_times), min(member_times), cycle_s))
    return rings
