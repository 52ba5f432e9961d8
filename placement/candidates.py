"""Planning many devices at once from a precomputed candidate set.

A partition x's batch time is linear in the inverse speeds and bandwidths:
T_x(p) = F_x · p with p = (1/s_0, 1/s_1[, 1/s_2], 1/B_1[, 1/B_2]). The best time
g(p) = min_x T_x(p) is concave, and only the partitions that are optimal somewhere in the
supported box of p matter: the lower envelope. Coordinates are normalised, q = p / p_max, so the
box is Π [q_lo_i, 1].

What is proved. Keep a set C. For j ∈ C its region is R_j = {q ∈ box : T_j(q) <= T_i(q), i ∈ C},
a convex polytope. If T_j(v) <= (1 + 1e-10) · g(v) at every vertex v of R_j, then the same holds
on all of R_j: any q ∈ R_j is a convex combination Σ λ_v v, and g is concave while T_j is linear,
so g(q) >= Σ λ_v g(v) >= Σ λ_v T_j(v) / (1 + 1e-10) = T_j(q) / (1 + 1e-10). (The old builder had
this argument right; what broke it was numerics: the halfspace rows were differences of batch
times, as small as 1e-8, and the Chebyshev LP's absolute tolerances called real regions empty, so
optimal partitions were pruned; thin regions were skipped; and the min cut that certified a vertex
was exact only relative to the sum of all worst-case costs.) The builder now, for every candidate:

* normalises each halfspace row to unit length;
* finds the region's vertices with qhull (``HalfspaceIntersection``) when an LP (tolerances 1e-10)
  gives a centre at least 5e-10 inside every halfspace, checked in floats; otherwise, or if qhull
  fails, by solving every d-subset of halfspaces with smallest singular value >= 1e-6 and keeping
  the feasible solutions (complete: a vertex has d independent tight halfspaces). A nearly
  singular subset whose solution is nearly feasible may hide a vertex: then the region is not
  proved;
* re-solves each vertex from its best-conditioned d tight halfspaces with one step of
  extended-precision refinement, and gives up on the region if those are nearly dependent;
* runs a min cut at each vertex (within 1e-12 of the optimum, see :mod:`placement.partition`); the
  vertex passes if T_j(v) <= (1 + 1e-10) · (cut time − rounding bound); a cut that beats T_j(v) by
  more than 5e-11 adds its partition.

Passes repeat until one adds nothing; a candidate whose region passed every check in that last
pass is *proved*. Candidates that another dominates feature by feature are dropped: they never
lower the envelope and do not change any other region. What is left to floating point: the
halfspace rows and vertices are rounded (to about 1e-16 of the box size after refinement), which
moves T and g by about 1e-16 / q_lo relative because every feature is >= 0 and q >= q_lo; for
boxes spanning up to 1e5 per parameter that is about 1e-11. The tests check the whole pipeline
against brute force on random DAGs to 1e-9.

What falls back to a per-device min cut (:meth:`CandidateSet.plan` returns -1,
:meth:`CandidateSet.plans` solves those devices exactly):

* devices for which an unproved candidate (empty, degenerate or ill-conditioned region, or a
  vertex its min cut could not certify) is within 1e-12 of their best candidate: this covers every
  device whose optimum among C is unproved, and float ties at the argmin;
* devices outside the box (the proof says nothing there);
* devices whose memory limit rules out the chosen candidate (if it fits, it is within 1e-10 of the
  constrained optimum too, since the constrained optimum is no better than the unconstrained).

Every other device gets a candidate within about 1e-10 of its own min cut. ``CandidateSet.proved``
says which candidates are proved; on resnet_small over the benchmark box all of them are.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from tierflow.placement.cost import CostGraph, TierSpeeds, features, memory_of
from tierflow.placement.partition import Plan, min_cut, plan_from_vector, solve_vector

_PROOF_TOL = 1e-10  # a proved candidate is within this of the optimum on its whole region
_ADD_TOL = 5e-11  # a min cut adds its partition when it beats the region's candidate by this
_TIE_TOL = 1e-12  # plan time: an unproved candidate this close to the best sends the device to a cut
_MIN_RADIUS = 1e-9  # regions with a thinner inscribed ball (in q) get the subset enumeration
_MIN_SIGMA = 1e-6  # a vertex whose tight (unit) halfspaces are closer to dependent is not trusted
_LP_OPTIONS = {"primal_feasibility_tolerance": 1e-10, "dual_feasibility_tolerance": 1e-10}


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


def _normalised(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Rows of {q : a q + b <= 0} scaled to unit length; None if a constant row is violated.

    The rows are differences of batch times, whose magnitudes span many decades: unscaled, an LP
    with absolute tolerances treats a row of size 1e-8 as always satisfied (that was the bug).
    """
    norms = np.linalg.norm(a, axis=1)
    constant = norms == 0
    if np.any(b[constant] > 0):
        return None
    keep = ~constant
    return a[keep] / norms[keep, None], b[keep] / norms[keep]


