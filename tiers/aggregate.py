"""FedAvg as partial sums, so each tier actor sums what it holds and only sums travel.

A device's model lives in pieces on up to three tiers; every piece is a set of named tensors.
Summing ``weight * tensor`` per name wherever the pieces are, then dividing, gives the weighted
average of the whole models without ever assembling one per device.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np


@dataclass
class WeightedSum:
    """Running sum of ``weight * value`` and of ``weight``, per tensor name."""

    sums: dict[str, np.ndarray] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)
    dtypes: dict[str, str] = field(default_factory=dict)

    def add(self, state: Mapping[str, np.ndarray], weight: float) -> None:
        for name, value in state.items():
            value = np.asarray(value)
            # In float64 from the first operation on: the same floats as converting first.
            contribution = np.multiply(value, weight, dtype=np.float64)
            if name in self.sums:
                self.sums[name] += contribution
                self.weights[name] += weight
            else:
                self.sums[name] = contribution
                self.weights[name] = weight
                self.dtypes[name] = value.dtype.str

    def merge(self, other: WeightedSum) -> None:
        for name, total in other.sums.items():
            if name in self.sums:
                self.sums[name] = self.sums[name] + total
                self.weights[name] += other.weights[name]
            else:
                self.sums[name] = total.copy()
                self.weights[name] = other.weights[name]
                self.dtypes[name] = other.dtypes[name]

    def average(self) -> dict[str, np.ndarray]:
        """The weighted mean per name, in the tensors' own dtypes (integer buffers are rounded)."""
        out = {}
        for name, total in self.sums.items():
            mean = total / self.weights[name]
            dtype = np.dtype(self.dtypes[name])
            out[name] = np.asarray(np.rint(mean) if dtype.kind in "iu" else mean).astype(dtype)
        return out

    @property
    def total_weight(self) -> float:
        return max(self.weights.values(), default=0.0)


def weighted_average(states: Iterable[tuple[Mapping[str, np.ndarray], float]]) -> dict[str, np.ndarray]:
    """Plain FedAvg over whole models: the flat oracle for the hierarchical version."""
    acc = WeightedSum()
    for state, weight in states:
        acc.add(state, weight)
    return acc.average()
