"""A checkpoint's ``state.json`` state, typed: what the run loop saves at a round boundary and reads back.

The file layer (orchestrator/checkpoint.py) stores it as JSON beside the arrays; the shape is
checked (orchestrator/checkpoint_state.py) before this is built from it, so a field here never
meets a value of the wrong kind.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from tierflow.orchestrator.run_state import Counters, split_from_json, split_to_json
from tierflow.tiers.session import SplitKey


@dataclass(frozen=True)
class RunCheckpoint:
    round: int
    scenario_fingerprint: str
    scenario_path: str
    events_bytes: int  # the event log's length at the checkpoint (a resume cuts it there)
    events_sha256: str
    wall_time_s: float
    # the simulation
    virtual_time_s: float
    mobility_t: float
    edge_of: dict[str, str | None]
    detector: dict[str, str | None]
    # the run's state
    counters: Counters
    bytes_total: dict[str, dict[str, int]]
    time_to_target: dict[str, float] | None
    session_at: dict[str, str]
    splits: dict[str, SplitKey]
    pending_extra_s: dict[str, float]
    # the fleet
    edges: list[str]  # edge actors alive at the checkpoint
    lost_hosts: list[int]
    # the placement (adaptive; empty under fixed)
    plans: dict[str, dict[str, Any]]
    switch_from: dict[str, dict[str, Any]]
    observed: dict[str, list]
    measured_flops: dict[str, float]
    profile_digest: str | None
    round_policy: dict[str, Any]
    cohort: list[str] | None  # the next round's devices (training.devices_per_round); None: all
    engines: dict[str, dict[str, str]]  # host -> engine label -> engine: choices already announced

    def to_json(self) -> dict:
        doc = {f.name: getattr(self, f.name) for f in fields(self)}
        doc["counters"] = self.counters.to_json()
        doc["splits"] = {d: split_to_json(k) for d, k in self.splits.items()}
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> RunCheckpoint:
        """From a state the shape check passed."""
        values = {f.name: doc[f.name] for f in fields(cls)}
        values["counters"] = Counters.from_json(doc["counters"])
        values["splits"] = {d: split_from_json(v) for d, v in doc["splits"].items()}
        return cls(**values)
