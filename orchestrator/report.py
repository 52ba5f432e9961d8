"""Plots of one run from its event log (``run_dir/events.jsonl``), as PNG files.

Uses matplotlib's object API with the Agg canvas, never pyplot, so it touches no global backend
state and runs headless and in threads.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from tierflow.orchestrator import event_types as ev
from tierflow.orchestrator.errors import TierflowError
from tierflow.orchestrator.events import json_lines
from tierflow.orchestrator.trajectories import TRAJECTORIES, TrajectoryError, load_trajectories

EVENT_LOG = "events.jsonl"
DPI = 110
Logged = tuple[int, ev.Event]  # an event and its line in the log, for error messages


class ReportError(TierflowError, ValueError):
    """The event log is missing or unreadable; the message names the file and line."""


def load_events(path: Path) -> list[dict]:
    """Events from a JSON-lines log, each with ``_line`` (its line number) added for error messages.

    Blank lines are skipped; anything else unreadable raises :class:`ReportError`.
    """
    path = Path(path)
    if not path.exists():
        raise ReportError(f"{path}: no event log (expected the run's {EVENT_LOG})")
    try:
        lines = json_lines(path)
    except TierflowError as exc:
        raise ReportError(str(exc)) from None
    events = []
    for lineno, line, event in lines:
        if not isinstance(event, dict) or not isinstance(event.get("event"), str):
            raise ReportError(f"{path}:{lineno}: expected an object with an 'event' name, got {line[:80]!r}")
        event["_line"] = lineno
        events.append(event)
    return events


def last_run(events: Sequence[dict]) -> list[dict]:
    """The events of the last run in a log (the event log is appended to when a run dir is reused)."""
    starts = [i for i, e in enumerate(events) if e["event"] == "run_start"]
    return list(events[starts[-1]:] if starts else events)


def to_records(events: Sequence[dict], path: Path) -> list[Logged]:
    """``load_events``' objects as records with their lines; kinds the schema does not know are
    skipped, an event it refuses raises :class:`ReportError` naming the file and line."""
    out = []
    for e in events:
        try:
            record = ev.parse_known_event(e, f"{path}:{e['_line']}")
        except TierflowError as exc:
            raise ReportError(str(exc)) from None
        if record is not None:
            out.append((e["_line"], record))
    return out


def load_records(path: Path) -> list[Logged]:
    """Every event of the log as a record, with its line."""
    return to_records(load_events(path), Path(path))


def _rounds(events: Sequence[Logged], path: Path) -> list[ev.RoundEnd]:
    rounds = [(line, e) for line, e in events if isinstance(e, ev.RoundEnd)]
    if not rounds:
        raise ReportError(f"{path}: no round_end events, nothing to plot")
    for line, e in rounds:
        for device, split in e.splits.items():
            if len(split) != 3:
                raise ReportError(f"{path}:{line}: malformed round_end: split of {device} has {len(split)} parts, "
                                  "expected 3")
        for link, dirs in e.bytes.items():
            if not {"up", "down"} <= dirs.keys():
                raise ReportError(f"{path}:{line}: malformed round_end: bytes of {link} lack 'up' or 'down'")
    return sorted((e for _, e in rounds), key=lambda e: e.round)


def _time_axis(seconds: Sequence[float]) -> tuple[list[float], str]:
    top = max(seconds, default=0.0)
    if top >= 2 * 3600:
        return [s / 3600 for s in seconds], "h"
    if top >= 120:
        return [s / 60 for s in seconds], "min"
    return list(seconds), "s"


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=DPI)
    return path


def _accuracy(events: Sequence[ev.Event], rounds: Sequence[ev.RoundEnd], title: str, out: Path) -> Path:
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    acc = [100 * e.accuracy for e in rounds]
    for ax, key, name in ((axes[0], "virtual_time_s", "virtual time"), (axes[1], "wall_time_s", "wall time")):
        t, unit = _time_axis([getattr(e, key) for e in rounds])
        ax.plot(t, acc, marker="o", markersize=3, color="tab:blue", label="accuracy")
        ax.set_xlabel(f"{name} ({unit})")
        ax.grid(alpha=0.3)
        ax.set_ylim(0, 100)
        if key == "virtual_time_s":
            scale = {"s": 1, "min": 60, "h": 3600}[unit]
            migr = [e for e in events if isinstance(e, ev.Migration)]
            for i, m in enumerate(migr):
                ax.axvline(m.virtual_time_s / scale, color="tab:green" if m.ok else "tab:red",
                           alpha=0.5, linestyle=":", label="migration" if i == 0 else None)
            fails = [e for e in events if isinstance(e, ev.Failure)]
            if fails:
                ax.plot([f.virtual_time_s / scale for f in fails], [2] * len(fails), "v",
                        color="tab:red", label="failure")
            ax.legend(loc="lower right", fontsize=8)
    axes[0].set_ylabel("accuracy (%)")
    fig.suptitle(f"{title}: accuracy against time")
    return _save(fig, out)


def _bytes(rounds: Sequence[ev.RoundEnd], title: str, out: Path) -> Path:
    fig = Figure(figsize=(8, 4.2), layout="constrained")
    ax = fig.subplots()
    x = [e.round for e in rounds]
    series: dict[tuple[str, str], list[float]] = {}
    for i, e in enumerate(rounds):
        for link, dirs in e.bytes.items():
            for direction in ("up", "down"):
                series.setdefault((link, direction), [0.0] * len(rounds))[i] = dirs[direction] / 1e6
    for (link, direction), mb in sorted(series.items()):
        ax.plot(x, mb, marker="o" if direction == "up" else "s", markersize=3,
                linestyle="-" if direction == "up" else "--", label=f"{link} {direction}")
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("MB per round")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{title}: bytes per link per round")
    return _save(fig, out)


def _devices_per_edge(events: Sequence[ev.Event], rounds: Sequence[ev.RoundEnd], title: str, out: Path) -> Path:
    start = next((e for e in events if isinstance(e, ev.RunStart)), None)
    edges = list(start.edges) if start is not None else []
    for e in rounds:
        edges += [k for k in e.devices_per_edge if k not in edges]
    x = [e.round for e in rounds]
    ys = [[e.devices_per_edge.get(edge, 0) for e in rounds] for edge in edges]
    fig = Figure(figsize=(8, 4.2), layout="constrained")
    ax = fig.subplots()
    if edges:
        ax.stackplot(x, ys, labels=edges, alpha=0.8, step=None)
        ax.legend(loc="upper left", fontsize=8, ncol=min(4, len(edges)))
    handovers = [e for e in events if isinstance(e, ev.Handover)]
    if handovers:
        ax.plot([h.round for h in handovers], [0] * len(handovers), "^", color="black", clip_on=False,
                label="handover")
        ax.legend(loc="upper left", fontsize=8, ncol=min(4, len(edges) + 1))
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("devices")
    ax.set_title(f"{title}: devices per edge server")
    ax.grid(alpha=0.3)
    return _save(fig, out)


def _cell_edges(x: Sequence[float]) -> list[float]:
    """Boundaries between consecutive x values (rounds may skip after a resumed run)."""
    if len(x) == 1:
        return [x[0] - 0.5, x[0] + 0.5]
    mids = [(a + b) / 2 for a, b in zip(x[:-1], x[1:], strict=True)]
    return [x[0] - (mids[0] - x[0])] + mids + [x[-1] + (x[-1] - mids[-1])]


def _placement(rounds: Sequence[ev.RoundEnd], title: str, out: Path) -> Path:
    device_nodes = [[s[0] for s in e.splits.values()] for e in rounds]
    top = max((max(d) for d in device_nodes if d), default=0)
    grid = [[0] * len(rounds) for _ in range(top + 1)]  # grid[n][round index] = devices with n device nodes
    for i, counts in enumerate(device_nodes):
        for n in counts:
            grid[n][i] += 1
    x = [e.round for e in rounds]
    fig = Figure(figsize=(8, 4.2), layout="constrained")
    ax = fig.subplots()
    mesh = ax.pcolormesh(_cell_edges(x), [n - 0.5 for n in range(top + 2)], grid, cmap="Blues", shading="flat",
                         edgecolors="face")
    bar = fig.colorbar(mesh, ax=ax, label="devices")
    bar.locator = MaxNLocator(integer=True)
    bar.update_ticks()
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    means = [sum(d) / len(d) if d else float("nan") for d in device_nodes]
    ax.plot(x, means, color="tab:orange", linewidth=1.5, label="mean")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("graph nodes on the device")
    ax.set_title(f"{title}: placement (device-side nodes per device)")
    return _save(fig, out)


def render_report(run_dir: Path, out_dir: Path | None = None) -> list[Path]:
    """Write the run's plots as PNGs (into ``run_dir/report`` unless ``out_dir``); return their paths.

    A log holding several runs (a reused run dir) is reported for its last run. A run that recorded
    its devices' trajectories also gets the city map, ``city.png``, and its animation, ``city.gif``.
    """
    run_dir = Path(run_dir)
    log = run_dir / EVENT_LOG
    logged = to_records(last_run(load_events(log)), log)
    rounds = _rounds(logged, log)
    events = [e for _, e in logged]
    start = next((e for e in events if isinstance(e, ev.RunStart)), None)
    title = (start.scenario if start is not None else "") or run_dir.name
    out = Path(out_dir) if out_dir is not None else run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    paths = [
        _accuracy(events, rounds, title, out / "accuracy.png"),
        _bytes(rounds, title, out / "bytes_per_link.png"),
        _devices_per_edge(events, rounds, title, out / "devices_per_edge.png"),
        _placement(rounds, title, out / "placement.png"),
    ]
    if (run_dir / TRAJECTORIES).exists():
        paths += _city(run_dir / TRAJECTORIES, events, start, title, out)
    return paths


def _city(path: Path, events: Sequence[ev.Event], start: ev.RunStart | None, title: str, out: Path) -> list[Path]:
    from tierflow.orchestrator.citymap import animate_city, draw_city

    try:
        traj = load_trajectories(path)
    except TrajectoryError as exc:
        raise ReportError(str(exc)) from None
    if start is not None and start.devices != len(traj.devices):
        raise ReportError(f"{path}: recorded {len(traj.devices)} devices, but the event log's run has "
                          f"{start.devices}: the file is from another run")
    if not len(traj.times_s):
        raise ReportError(f"{path}: no frames recorded")
    return [draw_city(traj, events, title, out / "city.png").path,
            animate_city(traj, events, title, out / "city.gif").path]
