"""The city of a run: edge servers and their coverage, where the devices went, where they handed over.

``city.png`` draws each device's path coloured by the edge serving it along the way (or, when no
device moves, each device as a point in its edge's colour), the coverage circle of every edge,
and a marker at every handover and every session migration (or restart) of the event log, each
placed where the device was when it happened. ``city.gif`` plays the run: the devices at each
recorded frame, their recent tracks, and the handovers as they happen.

Large runs are subsampled for drawing, evenly over the device list, and say so in the legend: at
most ``MAX_PATHS`` paths and ``MAX_POINTS`` device points; when paths are subsampled only the drawn
devices' handovers are marked, and at most ``MAX_MARKERS`` markers of each kind (evenly over the
run). The recorded file itself is bounded (orchestrator/trajectories.py).

Object API with the Agg canvas only (no pyplot), as in orchestrator/report.py.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.animation import PillowWriter
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Circle, Patch

from tierflow.orchestrator import event_types as ev
from tierflow.orchestrator.trajectories import NO_EDGE, Trajectories

MAX_PATHS = 150
MAX_POINTS = 3000
MAX_MARKERS = 200
GIF_FLASHES = 60  # handovers highlighted in one animation frame
GIF_FRAMES = 60
GIF_FPS = 8
GIF_TAIL = 6  # frames of track behind each device in the animation
DPI = 110
GIF_DPI = 80
NO_EDGE_COLOR = "#a0a0a0"
CLOUD_COLOR = "#303030"

# How each kind of mark looks: marker, size, face, edge colour, legend label.
MARK_STYLE = {
    "handover": ("x", 28, "black", "black", "handover"),
    "migration": ("D", 70, "none", "tab:green", "session migrated"),
    "failed_migration": ("X", 80, "tab:red", "white", "migration failed"),
    "restart": ("s", 70, "none", "tab:orange", "session restarted"),
}


@dataclass(frozen=True)
class Mark:
    kind: str  # a key of MARK_STYLE
    device: str
    round: int
    t_s: float  # mobility time (NaN when only the round is known)
    x: float
    y: float


@dataclass(frozen=True)
class CityDrawing:
    """What a drawing holds, so tests can check that nothing the events report was left out."""

    path: Path
    edges: int  # coverage circles drawn
    devices: int  # devices in the run
    devices_drawn: int  # devices whose path (or point) is drawn
    moving: bool
    marks: dict[str, int] = field(default_factory=dict)  # kind -> markers drawn
    marks_total: dict[str, int] = field(default_factory=dict)  # kind -> marks in the run
    frames: int = 1


def edge_colors(n: int) -> list:
    """Distinct colours for ``n`` edges, none of them grey (grey means "no edge")."""
    if n <= 9:
        tab = matplotlib.colormaps["tab10"].colors
        return [tab[i] for i in (0, 1, 2, 3, 4, 5, 6, 8, 9)][:n]
    if n <= 18:
        tab = matplotlib.colormaps["tab20"].colors
        return [tab[i] for i in range(20) if i not in (14, 15)][:n]
    # Golden-ratio steps through the map: edges next to each other in the list (often next to each
    # other in the city) get colours far apart.
    cmap = matplotlib.colors.LinearSegmentedColormap.from_list("edges", matplotlib.colormaps["turbo"].colors,
                                                              N=4096)  # interpolated: no two edges share a colour
    return [cmap(0.05 + 0.9 * ((i * 0.6180339887) % 1.0)) for i in range(n)]


def _palette(traj: Trajectories) -> np.ndarray:
    """RGBA per serving index + 1 (row 0 is NO_EDGE), the cloud's own edge dark."""
    placed = [i for i in range(len(traj.edges)) if np.all(np.isfinite(traj.edge_xy[i]))]
    colors = dict(zip(placed, edge_colors(len(placed)), strict=True))
    rows = [matplotlib.colors.to_rgba(NO_EDGE_COLOR)]
    rows += [matplotlib.colors.to_rgba(colors.get(i, CLOUD_COLOR)) for i in range(len(traj.edges))]
    return np.array(rows)


