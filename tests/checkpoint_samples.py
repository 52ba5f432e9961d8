"""Small checkpoints of the shape the orchestrator writes, for tests that need no Ray (and for a
child process that saves in a loop until it is killed: nothing heavy is imported here)."""

from __future__ import annotations

import hashlib

import numpy as np

from tierflow.orchestrator.checkpoint import Checkpoint


def split(n_tiers: int = 2) -> dict:
    return {"tiers": [["fc1", 0], ["fc2", 1]], "n_tiers": n_tiers}


def valid_state(round_: int, fingerprint: str = "f" * 64, scenario_path: str = "/x/s.yaml", events_bytes: int = 0,
                events_sha256: str = hashlib.sha256(b"").hexdigest()) -> dict:
    """A state.json ``state`` of the shape Orchestrator.save_checkpoint writes."""
    return {
        "round": round_, "scenario_fingerprint": fingerprint, "scenario_path": scenario_path,
        "events_bytes": events_bytes, "events_sha256": events_sha256,
        "wall_time_s": 1.5, "virtual_time_s": 2.5, "mobility_t": 0.0,
        "counters": {"handovers": 0, "migration_time_s": 0.0}, "bytes_total": {"device-edge": {"up": 1, "down": 2}},
        "time_to_target": None, "session_at": {"d0": "e0"}, "edge_of": {"d0": "e0", "d1": None},
        "detector": {"d0": "e0"}, "edges": ["e0"], "lost_hosts": [], "measured_flops": {},
        "splits": {"d0": split()}, "plans": {"d0": {"edge": "e0", "period_s": 0.5}}, "pending_extra_s": {},
        "switch_from": {}, "observed": {"d0": ["e0", [1.0, 2.0, 3.0, 4.0]]}, "profile_digest": None,
        "round_policy": {}, "cohort": None, "engines": {"host0": {"vgg5|[3]|16": "looped"}},
    }


def make_checkpoint(round_: int, size: int = 64, **state) -> Checkpoint:
    """A checkpoint whose every array holds ``round_``: what was loaded shows which round it is."""
    fill = np.full(size, float(round_), dtype=np.float32)
    return Checkpoint(valid_state(round_, **state), {"w": fill, "b": fill[:3].copy()},
                      {"d0": ({"step": round_}, {"stage/w": fill + 1})},
                      {"e0": {"d0": ({"opt": "sgd"}, {"w": fill + 2})}, "cloud": {}})
