"""What a run has decided so far: the global model, each device's split and session, the counters.

The round loop and the round policies advance it; a checkpoint saves it and a resume puts it back
(with the simulation's and the placement's state beside it).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import numpy as np

from tierflow.tiers.session import SplitKey

State = dict[str, np.ndarray]
LINKS = ("device-edge", "edge-cloud")


@dataclass
class Counters:
    """The run's totals, as the summary reports them."""

    handovers: int = 0
    migrations: int = 0
    migration_bytes: int = 0
    migration_time_s: float = 0.0
    failed_migrations: int = 0
    restarts: int = 0
    switches: int = 0  # devices re-planned to another split
    replan_saved_s: float = 0.0  # predicted seconds per round the adopted re-plans saved when made
    ring_passes: int = 0  # a ring's session following its members across edges (not handovers)
    ring_pass_bytes: int = 0
    ring_pass_time_s: float = 0.0

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict) -> Counters:
        known = {f.name: f.type for f in fields(cls)}
        return cls(**{k: (float(v) if known[k] == "float" else int(v)) for k, v in doc.items() if k in known})


def zero_bytes() -> dict[str, dict[str, int]]:
    return {link: {"up": 0, "down": 0} for link in LINKS}


@dataclass
class RunState:
    global_state: State
    splits: dict[str, SplitKey]  # the split each device trains now
    session_at: dict[str, str]  # which edge holds each device's server-side session
    last_pushed: dict[str, State]  # the model each device was last given (a restart or rejoin starts there)
    round: int = 0
    period: int = 0  # of the round, for the edge aggregations between cloud aggregations
    round_failures: int = 0
    counters: Counters = field(default_factory=Counters)
    pending_extra_s: dict[str, float] = field(default_factory=dict)  # charged in a device's next period
    bytes_total: dict[str, dict[str, int]] = field(default_factory=zero_bytes)
    time_to_target: dict[str, float] | None = None
    cohort: frozenset[str] | None = None  # the devices this round trains (training.devices_per_round); None: all


def split_to_json(key: SplitKey) -> dict:
    return {"tiers": [list(t) for t in key.tiers], "n_tiers": key.n_tiers}


def split_from_json(doc: dict) -> SplitKey:
    return SplitKey(tuple((str(n), int(t)) for n, t in doc["tiers"]), int(doc["n_tiers"]))
