"""Round-boundary checkpoints: everything a run needs to continue exactly where it stood.

A checkpoint is a directory ``RUN_DIR/checkpoint`` with ``state.json`` (the orchestrator's own
state, and the JSON headers of every exported session) and ``arrays.npz`` (the global model,
every device's stage and every edge and cloud session, with optimizer state). It is written to a
temporary directory and swapped in with renames, so a crash mid-write leaves the previous one.
Nothing is pickled: arrays load with ``allow_pickle=False``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote

import numpy as np

from tierflow.orchestrator.errors import TierflowError

CHECKPOINT = "checkpoint"
Export = tuple[dict, dict[str, np.ndarray]]  # a session's JSON header and its arrays


@dataclass(frozen=True)
class Checkpoint:
    state: dict  # the orchestrator's state: round, clocks, counters, where each device is, splits, ...
    global_model: dict[str, np.ndarray]
    devices: dict[str, Export]  # device id -> its device-side stage and batch sampler
    sessions: dict[str, dict[str, Export]]  # actor name ("cloud", an edge) -> session id -> export

    @property
    def round(self) -> int:
        return int(self.state["round"])


def scenario_fingerprint(scenario) -> str:
    """Identifies a parsed scenario: a resumed run must continue the same one."""
    return hashlib.sha256(repr(scenario).encode()).hexdigest()


def save_checkpoint(run_dir: Path, ckpt: Checkpoint) -> Path:
    final = run_dir / CHECKPOINT
    tmp = run_dir / (CHECKPOINT + ".tmp")
    old = run_dir / (CHECKPOINT + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    arrays: dict[str, np.ndarray] = {f"global/{k}": v for k, v in ckpt.global_model.items()}
    device_meta = {}
    for d, (meta, arr) in ckpt.devices.items():
        device_meta[d] = meta
        arrays.update({f"device/{quote(d, safe='')}/{k}": v for k, v in arr.items()})
    session_meta: dict[str, dict] = {}
    for actor, sessions in ckpt.sessions.items():
        session_meta[actor] = {}
        for sid, (meta, arr) in sessions.items():
            session_meta[actor][sid] = meta
            arrays.update({f"session/{quote(actor, safe='')}/{quote(sid, safe='')}/{k}": v
                           for k, v in arr.items()})
    with open(tmp / "arrays.npz", "wb") as fh:
        np.savez(fh, **arrays)
        fh.flush()
        os.fsync(fh.fileno())
    doc = {"state": ckpt.state, "devices": device_meta, "sessions": session_meta}
    (tmp / "state.json").write_text(json.dumps(doc, indent=1, sort_keys=True))
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def _split_key(name: str, prefix: str, levels: int) -> tuple[list[str], str]:
    """``prefix/a/b/rest`` -> (["a", "b"], "rest"); ids are %-quoted, array names may hold '/'."""
    parts = name[len(prefix):].split("/", levels)
    return [unquote(p) for p in parts[:levels]], parts[levels]


def load_checkpoint(run_dir: Path) -> Checkpoint:
    where = run_dir / CHECKPOINT
    if not (where / "state.json").is_file() or not (where / "arrays.npz").is_file():
        raise TierflowError(f"{run_dir}: no checkpoint to resume from (expected {where}/state.json and "
                            "arrays.npz, written at every round boundary)")
    try:
        doc = json.loads((where / "state.json").read_text())
        with np.load(where / "arrays.npz", allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as exc:
        raise TierflowError(f"{where}: the checkpoint is unreadable ({exc})") from exc
    global_model = {k.removeprefix("global/"): v for k, v in arrays.items() if k.startswith("global/")}
    devices: dict[str, Export] = {d: (meta, {}) for d, meta in doc["devices"].items()}
    sessions: dict[str, dict[str, Export]] = {a: {s: (m, {}) for s, m in ss.items()}
                                               for a, ss in doc["sessions"].items()}
    for name, value in arrays.items():
        if name.startswith("device/"):
            (d,), rest = _split_key(name, "device/", 1)
            devices[d][1][rest] = value
        elif name.startswith("session/"):
            (actor, sid), rest = _split_key(name, "session/", 2)
            sessions[actor][sid][1][rest] = value
    return Checkpoint(doc["state"], global_model, devices, sessions)


def exports_by_owner(exports: Mapping[str, Export], owner_of: Mapping[str, int]) -> dict[int, dict[str, Export]]:
    out: dict[int, dict[str, Export]] = {}
    for d, export in exports.items():
        out.setdefault(owner_of[d], {})[d] = export
    return out
