"""``tierflow compare``: one scenario, the same seeds, under several policies; a table and a plot.

Each variant is a small named object that derives a scenario from the base one (conventions: a
policy is an object chosen by name). The runs happen one after another in one Ray instance; each
writes its own run directory, and the comparison reads their summaries and event logs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from orchestrator.errors import TierflowError
from orchestrator.events import read_events
from orchestrator.scenario import MobilitySpec, Scenario


@dataclass(frozen=True)
class Variant:
    name: str
    what: str
    derive: Callable[[Scenario], Scenario]


def _policy(sc: Scenario, **changes) -> Scenario:
    return replace(sc, policy=replace(sc.policy, **changes))


def _rings(sc: Scenario) -> int | str:
    return sc.policy.rings if sc.policy.rings != "off" else "auto"


def _device_only(sc: Scenario) -> Scenario:
    devices = tuple(replace(d, split=None) for d in sc.devices)
    return _policy(replace(sc, devices=devices, split=()), placement="fixed", rings="off")


VARIANTS: dict[str, Variant] = {v.name: v for v in [
    Variant("device-only", "FedAvg with every layer on the device (no offloading)", _device_only),
    Variant("fixed", "the scenario's fixed split, synchronous rounds",
            lambda sc: _policy(sc, placement="fixed", rings="off")),
    Variant("adaptive", "per-device exact placement, re-planned as resources drift, synchronous rounds",
            lambda sc: _policy(sc, placement="adaptive", rings="off")),
    Variant("adaptive+rings", "adaptive placement, capability rings, sessions migrate on handover",
            lambda sc: _policy(sc, placement="adaptive", rings=_rings(sc), handover="migrate")),
    Variant("adaptive+rings+restart", "as adaptive+rings, but a moved session restarts (no migration)",
            lambda sc: _policy(sc, placement="adaptive", rings=_rings(sc), handover="restart")),
    Variant("adaptive+rings+static", "as adaptive+rings with nobody moving: what handovers cost",
            lambda sc: replace(_policy(sc, placement="adaptive", rings=_rings(sc), handover="migrate"),
                               mobility=MobilitySpec(round_duration_s=sc.mobility.round_duration_s,
                                                     check_every_steps=sc.mobility.check_every_steps))),
]}


def parse_policies(text: str | None) -> list[str]:
    if not text:
        return list(VARIANTS)
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or not names:
        raise TierflowError(f"--policies: expected a comma-separated list of {', '.join(VARIANTS)}; "
                            f"got {', '.join(unknown) or repr(text)}")
    return names


@dataclass(frozen=True)
class Row:
    variant: str
    time_to_target_s: float | None  # virtual seconds; None: not reached
    final_accuracy: float
    rounds: int
    virtual_time_s: float
    wall_time_s: float
    bytes_up: dict[str, int]
    bytes_down: dict[str, int]
    handovers: int
    migrations: int
    restarts: int
    curve: list[tuple[float, float]]  # (virtual time, accuracy) after each round


def row_from_run(variant: str, run_dir: Path) -> Row:
    summary = json.loads((run_dir / "summary.json").read_text())
    curve = [(e["virtual_time_s"], e["accuracy"]) for e in read_events(run_dir / "events.jsonl")
             if e["event"] == "round_end"]
    ttt = summary.get("time_to_target")
    return Row(variant, None if ttt is None else float(ttt["virtual_time_s"]), float(summary["final_accuracy"]),
               int(summary["rounds"]), float(summary["virtual_time_s"]), float(summary["wall_time_s"]),
               dict(summary["bytes_up"]), dict(summary["bytes_down"]), int(summary["handovers"]),
               int(summary["migrations"]), int(summary["restarts"]), curve)


def ratio(rows: dict[str, Row], slower: str, faster: str) -> tuple[float | None, str]:
    """time-to-target(slower) / time-to-target(faster), or why it cannot be computed."""
    if slower not in rows or faster not in rows:
        return None, f"n/a ({slower if slower not in rows else faster} was not run)"
    a, b = rows[slower].time_to_target_s, rows[faster].time_to_target_s
    missing = [n for n, t in ((slower, a), (faster, b)) if t is None]
    if missing:
        return None, f"n/a ({' and '.join(missing)} did not reach the target)"
    return a / b, f"{a / b:.2f}"


def migration_saving(rows: dict[str, Row]) -> tuple[float | None, str]:
    """Share of the time restarting loses (over nobody moving) that migrating saves."""
    names = ("adaptive+rings+restart", "adaptive+rings", "adaptive+rings+static")
    if any(n not in rows or rows[n].time_to_target_s is None for n in names):
        return None, "n/a (needs adaptive+rings, +restart and +static, all reaching the target)"
    restart, migrate, static = (rows[n].time_to_target_s for n in names)
    lost = restart - static
    if lost <= 0:
        return None, f"n/a (restarting lost no time: {restart:.1f} s vs {static:.1f} s without moving)"
    return (restart - migrate) / lost, f"{100 * (restart - migrate) / lost:.0f}%"


def summary_ratios(rows: dict[str, Row]) -> dict[str, tuple[float | None, str]]:
    return {
        "device-only / adaptive": ratio(rows, "device-only", "adaptive"),
        "restart / migrate": ratio(rows, "adaptive+rings+restart", "adaptive+rings"),
        "sync / rings": ratio(rows, "adaptive", "adaptive+rings"),
        "fixed / adaptive": ratio(rows, "fixed", "adaptive"),
        "migration saves of what restarting loses": migration_saving(rows),
    }


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def markdown(rows: Sequence[Row], target: float) -> str:
    lines = [f"| variant | time to {target:.0%} (virtual s) | final accuracy | rounds | device-edge up/down | "
             "edge-cloud up/down | handovers | migrations | restarts |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ttt = "not reached" if r.time_to_target_s is None else f"{r.time_to_target_s:.1f}"
        de = f"{_human(r.bytes_up['device-edge'])} / {_human(r.bytes_down['device-edge'])}"
        ec = f"{_human(r.bytes_up['edge-cloud'])} / {_human(r.bytes_down['edge-cloud'])}"
        lines.append(f"| {r.variant} | {ttt} | {r.final_accuracy:.3f} | {r.rounds} | {de} | {ec} | {r.handovers} | "
                     f"{r.migrations} | {r.restarts} |")
    by_name = {r.variant: r for r in rows}
    lines.append("")
    for label, (_, text) in summary_ratios(by_name).items():
        lines.append(f"- {label}: {text}")
    return "\n".join(lines) + "\n"


def plot(rows: Sequence[Row], target: float, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for r in rows:
        xs, ys = zip(*r.curve, strict=True) if r.curve else ((), ())
        ax.plot(xs, ys, marker="o", markersize=3, label=r.variant)
    ax.axhline(target, color="grey", linestyle="--", linewidth=1, label=f"target {target:.0%}")
    ax.set_xlabel("virtual time (s)")
    ax.set_ylabel("test accuracy")
    ax.set_title("accuracy against (virtual) time")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def compare(scenario: Scenario, names: Sequence[str], out: Path, address: str | None = None,
            rounds: int | None = None, progress: bool = True) -> list[Row]:
    from orchestrator.runner import RunOptions, run_scenario

    if rounds is not None:
        scenario = replace(scenario, training=replace(scenario.training, rounds=rounds))
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, name in enumerate(names, 1):
        t0 = time.perf_counter()
        run_dir = out / name
        run_scenario(VARIANTS[name].derive(scenario), RunOptions(out_dir=run_dir, address=address, progress=progress))
        rows.append(row_from_run(name, run_dir))
        r = rows[-1]
        ttt = "not reached" if r.time_to_target_s is None else f"{r.time_to_target_s:.1f} s"
        print(f"[{i}/{len(names)}] {name}: accuracy {r.final_accuracy:.3f}, time to target {ttt} "
              f"({time.perf_counter() - t0:.0f} s wall)", flush=True)
    target = scenario.training.target_accuracy
    (out / "compare.md").write_text(markdown(rows, target))
    by_name = {r.variant: r for r in rows}
    doc = {"scenario": scenario.name, "target_accuracy": target,
           "rows": [{k: v for k, v in r.__dict__.items()} for r in rows],
           "ratios": {label: value for label, (value, _) in summary_ratios(by_name).items()}}
    (out / "compare.json").write_text(json.dumps(doc, indent=1) + "\n")
    plot(rows, target, out / "compare.png")
    return rows