def evenly(n: int, k: int) -> np.ndarray:
    """``min(n, k)`` indices spread evenly over ``range(n)``, first and last included."""
    if n <= k:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, k).round().astype(int))


def locate_marks(traj: Trajectories, events: Sequence[ev.Event]) -> list[Mark]:
    """A mark for every handover and migration event, where the device was at that moment.

    The k-th handover event of a run is the k-th handover the recorder kept (both follow the
    detector's order); one the recorder did not keep is placed from the recorded frames, at the
    first frame of its round where the device is served by the edge it went to.
    """
    device_index = {str(d): i for i, d in enumerate(traj.devices)}
    edge_index = {str(e): i for i, e in enumerate(traj.edges)}
    marks: list[Mark] = []
    where: dict[str, Mark] = {}  # device -> its latest handover mark
    k = 0
    for e in events:
        if isinstance(e, ev.Handover):
            device, rnd = e.device, e.round
            mark = None
            if k < len(traj.handover_t_s) and device_index.get(device) == int(traj.handover_device[k]):
                x, y = traj.handover_xy[k]
                mark = Mark("handover", device, rnd, float(traj.handover_t_s[k]), float(x), float(y))
                k += 1
            elif device in device_index:
                mark = _from_frames(traj, device, device_index[device], rnd, edge_index.get(e.to_edge))
            if mark is not None:
                marks.append(mark)
                where[device] = mark
        elif isinstance(e, ev.Migration):
            at = where.get(e.device)
            if at is None:
                continue
            mk = "restart" if e.policy == "restart" else ("migration" if e.ok else "failed_migration")
            marks.append(Mark(mk, at.device, at.round, at.t_s, at.x, at.y))
    return marks


def _from_frames(traj: Trajectories, device: str, i: int, rnd: int, to_edge: int | None) -> Mark | None:
    if not len(traj.times_s):
        return None
    in_round = np.flatnonzero(traj.rounds == rnd)
    if in_round.size:
        served = in_round[traj.serving[in_round, i] == (NO_EDGE if to_edge is None else to_edge)]
        f = int(served[0] if served.size else in_round[-1])
    else:
        f = int(np.argmin(np.abs(traj.rounds - rnd)))
    x, y = traj.positions[f, i]
    return Mark("handover", device, rnd, float(traj.times_s[f]), float(x), float(y))


def _draw_edges(ax, traj: Trajectories, palette: np.ndarray) -> int:
    drawn = 0
    label = len(traj.edges) <= 20
    for i, name in enumerate(traj.edges):
        (x, y), r = traj.edge_xy[i], float(traj.edge_radius_m[i])
        if not np.all(np.isfinite((x, y))):
            continue
        color = palette[i + 1]
        ax.add_patch(Circle((x, y), r, facecolor=(*color[:3], 0.07), edgecolor=color, linewidth=1.4, zorder=1))
        ax.scatter([x], [y], marker="^", s=140, color=color, edgecolors="black", linewidths=0.8, zorder=6)
        if label:
            ax.annotate(str(name), (x, y), xytext=(0, 9), textcoords="offset points", ha="center",
                        fontsize=9, fontweight="bold", zorder=7,
                        bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "alpha": 0.7, "linewidth": 0})
        drawn += 1
    return drawn


def _limits(ax, traj: Trajectories) -> None:
    placed = np.all(np.isfinite(traj.edge_xy), axis=1)
    lo = [traj.edge_xy[placed] - traj.edge_radius_m[placed, None]]
    hi = [traj.edge_xy[placed] + traj.edge_radius_m[placed, None]]
    if traj.positions.size:
        lo.append(traj.positions.reshape(-1, 2).min(axis=0, keepdims=True))
        hi.append(traj.positions.reshape(-1, 2).max(axis=0, keepdims=True))
    lo_xy, hi_xy = np.concatenate(lo).min(axis=0), np.concatenate(hi).max(axis=0)
    pad = 0.04 * max(float(np.max(hi_xy - lo_xy)), 1.0)
    ax.set_xlim(lo_xy[0] - pad, hi_xy[0] + pad)
    ax.set_ylim(lo_xy[1] - pad, hi_xy[1] + pad)
    ax.set_aspect("equal")
    ax.set_xlabel("x (m)")
    ax.set_ylabel("y (m)")
    ax.grid(alpha=0.25)


