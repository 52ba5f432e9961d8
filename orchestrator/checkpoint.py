"""Round-boundary checkpoints: everything a run needs to continue exactly where it stood.

A checkpoint is a directory ``RUN_DIR/checkpoint`` with ``state.json`` (the orchestrator's own
state, and the JSON headers of every exported session), ``arrays.npz`` (the global model, every
device's stage and every edge and cloud session, with optimizer state) and a manifest of their
sizes and digests. It is written aside and swapped in so that a crash at any step leaves a
complete checkpoint (orchestrator/durable_dir.py). Nothing is pickled: arrays load with
``allow_pickle=False``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote

import numpy as np

from tierflow.orchestrator.checkpoint_state import check_state_document
from tierflow.orchestrator.durable_dir import MANIFEST, read_version, write_version
from tierflow.orchestrator.errors import TierflowError

if TYPE_CHECKING:
    from tierflow.orchestrator.scenario import Scenario

CHECKPOINT = "checkpoint"
STATE, ARRAYS = "state.json", "arrays.npz"
GLOBAL_COPIES = "global_copies"  # state.json: array names whose value is the global model's (not in arrays.npz)
WHAT = "checkpoint"
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


def scenario_fingerprint(scenario: Scenario) -> str:
    """Identifies a parsed scenario: a resumed run must continue the same one. It does not depend on
    how a path was typed (relative to which directory): the scenario file's own path is left out
    (what was parsed from it counts), and the files it names count by where they resolve."""
    def resolved(path: object) -> object:
        return os.path.realpath(path) if isinstance(path, str) else path

    canonical = replace(
        scenario, source="",
        dataset=replace(scenario.dataset, path=resolved(scenario.dataset.path)),
        mobility=replace(scenario.mobility, trace=resolved(scenario.mobility.trace)),
        resources=replace(scenario.resources, trace_path=resolved(scenario.resources.trace_path)))
    return hashlib.sha256(repr(canonical).encode()).hexdigest()


def save_checkpoint(run_dir: Path, ckpt: Checkpoint) -> Path:
    """Write ``ckpt`` as ``run_dir/checkpoint``, crash-safe at every step (orchestrator/durable_dir.py)."""
    arrays: dict[str, np.ndarray] = {f"global/{k}": v for k, v in ckpt.global_model.items()}
    # At a round boundary every stage and session has just been given the global model, so most
    # session arrays equal it: written once as global/NAME and listed by name, not 10,000 times.
    global_copies: list[str] = []
    device_meta = {}
    for d, (meta, arr) in ckpt.devices.items():
        device_meta[d] = meta
        _add_arrays(arrays, global_copies, f"device/{quote(d, safe='')}/", arr, ckpt.global_model)
    session_meta: dict[str, dict] = {}
    for actor, sessions in ckpt.sessions.items():
        session_meta[actor] = {}
        for sid, (meta, arr) in sessions.items():
            session_meta[actor][sid] = meta
            _add_arrays(arrays, global_copies, f"session/{quote(actor, safe='')}/{quote(sid, safe='')}/", arr,
                        ckpt.global_model)
    # Compact, so json's C encoder writes it (an indented document of 10,000 devices took seconds).
    doc = json.dumps({"state": ckpt.state, "devices": device_meta, "sessions": session_meta,
                      GLOBAL_COPIES: global_copies}, sort_keys=True, separators=(",", ":")).encode()
    return write_version(run_dir, CHECKPOINT, WHAT, {ARRAYS: lambda fh: np.savez(fh, **arrays),
                                                      STATE: lambda fh: fh.write(doc)})


def _add_arrays(arrays: dict[str, np.ndarray], global_copies: list[str], prefix: str,
                export: dict[str, np.ndarray], global_model: dict[str, np.ndarray]) -> None:
    """An export's arrays under ``prefix``; one named ``state/K`` equal to the global model's K (same
    dtype, shape and bits) is listed in ``global_copies`` instead of written."""
    for k, v in export.items():
        g = global_model.get(k[len("state/"):]) if k.startswith("state/") else None
        if g is not None and g.dtype == v.dtype and g.shape == v.shape and g.tobytes() == v.tobytes():
            global_copies.append(prefix + k)
        else:
            arrays[prefix + k] = v


def _split_key(name: str, prefix: str, levels: int) -> tuple[list[str], str] | None:
    """``prefix/a/b/rest`` -> (["a", "b"], "rest"); ids are %-quoted, array names may hold '/'."""
    parts = name[len(prefix):].split("/", levels)
    if len(parts) <= levels:
        return None
    return [unquote(p) for p in parts[:levels]], parts[levels]


def _owner_of(name: str, devices: dict[str, Export],
              sessions: dict[str, dict[str, Export]]) -> tuple[Export, str] | None:
    """The export an array belongs to and its name there; None if its ids are not listed."""
    if name.startswith("device/") and (key := _split_key(name, "device/", 1)):
        (device,), rest = key
        export = devices.get(device)
    elif name.startswith("session/") and (key := _split_key(name, "session/", 2)):
        (actor, sid), rest = key
        export = sessions.get(actor, {}).get(sid)
    else:
        return None
    return None if export is None else (export, rest)


def _read_arrays(data: bytes, where: Path) -> dict[str, np.ndarray]:
    """The arrays of an .npz archive, never unpickling (an object array is refused)."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    # zipfile raises NotImplementedError/RuntimeError for flag bits and methods it does not support.
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error, NotImplementedError,
            RuntimeError) as exc:
        raise TierflowError(f"{where}: expected a numpy .npz archive of plain arrays (as save_checkpoint "
                            f"writes), it is unreadable: {type(exc).__name__}: {str(exc)[:200]}") from None