def _chebyshev(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, float] | None:
    """Centre and radius of the largest ball in {q : a q + b <= 0} (unit rows), or None if empty."""
    from scipy.optimize import linprog

    d = a.shape[1]
    c = np.zeros(d + 1)
    c[-1] = -1.0
    res = linprog(
        c,
        A_ub=np.hstack([a, np.ones((len(a), 1))]),
        b_ub=-b,
        bounds=[(None, None)] * d + [(0, None)],
        options=_LP_OPTIONS,
    )
    if res.status != 0:
        return None
    return res.x[:-1], float(res.x[-1])


def _vertices(a: np.ndarray, b: np.ndarray) -> np.ndarray | None:
    """Vertices of the polytope {q : a q + b <= 0}, or None where they cannot be trusted.

    qhull for regions with a clear interior; regions that are thin or where qhull fails get the
    enumeration of every d-subset of halfspaces instead. An empty array means an empty region.
    """
    rows = _normalised(a, b)
    if rows is None:
        return np.empty((0, a.shape[1]))
    a, b = rows
    d = a.shape[1]
    if d == 1:
        lo = max((-bi / ai for (ai,), bi in zip(a, b, strict=True) if ai < 0), default=-np.inf)
        hi = min((-bi / ai for (ai,), bi in zip(a, b, strict=True) if ai > 0), default=np.inf)
        return np.array([[lo], [hi]]) if lo <= hi else np.empty((0, 1))
    cheb = _chebyshev(a, b)
    if cheb is None:
        return np.empty((0, d))
    centre, radius = cheb
    if radius >= _MIN_RADIUS and np.max(a @ centre + b) <= -_MIN_RADIUS / 2:  # clearly inside
        from scipy.spatial import HalfspaceIntersection

        try:
            verts = HalfspaceIntersection(np.hstack([a, b[:, None]]), centre).intersections
        except Exception:  # qhull precision trouble (near-degenerate vertices)
            verts = None
        if verts is not None and len(verts) > d and np.all(np.isfinite(verts)):
            if np.max(verts @ a.T + b) <= 1e-9:
                return _polished(a, b, verts)
    verts = _vertices_by_subsets(a, b)
    return None if verts is None else _polished(a, b, verts)


def _polished(a: np.ndarray, b: np.ndarray, verts: np.ndarray) -> np.ndarray | None:
    """Each vertex re-solved from its best-conditioned d tight halfspaces, residual in extended precision.

    None if some vertex's tight halfspaces are nearly dependent (its position is then uncertain).
    """
    from scipy.linalg import qr

    d = a.shape[1]
    out = np.empty_like(verts)
    for n, v in enumerate(verts):
        tight = np.flatnonzero(np.abs(a @ v + b) <= 1e-9)
        if len(tight) < d:
            return None
        pivots = qr(a[tight].T, pivoting=True, mode="economic")[2]
        rows = tight[pivots[:d]]
        mat, rhs = a[rows], -b[rows]
        if np.linalg.svd(mat, compute_uv=False)[-1] < _MIN_SIGMA:
            return None
        x = np.linalg.solve(mat, rhs)
        residual = rhs.astype(np.longdouble) - mat.astype(np.longdouble) @ x.astype(np.longdouble)
        out[n] = x + np.linalg.solve(mat, residual.astype(float))
    if np.max(out @ a.T + b) > 1e-9:
        return None
    return out


def _vertices_by_subsets(a: np.ndarray, b: np.ndarray, max_subsets: int = 300_000) -> np.ndarray | None:
    """Every vertex as the solution of d tight halfspaces (unit rows), or None if unsure.

    A vertex has d linearly independent tight halfspaces, so solving every well-conditioned
    d-subset and keeping the feasible solutions finds all of them. A nearly singular subset whose
    solution is nearly feasible may hide a vertex that no well-conditioned subset defines: then
    the answer is None (the region stays unproved) rather than a guess.
    """
    m, d = a.shape
    if math.comb(m, d) > max_subsets:
        return None
    subsets = np.array(list(itertools.combinations(range(m), d)), dtype=np.int64)
    mats = a[subsets]
    rhs = -b[subsets]
    sigma_min = np.linalg.svd(mats, compute_uv=False)[:, -1]
    singular = sigma_min < 1e-12  # exactly parallel rows (opposite box faces, equal differences)
    good = sigma_min >= _MIN_SIGMA

    def feasible(mask: np.ndarray, tol: np.ndarray | float) -> np.ndarray:
        x = np.linalg.solve(mats[mask], rhs[mask][..., None])[..., 0]
        return x[np.max(x @ a.T + b, axis=1) <= tol]

    verts = feasible(good, 1e-11 + 1e-15 / sigma_min[good])
    doubtful = ~good & ~singular
    if doubtful.any() and len(feasible(doubtful, 1e-6)):
        return None
    if len(verts) == 0:
        return verts
    # Merge copies of one vertex found from several subsets (relative 1e-13 buckets).
    keys = np.round(np.log(np.maximum(verts, 1e-300)) * 1e13)
    _, first = np.unique(keys, axis=0, return_index=True)
    return verts[np.sort(first)]