def _draw_marks(ax, marks: Sequence[Mark], drawn: set[str] | None) -> tuple[dict[str, int], list]:
    """Each kind's marks, of the ``drawn`` devices only unless None, at most MAX_MARKERS evenly over
    the run; returns the counts drawn and legend handles that say how many were left out."""
    counts, handles = {}, []
    for kind, (marker, size, face, edge, label) in MARK_STYLE.items():
        mine = [m for m in marks if m.kind == kind]
        if not mine:
            continue
        of_drawn = [m for m in mine if drawn is None or m.device in drawn]
        shown = [of_drawn[i] for i in evenly(len(of_drawn), MAX_MARKERS)]
        if not shown:
            continue
        xy = np.array([(m.x, m.y) for m in shown])
        colors = {"color": edge} if marker == "x" else {"facecolors": face, "edgecolors": edge}
        ax.scatter(xy[:, 0], xy[:, 1], marker=marker, s=size, linewidths=1.3 if face == "none" else 1.0,
                   zorder=8 if kind == "handover" else 9, alpha=0.9, **colors)
        counts[kind] = len(shown)
        text = f"{label} ({len(mine)})" if len(shown) == len(mine) else f"{label} ({len(shown)} of {len(mine)} shown)"
        handles.append(Line2D([], [], linestyle="none", marker=marker, markersize=7 if kind == "handover" else 8,
                              markerfacecolor=face, markeredgecolor=edge, color=edge, label=text))
    return counts, handles


def _edge_handles(traj: Trajectories, palette: np.ndarray) -> list:
    used = set(np.unique(traj.serving).tolist()) if traj.serving.size else set()
    placed = np.all(np.isfinite(traj.edge_xy), axis=1)
    handles = []
    if placed.sum() > 12:
        handles.append(Patch(facecolor="white", edgecolor="black", label=f"{int(placed.sum())} edge servers "
                             "(triangles), one colour each, with their coverage"))
    for i, name in enumerate(traj.edges):
        if placed[i] and placed.sum() <= 12:
            handles.append(Patch(facecolor=palette[i + 1], edgecolor="black", linewidth=0.5, label=f"edge {name}"))
        elif not placed[i] and i in used:
            handles.append(Patch(facecolor=palette[i + 1], label=f"{name} (the cloud, serving re-homed devices)"))
    if NO_EDGE in used:
        handles.append(Patch(facecolor=NO_EDGE_COLOR, label="no edge (out of coverage)"))
    return handles


def _segments(traj: Trajectories, devices: np.ndarray, frames: np.ndarray, palette: np.ndarray):
    """Each device's path between consecutive frames, each piece in the colour of the edge serving
    it at the piece's end."""
    if frames.size < 2 or devices.size == 0:
        return np.zeros((0, 2, 2)), np.zeros((0, 4))
    pos = traj.positions[frames][:, devices]  # [F, D, 2]
    seg = np.stack([pos[:-1], pos[1:]], axis=2)  # [F-1, D, 2, 2]
    colors = palette[traj.serving[frames[1:]][:, devices].astype(int) + 1]  # [F-1, D, 4]
    moved = np.any(seg[:, :, 0] != seg[:, :, 1], axis=-1)
    return seg[moved], colors[moved]


def _new_axes(figsize=(10.5, 7.2)):
    """The map, and a blank column on its right for the legend (so it never covers the city)."""
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    ax, side = fig.subplots(1, 2, width_ratios=[3, 1])
    side.axis("off")
    return fig, ax, side