def load_checkpoint(run_dir: Path) -> Checkpoint:
    """The newest complete checkpoint of ``run_dir`` (one a crash interrupted while it was being
    swapped in counts), verified against its manifest and checked for shape: any damage is a
    TierflowError naming the file, before anything is restored."""
    version = read_version(run_dir, CHECKPOINT, WHAT)
    if version is None:
        raise TierflowError(f"{run_dir}: no checkpoint to resume from (expected {run_dir / CHECKPOINT}/ with "
                            f"{STATE}, {ARRAYS} and {MANIFEST}, written at every round boundary)")
    missing = [f for f in (STATE, ARRAYS) if f not in version.files]
    if missing:
        raise TierflowError(f"{version.path / MANIFEST}: expected it to list {STATE} and {ARRAYS}, "
                            f"missing {', '.join(missing)}")
    state_path, arrays_path = version.path / STATE, version.path / ARRAYS
    try:
        doc = json.loads(version.files[STATE].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TierflowError(f"{state_path}: expected JSON text, got {type(exc).__name__}: {exc}") from None
    check_state_document(doc, str(state_path))
    arrays = _read_arrays(version.files[ARRAYS], arrays_path)
    global_model = {k.removeprefix("global/"): v for k, v in arrays.items() if k.startswith("global/")}
    devices: dict[str, Export] = {d: (meta, {}) for d, meta in doc["devices"].items()}
    sessions: dict[str, dict[str, Export]] = {a: {s: (m, {}) for s, m in ss.items()}
                                               for a, ss in doc["sessions"].items()}
    if not global_model:
        raise TierflowError(f"{arrays_path}: expected the global model's arrays (global/NAME), found none")
    for name, value in arrays.items():
        if name.startswith("global/"):
            continue
        owned = _owner_of(name, devices, sessions)
        if owned is None:
            raise TierflowError(f"{arrays_path}: array {name!r} belongs to no device or session {state_path} "
                                "lists; expected global/NAME, device/ID/NAME or session/ACTOR/ID/NAME of listed ids")
        owned[0][1][owned[1]] = value
    copies = doc.get(GLOBAL_COPIES, [])  # absent in checkpoints written before it existed
    if not isinstance(copies, list):
        raise TierflowError(f"{state_path}: {GLOBAL_COPIES}: expected a list of array names, got "
                            f"{json.dumps(copies, default=repr)[:80]}")
    for name in copies:
        owned = _owner_of(name, devices, sessions) if isinstance(name, str) else None
        key = owned[1].removeprefix("state/") if owned is not None else ""
        if owned is None or not owned[1].startswith("state/") or key not in global_model or name in arrays:
            raise TierflowError(f"{state_path}: {GLOBAL_COPIES}: {str(name)[:80]!r} is not a copy of the global "
                                "model; expected device/ID/state/NAME or session/ACTOR/ID/state/NAME of listed ids, "
                                f"NAME in the global model and not also in {ARRAYS}")
        owned[0][1][owned[1]] = global_model[key]
    return Checkpoint(doc["state"], global_model, devices, sessions)
