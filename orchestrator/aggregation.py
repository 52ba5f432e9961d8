"""Aggregation policies (chosen by name in the scenario): how device models become the global model.

Each policy says how devices are grouped for partial sums and how group sums combine; the round
loop does not know which one it runs (conventions: a policy is an object, not an ``if``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np

from tierflow.tiers.aggregate import WeightedSum, weighted_average


class AggregationPolicy(Protocol):
    name: str

    def groups(self, edge_of: Mapping[str, str | None]) -> dict[str, list[str]]:
        """Device ids per group whose partial sums are taken together."""

    def edge_models(self, sums: Mapping[str, WeightedSum]) -> dict[str, dict[str, np.ndarray]]:
        """Per-edge averaged models for an intermediate (edge-only) aggregation; {} if none."""

    def global_model(self, sums: Mapping[str, WeightedSum]) -> dict[str, np.ndarray]:
        """The new global model from the groups' partial sums."""


class HierFAVG:
    """Edges average their devices; the cloud averages the edges weighted by their samples."""

    name = "hierfavg"

    def groups(self, edge_of):
        out: dict[str, list[str]] = {}
        for device, edge in sorted(edge_of.items()):
            if edge is not None:
                out.setdefault(edge, []).append(device)
        return out

    def edge_models(self, sums):
        return {edge: s.average() for edge, s in sums.items() if s.sums}

    def global_model(self, sums):
        edges = [(s.average(), s.total_weight) for s in sums.values() if s.sums]
        return weighted_average(edges)


class FlatFedAvg:
    """The cloud averages every device directly (FedAvg); no edge-level models."""

    name = "flat"

    def groups(self, edge_of):
        return {"all": sorted(d for d, e in edge_of.items() if e is not None)}

    def edge_models(self, sums):
        return {}

    def global_model(self, sums):
        return sums["all"].average()


AGGREGATIONS = {"hierfavg": HierFAVG, "flat": FlatFedAvg}


def restrict(groups: Mapping[str, Sequence[str]], allowed: set[str]) -> dict[str, list[str]]:
    return {g: [d for d in ds if d in allowed] for g, ds in groups.items()}