def _legend(side, handles: list) -> None:
    for h in handles:
        h.set_label(textwrap.fill(h.get_label(), 34, subsequent_indent="  "))
    side.legend(handles=handles, loc="upper left", fontsize=8, frameon=False, borderaxespad=0)


def _subtitle(traj: Trajectories, marks: Sequence[Mark]) -> str:
    n_h = sum(m.kind == "handover" for m in marks)
    n_m = sum(m.kind in ("migration", "failed_migration", "restart") for m in marks)
    span = f", {traj.times_s[-1]:,.0f} s of mobility" if traj.moving else ", no device moves"
    return (f"{len(traj.devices)} devices, {sum(np.isfinite(traj.edge_xy[:, 0]))} edge servers{span}; "
            f"{n_h} handovers, {n_m} session moves")


def draw_city(traj: Trajectories, events: Sequence[ev.Event], title: str, out: Path) -> CityDrawing:
    """The city map as a PNG: coverage, device paths (or points), handover and migration marks."""
    palette = _palette(traj)
    marks = locate_marks(traj, events)
    fig, ax, side = _new_axes()
    n_edges = _draw_edges(ax, traj, palette)
    n = len(traj.devices)
    moving = traj.moving
    handles = []
    if moving:
        devices = evenly(n, MAX_PATHS)
        seg, colors = _segments(traj, devices, np.arange(len(traj.times_s)), palette)
        ax.add_collection(LineCollection(seg, colors=colors, linewidths=1.1, alpha=0.75, zorder=3))
        start, end = traj.positions[0, devices], traj.positions[-1, devices]
        ax.scatter(start[:, 0], start[:, 1], s=16, facecolors="white", edgecolors="black", linewidths=0.7, zorder=4)
        ax.scatter(end[:, 0], end[:, 1], s=22, c=palette[traj.serving[-1, devices].astype(int) + 1],
                   edgecolors="black", linewidths=0.5, zorder=5)
        what = "path" if len(devices) == n else f"path ({len(devices)} of {n} devices shown)"
        handles += [Line2D([], [], color="dimgray", label=f"device {what}, coloured by serving edge"),
                    Line2D([], [], linestyle="none", marker="o", markerfacecolor="white", markeredgecolor="black",
                           markersize=5, label="start"),
                    Line2D([], [], linestyle="none", marker="o", markerfacecolor="dimgray", markeredgecolor="black",
                           markersize=5, label="end")]
    else:
        devices = evenly(n, MAX_POINTS)
        last = traj.positions[-1, devices] if len(traj.times_s) else np.zeros((0, 2))
        serving = traj.serving[-1, devices].astype(int) if len(traj.times_s) else np.zeros(0, int)
        ax.scatter(last[:, 0], last[:, 1], s=30 if n <= 500 else 6, c=palette[serving + 1], edgecolors="black",
                   linewidths=0.3 if n <= 500 else 0.0, zorder=5)
        what = "" if len(devices) == n else f" ({len(devices)} of {n} shown)"
        handles.append(Line2D([], [], linestyle="none", marker="o", markerfacecolor="dimgray",
                              markeredgecolor="black", markersize=5,
                              label=f"device{what}, coloured by serving edge"))
    drawn = None if len(devices) == n else {str(traj.devices[i]) for i in devices}
    counts, mark_handles = _draw_marks(ax, marks, drawn)
    _limits(ax, traj)
    _legend(side, _edge_handles(traj, palette) + handles + mark_handles)
    fig.suptitle(f"{title}: the city", fontsize=13)
    ax.set_title(_subtitle(traj, marks), fontsize=9)
    fig.savefig(out, dpi=DPI)
    total = {kind: sum(m.kind == kind for m in marks) for kind in MARK_STYLE}
    return CityDrawing(Path(out), n_edges, n, len(devices), moving, counts, total)