@dataclass(frozen=True)
class CandidateSet:
    """The lower envelope of partitions for one model (cost graph with its pins) over a box."""

    cg: CostGraph
    box: ParameterBox
    assignments: tuple[tuple[int, ...], ...]
    features: np.ndarray = field(repr=False)  # (candidates, 2K-1), per-batch FLOPs and bits
    memory_bytes: np.ndarray = field(repr=False)
    proved: np.ndarray = field(repr=False)  # bool per candidate: its region passed every vertex check
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
        """Index of the best candidate per device; -1 where the device needs its own min cut.

        -1 means the device lies outside the box, or an unproved candidate is within 1e-12 of its
        best one, or its memory limit rules out the chosen candidate (module docstring).
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
        unproved = ~self.proved
        any_unproved = bool(unproved.any())
        for start in range(0, len(params), chunk):
            times = inv[start : start + chunk] @ ft
            best = np.argmin(times, axis=1)
            if any_unproved:
                best_time = np.take_along_axis(times, best[:, None], axis=1)[:, 0]
                risky = times[:, unproved].min(axis=1) <= best_time * (1 + _TIE_TOL)
                best[risky] = -1
            out[start : start + chunk] = best
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
    """Find the lower envelope over ``box`` with min cuts and prove it region by region.

    See the module docstring for what is proved. Memory limits are not part of the envelope
    (``cg.memory_limit_bytes`` is ignored); pins are.
    """
    assert box.num_tiers == cg.num_tiers, "the box and the cost graph disagree on the number of tiers"
    ranges = np.array(box.ranges())
    # p_i = 1/param_i; normalise q_i = p_i / p_max_i so every coordinate lies in [q_lo_i, 1].
    p_max = 1.0 / ranges[:, 0]
    q_lo = (1.0 / ranges[:, 1]) / p_max
    d = len(ranges)
    free = [i for i in range(d) if q_lo[i] < 1.0]
    fixed = [i for i in range(d) if q_lo[i] >= 1.0]
    nf = len(free)

    xs: list[tuple[int, ...]] = []
    feats: list[np.ndarray] = []  # normalised features G = F * p_max, so T_x = G_x · q seconds
    seen: set[tuple[float, ...]] = set()
    cuts: dict[tuple[float, ...], tuple[tuple[int, ...], float, float]] = {}

    def cut_at(q: np.ndarray) -> tuple[tuple[int, ...], float, float]:
        """(partition, its time, a lower bound on the optimum) at q, one min cut per point."""
        key = tuple(q.tolist())
        if key not in cuts:
            res = min_cut(cg, _speeds_at(q * p_max, cg.num_tiers))
            time_s = float((np.array(features(cg, res.x)) * p_max) @ q)
            cuts[key] = (res.x, time_s, max(0.0, time_s - res.rounding_bound_s))  # times are >= 0
        return cuts[key]

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
        add(cut_at(q)[0])

    # Box faces as halfspaces in the free coordinates: -q + lo <= 0 and q - 1 <= 0.
    box_a = np.vstack([-np.eye(nf), np.eye(nf)])
    box_b = np.concatenate([q_lo[free], -np.ones(nf)])
    alive: list[int] = []
    proved: list[bool] = []
    for _ in range(max_passes):
        g = np.array(feats)
        # On the box T_x(q) = G_x[free] · q[free] + Σ G_x[fixed]: drop what another dominates.
        reduced = np.hstack([g[:, free], g[:, fixed].sum(axis=1, keepdims=True)])
        alive = [
            u
            for u in range(len(g))
            if not any(
                i != u and np.all(reduced[i] <= reduced[u]) and (i < u or np.any(reduced[i] < reduced[u]))
                for i in range(len(g))
            )
        ]
        added = False
        proved = []
        for j in alive:
            diff = reduced[j] - reduced[[i for i in alive if i != j]]  # T_j <= T_i  <=>  diff · (q, 1) <= 0
            a = np.vstack([diff[:, :nf], box_a])
            b = np.concatenate([diff[:, nf], box_b])
            if nf == 0:
                points = [np.ones(d)] if np.all(b <= 0) else None
            else:
                verts = _vertices(a, b)
                points = None
                if verts is not None and len(verts):  # an empty region proves nothing: keep it unproved
                    points = []
                    for v in verts:
                        q = np.ones(d)
                        q[free] = np.clip(v, q_lo[free], 1.0)
                        points.append(q)
            ok = points is not None
            for q in points or []:
                x, time_s, lower = cut_at(q)
                t_j = float(g[j] @ q)
                if t_j <= (1 + _PROOF_TOL) * lower:
                    continue
                ok = False
                if time_s < t_j * (1 - _ADD_TOL) and add(x):
                    added = True
            proved.append(ok)
        if not added:
            break
    else:
        raise AssertionError("candidate set did not converge; raise max_passes")

    final_x = tuple(xs[j] for j in alive)
    return CandidateSet(
        cg=cg,
        box=box,
        assignments=final_x,
        features=np.array([features(cg, x) for x in final_x], dtype=float),
        memory_bytes=np.array([memory_of(cg, x) for x in final_x], dtype=float),
        proved=np.array(proved, dtype=bool),
        mincuts=len(cuts),
    )
