"""Where every device was over the run, for the city map: ``RUN_DIR/trajectories.npz``.

The round loop calls :meth:`TrajectoryRecorder.record` at every mobility check with the positions
it just computed, the edge serving each device after the check, and the handovers the check found.
Nothing else in a run needs this file; it exists so ``tierflow report`` can draw the city.

The file stays bounded whatever the run's length or size: at most ``max_frames`` frames are kept
(fewer for many devices, so positions fit ``budget_bytes``). When the buffer fills, every other
frame is dropped and only every ``stride``-th check is kept from then on (decimation: frames stay
evenly spread over the run); the latest check is always written as the last frame. Handovers are
kept at full resolution (each with the exact position it happened at), up to ``max_handovers``.

Arrays only, no objects: it loads with ``np.load(allow_pickle=False)``.
"""

from __future__ import annotations

import io
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tierflow.orchestrator.errors import TierflowError
from tierflow.orchestrator.files import MiB, read_bytes

TRAJECTORIES = "trajectories.npz"
NO_EDGE = -1  # serving index of a device out of every edge's coverage
MAX_FRAMES = 600
BUDGET_BYTES = 16_000_000  # positions + serving edges of the kept frames
MAX_HANDOVERS = 100_000
FILE_LIMIT_BYTES = 64 * MiB  # what a recorder writes stays far below: the budget plus the handovers
FORMAT_VERSION = 1

log = logging.getLogger(__name__)

Point = tuple[float, float]


class TrajectoryError(TierflowError, ValueError):
    """A trajectories file that is missing a field or whose arrays do not fit together; names the file."""


@dataclass(frozen=True)
class Trajectories:
    """What a run recorded: frames of positions and serving edges, the edge sites, the handovers."""

    scenario: str
    devices: np.ndarray  # [N] str
    edges: np.ndarray  # [E] str; an edge not in the scenario (the cloud's own) has NaN position
    edge_xy: np.ndarray  # [E, 2] float64, metres
    edge_radius_m: np.ndarray  # [E] float64
    times_s: np.ndarray  # [T] float64, mobility time of each frame
    rounds: np.ndarray  # [T] int32, the round each frame was taken in (0: before the first)
    positions: np.ndarray  # [T, N, 2] float32, metres
    serving: np.ndarray  # [T, N] int16/int32 index into edges, NO_EDGE when out of coverage
    stride: int  # one check in ``stride`` is a kept frame
    checks: int  # mobility checks recorded in all (kept or not)
    handover_t_s: np.ndarray  # [H] float64
    handover_round: np.ndarray  # [H] int32
    handover_device: np.ndarray  # [H] int32 index into devices
    handover_from: np.ndarray  # [H] int32 index into edges, NO_EDGE from/to out of coverage
    handover_to: np.ndarray  # [H] int32
    handover_xy: np.ndarray  # [H, 2] float32, where the device was when it handed over
    handovers_dropped: int  # handovers past ``max_handovers``, counted but not kept

    @property
    def moving(self) -> bool:
        """False when no device ever moved: the map draws placement, not paths."""
        return len(self.times_s) > 1 and bool(np.any(self.positions != self.positions[:1]))


