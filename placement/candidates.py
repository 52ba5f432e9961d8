"""Planning many devices at once from a precomputed candidate set (design §4.1b).

A partition x's batch time is linear in the inverse speeds and bandwidths:
T_x(p) = F_x · p with p = (1/s_0, 1/s_1[, 1/s_2], 1/B_1[, 1/B_2]). The best time
g(p) = min_x T_x(p) is concave and piecewise linear, and only the partitions that are optimal
somewhere in the supported box of p matter: the lower envelope.

How the set is found, and why it is complete. Keep a set C and its envelope h(p) = min_{x∈C} T_x(p)
≥ g(p). On the region R_j of the box where candidate j is the minimum, h is linear and g is
concave, so h − g is convex on R_j and attains its maximum at a vertex of R_j. Hence h = g on the
whole box iff h = g at every vertex of every region. The builder enumerates the vertices (qhull
via ``scipy.spatial.HalfspaceIntersection``, in coordinates normalised to the box), runs the
exact min cut at each vertex not yet verified, adds any partition that beats h there, and repeats
until a full pass adds nothing. The comparison uses a relative tolerance of 1e-9 (the min cut is
exact to about 1e-11), so a candidate plan is within 1e-9 of the optimum everywhere in the box.
Regions whose inscribed ball has radius under 1e-13 (normalised units) count as lower-dimensional:
the closures of the full-dimensional regions already cover the box, so their vertices suffice.
Outside the box, or when a device memory limit rules out the envelope's choice, :meth:`plan`
returns -1 and :meth:`plans` falls back to a per-device min cut.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from placement.cost import CostGraph, TierSpeeds, features, memory_of
from placement.partition import Plan, min_cut, plan_from_vector, solve_vector

_REL_TOL = 1e-9


@dataclass(frozen=True)
class ParameterBox:
    """The supported ranges (lo, hi) of speeds and bandwidths; no cloud range means two tiers."""

    device_flops_per_s: tuple[float, float]
    edge_flops_per_s: tuple[float, float]
    device_edge_bandwidth_bps: tuple[float, float]
    cloud_flops_per_s: tuple[float, float] | None = None
    edge_cloud_bandwidth_bps: tuple[float, float] | None = None

    def ranges(self) -> list[tuple[float, float]]:
        """Ranges in feature order: speeds then bandwidths."""
        speeds = [self.device_flops_per_s, self.edge_flops_per_s]
        bws = [self.device_edge_bandwidth_bps]
        if self.cloud_flops_per_s is not None:
            assert self.edge_cloud_bandwidth_bps is not None
            speeds.append(self.cloud_flops_per_s)
            bws.append(self.edge_cloud_bandwidth_bps)
        out = speeds + bws
        for lo, hi in out:
            assert 0 < lo <= hi, f"bad range ({lo}, {hi})"
        return out

    @property
    def num_tiers(self) -> int:
        return 2 if self.cloud_flops_per_s is None else 3


def _speeds_at(p: np.ndarray, num_tiers: int) -> TierSpeeds:
    inv = [float(1.0 / v) for v in p]
    return TierSpeeds.of(inv[:num_tiers], inv[num_tiers:])


def _chebyshev(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, float] | None:
    """Centre and radius of the largest ball in {q : a q + b <= 0}, or None if empty."""
    from scipy.optimize import linprog

    norms = np.linalg.norm(a, axis=1)
    d = a.shape[1]
    c = np.zeros(d + 1)
    c[-1] = -1.0
    res = linprog(c, A_ub=np.hstack([a, norms[:, None]]), b_ub=-b, bounds=[(None, None)] * d + [(0, None)])
    if res.status != 0:
        return None
    return res.x[:-1], float(res.x[-1])


def _vertices(a: np.ndarray, b: np.ndarray, min_radius: float) -> np.ndarray:
    """Vertices of the polytope {q : a q + b <= 0} (empty array if it has no interior)."""
    d = a.shape[1]
    if d == 1:
        lo, hi = -np.inf, np.inf
        for (ai,), bi in zip(a, b, strict=True):
            if ai > 0:
                hi = min(hi, -bi / ai)
            elif ai < 0:
                lo = max(lo, -bi / ai)
            elif bi > 0:
                return np.empty((0, 1))
        return np.array([[lo], [hi]]) if hi - lo > 2 * min_radius else np.empty((0, 1))
    cheb = _chebyshev(a, b)
    if cheb is None or cheb[1] <= min_radius:
        return np.empty((0, d))
    from scipy.spatial import HalfspaceIntersection

    hs = np.hstack([a, b[:, None]])
    try:
        return HalfspaceIntersection(hs, cheb[0]).intersections
    except Exception:  # qhull precision trouble on a thin region: joggle instead
        return HalfspaceIntersection(hs, cheb[0], qhull_options="QJ").intersections


@dataclass(frozen=True)
class CandidateSet:
    """The lower envelope of partitions for one model (cost graph with its pins) over a box."""

    cg: CostGraph
    box: ParameterBox
    assignments: tuple[tuple[int, ...], ...]
    features: np.ndarray = field(repr=False)  # (candidates, 2K-1), per-batch FLOPs and bits
    memory_bytes: np.ndarray = field(repr=False)
    mincuts: int = 0

    def __len__(self) -> int:
        return len(self.assignments)

    def plan(
        self,
        device_flops: np.ndarray | float,
        edge_flops: np.ndarray | float,
        cloud_flops: np.ndarray | float | None,
        bw1: np.ndarray | float,
        bw2: np.ndarray | float | None = None,
        device_memory_bytes: np.ndarray | float | None = None,
        chunk: int = 65536,
    ) -> np.ndarray:
        """Index of the best candidate per device; -1 where the envelope does not apply.

        -1 means the device lies outside the box (needs a min cut), or its memory limit rules out
        its unconstrained optimum (if the optimum fits, it is also the constrained optimum).
        """
        cols = [device_flops, edge_flops] + ([cloud_flops] if self.box.num_tiers == 3 else [])
        cols += [bw1] + ([bw2] if self.box.num_tiers == 3 else [])
        params = np.stack([np.atleast_1d(np.asarray(c, dtype=float)) for c in np.broadcast_arrays(*cols)], axis=1)
        ranges = np.array(self.box.ranges())
        slack = 1e-12
        inside = np.all((params >= ranges[:, 0] * (1 - slack)) & (params <= ranges[:, 1] * (1 + slack)), axis=1)
        inv = 1.0 / params
        out = np.empty(len(params), dtype=np.int64)
        ft = self.features.T
        for start in range(0, len(params), chunk):
            out[start : start + chunk] = np.argmin(inv[start : start + chunk] @ ft, axis=1)
        out[~inside] = -1
        if device_memory_bytes is not None:
            limit = np.broadcast_to(np.asarray(device_memory_bytes, dtype=float), out.shape)
            too_big = (out >= 0) & (self.memory_bytes[np.maximum(out, 0)] > limit)
            out[too_big] = -1
        return out

    def assignment(self, index: int) -> dict[str, int]:
        return {n: int(t) for n, t in zip(self.cg.names, self.assignments[index], strict=True)}

    def plans(self, speeds: Sequence[TierSpeeds], device_memory_bytes: Sequence[float] | None = None) -> list[Plan]:
        """Exact plans for many devices: the envelope where it applies, a min cut elsewhere."""
        num = self.box.num_tiers
        cols = list(zip(*[s.flops_per_s + s.bandwidth_bps for s in speeds], strict=True))
        idx = self.plan(
            np.array(cols[0]),
            np.array(cols[1]),
            np.array(cols[2]) if num == 3 else None,
            np.array(cols[num]),
            np.array(cols[num + 1]) if num == 3 else None,
            device_memory_bytes=None if device_memory_bytes is None else np.array(device_memory_bytes),
        )
        out = []
        for i, (s, j) in enumerate(zip(speeds, idx, strict=True)):
            if j >= 0:
                out.append(plan_from_vector(self.cg, s, self.assignments[j], "candidates"))
                continue
            cg = self.cg
            if device_memory_bytes is not None:
                from dataclasses import replace

                cg = replace(cg, memory_limit_bytes=float(device_memory_bytes[i]))
            x, method, bound = solve_vector(cg, s, "mincut")
            out.append(plan_from_vector(cg, s, x, method, bound))
        return out


def build_candidate_set(cg: CostGraph, box: ParameterBox, max_passes: int = 50) -> CandidateSet:
    """Find the complete lower envelope over ``box`` with min cuts (see the module docstring).

    Memory limits are not part of the envelope (``cg.memory_limit_bytes`` is ignored); pins are.
    """
    assert box.num_tiers == cg.num_tiers, "the box and the cost graph disagree on the number of tiers"
    ranges = np.array(box.ranges())
    # p_i = 1/param_i; normalise q_i = p_i / p_max_i so every coordinate lies in [r_i, 1].
    p_max = 1.0 / ranges[:, 0]
    q_lo = (1.0 / ranges[:, 1]) / p_max
    d = len(ranges)
    free = [i for i in range(d) if q_lo[i] < 1.0]
    fixed = [i for i in range(d) if q_lo[i] >= 1.0]

    feats: list[np.ndarray] = []  # normalised features G = F * p_max
    xs: list[tuple[int, ...]] = []
    seen: set[tuple[float, ...]] = set()
    mincuts = 0

    def cut_at(q: np.ndarray) -> tuple[int, ...]:
        nonlocal mincuts
        mincuts += 1
        return min_cut(cg, _speeds_at(q * p_max, cg.num_tiers)).x

    def add(x: tuple[int, ...]) -> bool:
        f = features(cg, x)
        if f in seen:
            return False
        seen.add(f)
        xs.append(x)
        feats.append(np.array(f) * p_max)
        return True

    corners = [np.array(c) for c in itertools.product(*[(q_lo[i], 1.0) for i in range(d)])]
    for q in [*corners, (q_lo + 1.0) / 2]:
        add(cut_at(q))

    # Box faces as halfspaces in the free coordinates: -q + lo <= 0 and q - 1 <= 0.
    nf = len(free)
    box_a = np.vstack([-np.eye(nf), np.eye(nf)]) if nf else np.zeros((0, 0))
    box_b = np.concatenate([q_lo[free], -np.ones(nf)]) if nf else np.zeros(0)
    q_fixed = np.ones(len(fixed))
    verified: set[tuple[float, ...]] = set()
    for _ in range(max_passes):
        g = np.array(feats)
        added = False
        for j in range(len(g)):
            diff = g[j] - np.delete(g, j, axis=0)  # candidate j is best where diff · q <= 0
            a = np.vstack([diff[:, free], box_a]) if nf else diff[:, free]
            b = np.concatenate([diff[:, fixed] @ q_fixed, box_b]) if nf else diff[:, fixed] @ q_fixed
            if nf == 0:
                points = [np.ones(d)] if np.all(b <= 0) else []
            else:
                points = []
                for v in _vertices(a, b, min_radius=1e-13):
                    q = np.ones(d)
                    q[free] = np.clip(v, q_lo[free], 1.0)
                    points.append(q)
            for q in points:
                key = tuple(np.round(q, 12))
                if key in verified:
                    continue
                x = cut_at(q)
                envelope = float(np.min(np.array(feats) @ q))
                best = float((np.array(features(cg, x)) * p_max) @ q)  # same normalisation as envelope
                if best < envelope * (1 - _REL_TOL) and add(x):
                    added = True
                else:
                    verified.add(key)
        if not added:
            break
    else:
        raise AssertionError("candidate set did not converge; raise max_passes")

    # Keep only candidates whose region has an interior: the others are never strictly needed.
    g = np.array(feats)
    keep = []
    for j in range(len(g)):
        diff = g[j] - np.delete(g, j, axis=0)
        if nf == 0:
            keep.append(j) if not keep else None
            continue
        a = np.vstack([diff[:, free], box_a])
        b = np.concatenate([diff[:, fixed] @ q_fixed, box_b])
        cheb = _chebyshev(a, b)
        if cheb is not None and cheb[1] > 1e-13:
            keep.append(j)
    final_x = tuple(xs[j] for j in keep)
    return CandidateSet(
        cg=cg,
        box=box,
        assignments=final_x,
        features=np.array([features(cg, x) for x in final_x], dtype=float),
        memory_bytes=np.array([memory_of(cg, x) for x in final_x], dtype=float),
        mincuts=mincuts,
    )
