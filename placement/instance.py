"""The bare cost-graph instance format: a placement problem as a JSON file, loaded and solved.

    {"nodes": [{"id": "x", "fwd_flops": 0, "bwd_flops": 0, "activation_bytes": 3072}, ...],
     "edges": [["x", "conv1"], ...], "source": "x",
     "tier_flops_per_s": [1e9, 2e10, 1e11], "link_bandwidth_bps": [2e7, 1e9]}

FLOPs and bytes are per batch (no batch multiplier). A node may carry ``"tier": k`` to pin it.
Two speeds make a two-tier problem. The objective is the batch time of :mod:`placement.cost`.
Every malformed input raises :class:`InvalidInstanceError` naming the file and the field path.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import networkx as nx

from tierflow.placement.cost import CostGraph, TierSpeeds, features, time_from_features
from tierflow.placement.errors import InfeasiblePlacementError, InvalidInstanceError
from tierflow.placement.partition import brute_force_vector, solve_vector


@dataclass(frozen=True)
class InstanceNode:
    id: str
    fwd_flops: float
    bwd_flops: float
    activation_bytes: float
    tier: int | None = None


@dataclass(frozen=True)
class Instance:
    """A validated instance; ``origin`` names where it came from, for messages."""

    nodes: tuple[InstanceNode, ...]
    edges: tuple[tuple[str, str], ...]
    source: str
    tier_flops_per_s: tuple[float, ...]
    link_bandwidth_bps: tuple[float, ...]
    origin: str = "<instance>"

    @property
    def speeds(self) -> TierSpeeds:
        return TierSpeeds.of(self.tier_flops_per_s, self.link_bandwidth_bps)

    def cost_graph(self) -> CostGraph:
        g = nx.DiGraph()
        for i, node in enumerate(self.nodes):
            g.add_node(node.id, pos=i)
        g.add_edges_from(self.edges)
        names = list(nx.lexicographical_topological_sort(g, key=lambda n: g.nodes[n]["pos"]))
        pos = {n: i for i, n in enumerate(names)}
        by_id = {node.id: node for node in self.nodes}
        k = len(self.tier_flops_per_s)
        lo = [0 if n == self.source else (by_id[n].tier or 0) for n in names]
        hi = [0 if n == self.source else (k - 1 if by_id[n].tier is None else by_id[n].tier) for n in names]
        return CostGraph(
            names=tuple(names),
            succ=tuple(tuple(sorted(pos[w] for w in g.successors(n))) for n in names),
            work_flops=tuple(by_id[n].fwd_flops + by_id[n].bwd_flops for n in names),
            bits=tuple(16.0 * by_id[n].activation_bytes for n in names),
            memory_bytes=tuple(0.0 for _ in names),
            lo=tuple(lo),
            hi=tuple(hi),
            num_tiers=k,
        )


def _fail(origin: str, path: str, message: str) -> InvalidInstanceError:
    return InvalidInstanceError(f"{origin}: {path}: {message}" if path else f"{origin}: {message}")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _number(origin: str, path: str, v: Any, positive: bool) -> float:
    what = "a positive number" if positive else "a non-negative number"
    if not _is_number(v) or (v <= 0 if positive else v < 0):
        raise _fail(origin, path, f"expected {what}, got {json.dumps(v)}")
    return float(v)


def parse_instance(data: Any, origin: str = "<instance>") -> Instance:
    """Validate decoded JSON into an :class:`Instance`."""
    if not isinstance(data, dict):
        raise _fail(origin, "", f"expected a JSON object at the top level, got {type(data).__name__}")
    speeds_raw = data.get("tier_flops_per_s")
    if not isinstance(speeds_raw, list) or len(speeds_raw) not in (2, 3):
        raise _fail(
            origin, "tier_flops_per_s", f"expected a list of 2 or 3 positive numbers, got {json.dumps(speeds_raw)}"
        )
    speeds = tuple(_number(origin, f"tier_flops_per_s[{i}]", v, True) for i, v in enumerate(speeds_raw))
    k = len(speeds)
    bw_raw = data.get("link_bandwidth_bps")
    if not isinstance(bw_raw, list) or len(bw_raw) != k - 1:
        raise _fail(
            origin,
            "link_bandwidth_bps",
            f"expected a list of {k - 1} positive number(s), one per link between the {k} tiers, "
            f"got {json.dumps(bw_raw)}",
        )
    bws = tuple(_number(origin, f"link_bandwidth_bps[{i}]", v, True) for i, v in enumerate(bw_raw))

    nodes_raw = data.get("nodes")
    if not isinstance(nodes_raw, list) or not nodes_raw:
        raise _fail(origin, "nodes", f"expected a non-empty list of node objects, got {json.dumps(nodes_raw)}")
    nodes: list[InstanceNode] = []
    first_at: dict[str, int] = {}
    for i, raw in enumerate(nodes_raw):
        path = f"nodes[{i}]"
        if not isinstance(raw, dict):
            raise _fail(
                origin,
                path,
                f"expected an object with id, fwd_flops, bwd_flops, activation_bytes, got {json.dumps(raw)}",
            )
        node_id = raw.get("id")
        if not isinstance(node_id, str) or not node_id:
            raise _fail(origin, f"{path}.id", f"expected a non-empty string, got {json.dumps(node_id)}")
        if node_id in first_at:
            raise _fail(
                origin, f"{path}.id", f"duplicate id {json.dumps(node_id)} (first at nodes[{first_at[node_id]}])"
            )
        first_at[node_id] = i
        values = {}
        for field in ("fwd_flops", "bwd_flops", "activation_bytes"):
            if field not in raw:
                raise _fail(origin, f"{path}.{field}", "missing; expected a non-negative number")
            values[field] = _number(origin, f"{path}.{field}", raw[field], False)
        tier = raw.get("tier")
        if tier is not None and (isinstance(tier, bool) or not isinstance(tier, int) or not 0 <= tier < k):
            raise _fail(origin, f"{path}.tier", f"expected an integer tier from 0 to {k - 1}, got {json.dumps(tier)}")
        nodes.append(InstanceNode(node_id, tier=tier, **values))

    edges_raw = data.get("edges", [])
    if not isinstance(edges_raw, list):
        raise _fail(origin, "edges", f"expected a list of [from, to] pairs, got {json.dumps(edges_raw)}")
    edges: list[tuple[str, str]] = []
    for i, e in enumerate(edges_raw):
        if not isinstance(e, list) or len(e) != 2:
            raise _fail(origin, f"edges[{i}]", f"expected a [from, to] pair of node ids, got {json.dumps(e)}")
        for j, end in enumerate(e):
            if not isinstance(end, str) or end not in first_at:
                raise _fail(origin, f"edges[{i}][{j}]", f"unknown node id {json.dumps(end)}")
        if e[0] == e[1]:
            raise _fail(origin, f"edges[{i}]", f"self-loop on {json.dumps(e[0])}")
        edges.append((e[0], e[1]))
    g = nx.DiGraph(edges)
    g.add_nodes_from(first_at)
    try:
        cycle = nx.find_cycle(g)
    except nx.NetworkXNoCycle:
        cycle = None
    if cycle:
        loop = " -> ".join([u for u, _ in cycle] + [cycle[0][0]])
        raise _fail(origin, "edges", f"expected an acyclic graph, found the cycle {loop}")

    source = data.get("source")
    if not isinstance(source, str) or source not in first_at:
        raise _fail(origin, "source", f"expected the id of a node, got {json.dumps(source)}")
    if g.in_degree(source):
        raise _fail(origin, "source", f"the source {json.dumps(source)} holds the raw data and cannot have inputs")
    src_tier = nodes[first_at[source]].tier
    if src_tier not in (None, 0):
        raise _fail(
            origin, f"nodes[{first_at[source]}].tier", f"the source is on the device: expected 0, got {src_tier}"
        )
    return Instance(tuple(nodes), tuple(edges), source, speeds, bws, origin)


def load_instance(path: str | Path) -> Instance:
    """Read and validate an instance file (a trusted one: ``tierflow plan`` reads the file through
    its bounded reader and calls :func:`instance_from_text`)."""
    origin = str(path)
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise _fail(origin, "", f"cannot read the file: {getattr(exc, 'strerror', None) or exc}") from exc
    return instance_from_text(text, origin)


def instance_from_text(text: str, origin: str) -> Instance:
    """Parse and validate an instance's JSON text; ``origin`` names it in errors."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _fail(origin, "", f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except (ValueError, RecursionError) as exc:  # an integer of 5,000 digits, nesting deeper than the stack
        raise _fail(origin, "", f"not valid JSON: {type(exc).__name__}: {str(exc)[:80]}") from None
    return parse_instance(data, origin)


def solve_instance(instance: Instance, method: str = "auto") -> dict[str, Any]:
    """``{"assignment": {id: tier}, "batch_time_s": T}`` for the optimal placement."""
    cg = instance.cost_graph()
    speeds = instance.speeds
    try:
        x = brute_force_vector(cg, speeds) if method == "brute_force" else solve_vector(cg, speeds, method)[0]
    except InfeasiblePlacementError as exc:
        raise _fail(
            instance.origin, "nodes", f"the tier pins admit no placement where data flows upward ({exc})"
        ) from exc
    return {
        "assignment": {n: int(t) for n, t in zip(cg.names, x, strict=True)},
        "batch_time_s": time_from_features(features(cg, x), speeds),
    }