class TrajectoryRecorder:
    def __init__(self, scenario_name: str, devices: Sequence[str], edges: Sequence[tuple[str, Point, float]],
                 max_frames: int = MAX_FRAMES, budget_bytes: int = BUDGET_BYTES,
                 max_handovers: int = MAX_HANDOVERS):
        self.scenario = scenario_name
        self.devices = list(devices)
        self.device_index = {d: i for i, d in enumerate(self.devices)}
        self.edges = [name for name, _, _ in edges]
        self.edge_xy = [(float(p[0]), float(p[1])) for _, p, _ in edges]
        self.edge_radius_m = [float(r) for _, _, r in edges]
        self.edge_index = {e: i for i, e in enumerate(self.edges)}
        per_frame = max(1, len(self.devices)) * (2 * 4 + 4)
        self.max_frames = max(4, min(max_frames, budget_bytes // per_frame))
        self.max_handovers = max_handovers
        self.stride, self.checks = 1, 0
        self.frames: list[tuple[float, int, np.ndarray, np.ndarray]] = []  # (t, round, xy [N,2], serving [N])
        self.latest: tuple[float, int, np.ndarray, np.ndarray] | None = None
        self.handovers: list[tuple[float, int, int, int, int, float, float]] = []
        self.handovers_dropped = 0

    @classmethod
    def for_scenario(cls, scenario, mobility, serving: Mapping[str, str | None]) -> TrajectoryRecorder:
        """A recorder for a run of ``scenario``, its first frame the devices' places at time 0."""
        rec = cls(scenario.name, [d.name for d in scenario.devices],
                  [(e.name, e.position, e.radius_m) for e in scenario.edges])
        rec.record(0, 0.0, mobility.positions(0.0), serving)
        return rec

    def _edge(self, name: str | None) -> int:
        if name is None:
            return NO_EDGE
        if name not in self.edge_index:  # an edge the scenario does not place (the cloud serving re-homed devices)
            self.edge_index[name] = len(self.edges)
            self.edges.append(name)
            self.edge_xy.append((math.nan, math.nan))
            self.edge_radius_m.append(0.0)
        return self.edge_index[name]

    def record(self, round_: int, t_s: float, positions: Mapping[str, Point], serving: Mapping[str, str | None],
               handovers: Sequence = ()) -> None:
        """One mobility check: every device's position, the edge serving it after the check, and the
        check's handovers (objects with ``device``, ``from_edge``, ``to_edge``)."""
        xy = np.array([positions[d] for d in self.devices], dtype=np.float32).reshape(len(self.devices), 2)
        self.record_array(round_, t_s, xy, serving, handovers)

    def record_array(self, round_: int, t_s: float, xy: np.ndarray, serving: Mapping[str, str | None],
                     handovers: Sequence = ()) -> None:
        """:meth:`record` with the positions as an [N, 2] array in the order of ``devices``."""
        xy = np.asarray(xy, dtype=np.float32).reshape(len(self.devices), 2)
        edge = np.array([self._edge(serving.get(d)) for d in self.devices], dtype=np.int32)
        for h in handovers:
            if len(self.handovers) >= self.max_handovers:
                self.handovers_dropped += 1
                continue
            i = self.device_index[h.device]
            self.handovers.append((float(t_s), int(round_), i, self._edge(h.from_edge), self._edge(h.to_edge),
                                   float(xy[i, 0]), float(xy[i, 1])))
        frame = (float(t_s), int(round_), xy, edge)
        if self.checks % self.stride == 0:
            self.frames.append(frame)
            if len(self.frames) >= self.max_frames:
                self.frames = self.frames[::2]
                self.stride *= 2
        self.latest = frame
        self.checks += 1

    def snapshot(self) -> Trajectories:
        frames = list(self.frames)
        if self.latest is not None and (not frames or frames[-1] is not self.latest):
            frames.append(self.latest)
        n = len(self.devices)
        edge_dtype = np.int16 if len(self.edges) < np.iinfo(np.int16).max else np.int32
        h = self.handovers
        return Trajectories(
            scenario=self.scenario,
            devices=np.array(self.devices, dtype=str).reshape(n),
            edges=np.array(self.edges, dtype=str).reshape(len(self.edges)),
            edge_xy=np.array(self.edge_xy, dtype=np.float64).reshape(len(self.edges), 2),
            edge_radius_m=np.array(self.edge_radius_m, dtype=np.float64),
            times_s=np.array([f[0] for f in frames], dtype=np.float64),
            rounds=np.array([f[1] for f in frames], dtype=np.int32),
            positions=np.stack([f[2] for f in frames]) if frames else np.zeros((0, n, 2), np.float32),
            serving=(np.stack([f[3] for f in frames]) if frames else np.zeros((0, n), np.int32)).astype(edge_dtype),
            stride=self.stride, checks=self.checks,
            handover_t_s=np.array([x[0] for x in h], dtype=np.float64),
            handover_round=np.array([x[1] for x in h], dtype=np.int32),
            handover_device=np.array([x[2] for x in h], dtype=np.int32),
            handover_from=np.array([x[3] for x in h], dtype=np.int32),
            handover_to=np.array([x[4] for x in h], dtype=np.int32),
            handover_xy=np.array([x[5:] for x in h], dtype=np.float32).reshape(len(h), 2),
            handovers_dropped=self.handovers_dropped,
        )

    def save(self, run_dir: Path) -> Path:
        """Write ``run_dir/trajectories.npz`` (via a temporary file and a rename: never half a file)."""
        path = Path(run_dir) / TRAJECTORIES
        tmp = path.with_name(path.name + ".tmp")
        snap = self.snapshot()
        arrays = {k: getattr(snap, k) for k in _ARRAY_FIELDS}
        arrays.update({k: np.array(getattr(snap, k)) for k in _SCALAR_FIELDS})
        arrays["format_version"] = np.array(FORMAT_VERSION)
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path)
        return path

    def resume(self, run_dir: Path, checkpoint_round: int) -> None:
        """Continue the trajectories of an interrupted run: what it recorded up to the checkpoint's round
        (the round the crash interrupted runs again, as its events do). A missing or unusable file
        leaves this recorder as it is (the map then starts at the resume); the run's training never
        depends on it."""
        try:
            old = load_trajectories(Path(run_dir) / TRAJECTORIES)
        except FileNotFoundError:
            return
        except TrajectoryError as exc:
            log.warning("%s; the city map starts at the resume", exc)
            return
        if list(old.devices) != self.devices:
            log.warning("%s: recorded other devices; the city map starts at the resume", Path(run_dir) / TRAJECTORIES)
            return
        keep = old.rounds <= checkpoint_round
        self.edges = [str(e) for e in old.edges]
        self.edge_xy = [tuple(map(float, p)) for p in old.edge_xy]
        self.edge_radius_m = [float(r) for r in old.edge_radius_m]
        self.edge_index = {e: i for i, e in enumerate(self.edges)}
        self.frames = [(float(t), int(r), xy.astype(np.float32), s.astype(np.int32))
                       for t, r, xy, s in zip(old.times_s[keep], old.rounds[keep], old.positions[keep],
                                              old.serving[keep], strict=True)]
        self.latest = self.frames[-1] if self.frames else None
        self.stride = old.stride
        self.checks = (len(self.frames) - 1) * self.stride + 1 if self.frames else 0
        hk = old.handover_round <= checkpoint_round
        self.handovers = [(float(t), int(r), int(d), int(a), int(b), float(xy[0]), float(xy[1]))
                          for t, r, d, a, b, xy in zip(old.handover_t_s[hk], old.handover_round[hk],
                                                       old.handover_device[hk], old.handover_from[hk],
                                                       old.handover_to[hk], old.handover_xy[hk], strict=True)]
        self.handovers_dropped = old.handovers_dropped


_ARRAY_FIELDS = ("devices", "edges", "edge_xy", "edge_radius_m", "times_s", "rounds", "positions", "serving",
                 "handover_t_s", "handover_round", "handover_device", "handover_from", "handover_to", "handover_xy")
_SCALAR_FIELDS = ("scenario", "stride", "checks", "handovers_dropped")


def load_trajectories(path: Path) -> Trajectories:
    """Read a trajectories file; raises FileNotFoundError if absent, :class:`TrajectoryError` if unusable."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(path)
    try:
        data = read_bytes(path, "trajectories file", FILE_LIMIT_BYTES)
    except TierflowError as exc:
        raise TrajectoryError(str(exc)) from None
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            unpacked = sum(info.file_size for info in npz.zip.infolist())
            if unpacked > 4 * FILE_LIMIT_BYTES:  # a compressed member that would unpack past any real file
                raise TrajectoryError(f"{path}: unpacks to {unpacked} bytes; expected a trajectories file "
                                      f"of at most {FILE_LIMIT_BYTES} bytes")
            missing = [k for k in (*_ARRAY_FIELDS, *_SCALAR_FIELDS) if k not in npz.files]
            if missing:
                raise TrajectoryError(f"{path}: not a trajectories file (lacks {', '.join(missing)})")
            arrays = {k: npz[k] for k in _ARRAY_FIELDS}
            scalars = {k: npz[k] for k in _SCALAR_FIELDS}
    except TrajectoryError:
        raise
    except Exception as exc:  # zip, CRC, header and pickle refusals all mean the same: unusable
        raise TrajectoryError(f"{path}: unreadable trajectories file ({type(exc).__name__}: {exc})") from None
    try:
        traj = Trajectories(scenario=str(scalars["scenario"]), stride=int(scalars["stride"]),
                            checks=int(scalars["checks"]), handovers_dropped=int(scalars["handovers_dropped"]),
                            **arrays)
    except (TypeError, ValueError) as exc:
        raise TrajectoryError(f"{path}: malformed trajectories file ({exc})") from None
    _check_shapes(traj, path)
    return traj


def _check_shapes(t: Trajectories, path: Path) -> None:
    n, e, frames, h = len(t.devices), len(t.edges), len(t.times_s), len(t.handover_t_s)
    expected = {"devices": (n,), "edges": (e,), "edge_xy": (e, 2), "edge_radius_m": (e,), "rounds": (frames,),
                "positions": (frames, n, 2), "serving": (frames, n), "handover_round": (h,),
                "handover_device": (h,), "handover_from": (h,), "handover_to": (h,), "handover_xy": (h, 2)}
    for name, shape in expected.items():
        got = getattr(t, name).shape
        if got != shape:
            raise TrajectoryError(f"{path}: {name} has shape {got}, expected {shape}")
    for name in ("serving", "handover_from", "handover_to"):
        a = getattr(t, name)
        if a.size and (not np.issubdtype(a.dtype, np.integer) or a.min() < NO_EDGE or a.max() >= e):
            raise TrajectoryError(f"{path}: {name} holds an edge index outside -1..{e - 1}")
    d = t.handover_device
    if d.size and (not np.issubdtype(d.dtype, np.integer) or d.min() < 0 or d.max() >= n):
        raise TrajectoryError(f"{path}: handover_device holds a device index outside 0..{n - 1}")
    if t.stride < 1:
        raise TrajectoryError(f"{path}: stride must be >= 1, got {t.stride}")
