"""Which devices train in a round (``training.devices_per_round``): Flower's fraction_fit, seeded.

A count (an integer >= 1) or a share of the devices available at the round's start (a fraction in
(0, 1], rounded up, at least one). The draw depends only on the run's seed, the round and who is
available, so two identical runs, and a run resumed from a checkpoint, train the same cohorts.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

_STREAM = 0x636F686F  # keeps the cohort's random stream apart from every other use of the seed


def cohort_size(per_round: int | float, available: int) -> int:
    if isinstance(per_round, int):
        return min(per_round, available)
    return min(available, max(1, math.ceil(per_round * available)))


def draw_cohort(per_round: int | float | None, seed: int, round_: int, available: Iterable[str]
                ) -> frozenset[str] | None:
    """The round's cohort among ``available``; None (everyone) when the scenario samples nobody out."""
    if per_round is None:
        return None
    pool = sorted(available)
    k = cohort_size(per_round, len(pool))
    rng = np.random.default_rng([seed, round_, _STREAM])
    return frozenset(pool[i] for i in rng.choice(len(pool), size=k, replace=False))