def animate_city(traj: Trajectories, events: Sequence[ev.Event], title: str, out: Path,
                 max_frames: int = GIF_FRAMES) -> CityDrawing:
    """The run as a GIF: devices at each recorded frame (at most ``max_frames``, evenly over the run),
    with short tracks, and handovers flashing where they happen."""
    palette = _palette(traj)
    marks = locate_marks(traj, events)
    frames = evenly(len(traj.times_s), max_frames)
    n = len(traj.devices)
    fig, ax, side = _new_axes(figsize=(9, 6.2))
    n_edges = _draw_edges(ax, traj, palette)
    _limits(ax, traj)
    devices = evenly(n, MAX_POINTS)
    tracked = evenly(n, MAX_PATHS)
    tracks = ax.add_collection(LineCollection([], linewidths=1.0, alpha=0.6, zorder=3))
    dots = ax.scatter([], [], s=34 if len(devices) <= 500 else 6, edgecolors="black",
                      linewidths=0.4 if len(devices) <= 500 else 0.0, zorder=5)
    flash = ax.scatter([], [], marker="o", s=110, facecolors="none", edgecolors="red", linewidths=1.8, zorder=10)
    past = ax.scatter([], [], marker="x", s=20, color="black", alpha=0.4, zorder=8)
    clock = ax.text(0.01, 0.99, "", transform=ax.transAxes, va="top", ha="left", fontsize=9, zorder=11,
                    bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.8, "linewidth": 0})
    tracked_names = {str(traj.devices[i]) for i in tracked}
    handovers = [m for m in marks if m.kind == "handover" and m.device in tracked_names]
    ho_t = np.array([m.t_s for m in handovers])
    ho_xy = np.array([(m.x, m.y) for m in handovers]).reshape(len(handovers), 2)
    all_t = np.array([m.t_s for m in marks if m.kind == "handover"])
    handles = _edge_handles(traj, palette) + [
        Line2D([], [], linestyle="none", marker="o", markerfacecolor="dimgray", markeredgecolor="black",
               markersize=5, label="device, coloured by serving edge")]
    if handovers:
        handles += [Line2D([], [], linestyle="none", marker="o", markerfacecolor="none", markeredgecolor="red",
                           markersize=9, label="handover just now"),
                    Line2D([], [], linestyle="none", marker="x", color="black", alpha=0.5, markersize=6,
                           label="earlier handover")]
    if len(tracked) < n:
        note = f"({len(devices)} of {n} devices drawn; tracks and handovers of {len(tracked)})"
        handles.append(Line2D([], [], linestyle="none", label=note))
    _legend(side, handles)
    fig.suptitle(f"{title}: the city over the run", fontsize=12)
    ax.set_title(_subtitle(traj, marks), fontsize=9)
    writer = PillowWriter(fps=GIF_FPS)
    prev_t = -np.inf
    with writer.saving(fig, str(out), GIF_DPI):
        for j, f in enumerate(frames):
            t = float(traj.times_s[f])
            dots.set_offsets(traj.positions[f, devices])
            dots.set_facecolors(palette[traj.serving[f, devices].astype(int) + 1])
            lo = frames[max(0, j - GIF_TAIL):j + 1]
            seg, colors = _segments(traj, tracked, lo, palette) if traj.moving else (np.zeros((0, 2, 2)), [])
            tracks.set_segments(seg)
            tracks.set_color(colors)
            recent = np.flatnonzero((ho_t > prev_t) & (ho_t <= t))
            flash.set_offsets(ho_xy[recent[evenly(len(recent), GIF_FLASHES)]])
            earlier = np.flatnonzero(ho_t <= prev_t)
            past.set_offsets(ho_xy[earlier[evenly(len(earlier), MAX_MARKERS)]])
            clock.set_text(f"t = {t:,.1f} s   round {int(traj.rounds[f])}\nhandovers so far: {int((all_t <= t).sum())}")
            writer.grab_frame()
            prev_t = t
    total = {kind: sum(m.kind == kind for m in marks) for kind in MARK_STYLE}
    return CityDrawing(Path(out), n_edges, n, len(devices), traj.moving, {}, total, frames=len(frames))
