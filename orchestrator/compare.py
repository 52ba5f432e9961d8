"""``tierflow compare``: one scenario, the same seeds, under several policies; a table and a plot.

Each variant is a small named value that derives a scenario from the base one (conventions: a
policy is an object chosen by name). The runs happen one after another in one Ray instance; each
writes its own run directory, and the comparison reads their summaries and event logs. Two
variants that derive the very same scenario (``adaptive+rings`` and ``adaptive+rings+migrate``
when the scenario already migrates) share one run rather than training twice.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from tierflow.orchestrator.cluster import ensure_ray
from tierflow.orchestrator.errors import TierflowError
from tierflow.orchestrator.event_types import RoundEnd
from tierflow.orchestrator.events import read_typed_events
from tierflow.orchestrator.files import read_text
from tierflow.orchestrator.scenario import MobilitySpec, Scenario
from tierflow.placement.profile import LayerProfile


@dataclass(frozen=True)
class Variant:
    """A policy to compare: what it changes in the scenario, and nothing else."""

    name: str
    what: str
    placement: str = "fixed"  # fixed | adaptive
    rings: bool = False  # True: the scenario's ring count if it sets one, else auto
    handover: str | None = None  # migrate | restart; None: the scenario's own
    offload: bool = True  # False: every layer on the device (a 1-tier split: plain FedAvg/HierFAVG)
    mobile: bool = True  # False: nobody moves (what handovers cost, whichever policy handles them)

    def derive(self, sc: Scenario) -> Scenario:
        rings = (sc.policy.rings if sc.policy.rings != "off" else "auto") if self.rings else "off"
        policy = replace(sc.policy, placement=self.placement, rings=rings,
                         handover=self.handover or sc.policy.handover)
        sc = replace(sc, policy=policy)
        if not self.offload:
            # No cuts is one tier: the device holds the whole model (tiers/split.py, len(cuts) + 1 tiers).
            sc = replace(sc, split=(), devices=tuple(replace(d, split=None) for d in sc.devices))
        if not self.mobile:
            # Same checking cadence, so the only difference is that no one crosses a boundary.
            sc = replace(sc, mobility=MobilitySpec(round_duration_s=sc.mobility.round_duration_s,
                                                   check_every_steps=sc.mobility.check_every_steps))
        return sc


VARIANTS: dict[str, Variant] = {v.name: v for v in [
    Variant("device-only", "every layer on the device, no offloading (FedAvg under the scenario's aggregation)",
            offload=False),
    Variant("fixed", "the scenario's split for every device, synchronous rounds"),
    # FedFly's own setting: a fixed split keeps layers on the edge, so a move either carries the
    # session (migrate) or throws the device's period away (restart), against nobody moving.
    Variant("fixed+migrate", "fixed; a moved device's edge session migrates edge to edge", handover="migrate"),
    Variant("fixed+restart", "fixed; a moved device's edge session is dropped and its period restarts",
            handover="restart"),
    Variant("fixed+static", "fixed+migrate with nobody moving: the no-handover reference",
            handover="migrate", mobile=False),
    Variant("adaptive", "per-device exact placement, re-planned as resources drift, synchronous rounds",
            placement="adaptive"),
    Variant("adaptive+rings", "adaptive placement, capability rings, the scenario's handover policy",
            placement="adaptive", rings=True),
    Variant("adaptive+rings+migrate", "adaptive+rings; a moved device's session migrates edge to edge",
            placement="adaptive", rings=True, handover="migrate"),
    Variant("adaptive+rings+restart", "adaptive+rings; a moved device's session is dropped and its work restarts",
            placement="adaptive", rings=True, handover="restart"),
    Variant("adaptive+rings+static", "adaptive+rings+migrate with nobody moving: the no-handover reference",
            placement="adaptive", rings=True, handover="migrate", mobile=False),
]}


def parse_policies(text: str | None) -> list[str]:
    """Variant names from ``--policies`` (default: all), in the order given; unknown names fail."""
    if text is None:
        return list(VARIANTS)
    names = list(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or not names:
        raise TierflowError(f"--policies: expected a comma-separated list of {', '.join(VARIANTS)}; "
                            f"got {', '.join(unknown) if unknown else repr(text)}")
    return names


@dataclass(frozen=True)
class Row:
    variant: str
    time_to_target_s: float | None  # virtual seconds; None: not reached
    target_round: int | None
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
    policy: str = ""
    same_as: str | None = None  # this variant's scenario equals that one's: its run is reused
    ring_passes: int = 0  # a ring's session moving to its next member's edge (not handovers)
    residual_max: float = 0.0  # largest |charged - predicted| / predicted over the rounds
    exact_rounds: int = 0  # rounds charged what the cost model predicted (to 1e-9)
    switches: int = 0  # devices switched to a new split by re-planning


def residuals(rounds: Sequence[RoundEnd]) -> list[float]:
    """|charged - predicted| / predicted of each round_end: what the planner could not know."""
    return [abs(e.charged_s - e.predicted_s) / e.predicted_s if e.predicted_s > 0 else 0.0 for e in rounds]


def row_from_run(variant: str, run_dir: Path) -> Row:
    summary = json.loads(read_text(run_dir / "summary.json", "run summary"))
    rounds = [e for e in read_typed_events(run_dir / "events.jsonl") if isinstance(e, RoundEnd)]
    curve = [(float(e.virtual_time_s), float(e.accuracy)) for e in rounds]
    res = residuals(rounds)
    ttt = summary.get("time_to_target")
    reached = ttt is not None
    return Row(variant, float(ttt["virtual_time_s"]) if reached else None, int(ttt["round"]) if reached else None,
               float(summary["final_accuracy"]), int(summary["rounds"]), float(summary["virtual_time_s"]),
               float(summary["wall_time_s"]), {k: int(v) for k, v in summary["bytes_up"].items()},
               {k: int(v) for k, v in summary["bytes_down"].items()}, int(summary["handovers"]),
               int(summary["migrations"]), int(summary["restarts"]), curve, str(summary.get("policy", "")),
               ring_passes=int(summary.get("ring_passes", 0)), residual_max=max(res, default=0.0),
               exact_rounds=sum(r <= 1e-9 for r in res), switches=int(summary.get("switches", 0)))


ALL_ROUNDS = "virtual_time_s"  # the measure for ratios over every round instead of to the target


def ratio(rows: dict[str, Row], slower: str, faster: str, measure: str = "time_to_target_s"
          ) -> tuple[float | None, str]:
    """measure(slower) / measure(faster) (time to target by default), or why it cannot be computed."""
    missing = [n for n in (slower, faster) if n not in rows]
    if missing:
        return None, f"n/a ({' and '.join(missing)} {'was' if len(missing) == 1 else 'were'} not run)"
    a, b = getattr(rows[slower], measure), getattr(rows[faster], measure)
    missed = [n for n, t in ((slower, a), (faster, b)) if t is None]
    if missed:
        return None, f"n/a ({' and '.join(missed)} did not reach the target)"
    if b <= 0:
        return None, f"n/a ({faster} took no time)"
    return a / b, f"{a / b:.2f} ({a:.1f} s / {b:.1f} s)"


def migration_saving(rows: dict[str, Row], base: str = "adaptive+rings", measure: str = "time_to_target_s"
                     ) -> tuple[float | None, str]:
    """Share of the time restarting loses over nobody moving that migrating wins back:
    (t_restart - t_migrate) / (t_restart - t_static)."""
    names = (f"{base}+restart", f"{base}+migrate", f"{base}+static")
    if any(n not in rows or getattr(rows[n], measure) is None for n in names):
        return None, f"n/a (needs {base}+restart, +migrate and +static, all reaching the target)"
    restart, migrate, static = (getattr(rows[n], measure) for n in names)
    lost = restart - static
    if lost <= 0:
        return None, f"n/a (restarting lost no time: {restart:.1f} s vs {static:.1f} s with nobody moving)"
    return (restart - migrate) / lost, f"{100 * (restart - migrate) / lost:.0f}% of {lost:.1f} s"


RATIOS = {  # label -> (slower, faster): the comparisons a policy study asks for
    "device-only / adaptive": ("device-only", "adaptive"),
    "restart / migrate (adaptive+rings)": ("adaptive+rings+restart", "adaptive+rings+migrate"),
    "sync / rings (adaptive / adaptive+rings)": ("adaptive", "adaptive+rings"),
    "fixed / adaptive": ("fixed", "adaptive"),
    "restart / migrate (fixed split)": ("fixed+restart", "fixed+migrate"),
}


def summary_ratios(rows: dict[str, Row], measure: str = "time_to_target_s") -> dict[str, tuple[float | None, str]]:
    out = {label: ratio(rows, a, b, measure) for label, (a, b) in RATIOS.items()}
    for base, where in (("adaptive+rings", "adaptive+rings"), ("fixed", "fixed split")):
        out[f"migration's saving of what restarting loses ({where})"] = migration_saving(rows, base, measure)
    return out


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


LINK_NAMES = ("device-edge", "edge-cloud")


def markdown(rows: Sequence[Row], target: float) -> str:
    lines = [f"| variant | time to {target:.0%} (virtual s) | final accuracy | rounds | virtual s (all rounds) | "
             "device-edge up / down | edge-cloud up / down | handovers / migrations / restarts | ring passes | "
             "switches | charged = predicted (rounds; largest residual) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ttt = "not reached" if r.time_to_target_s is None else f"{r.time_to_target_s:.1f} (round {r.target_round})"
        links = [f"{human_bytes(r.bytes_up.get(k, 0))} / {human_bytes(r.bytes_down.get(k, 0))}" for k in LINK_NAMES]
        lines.append(f"| {r.variant} | {ttt} | {r.final_accuracy:.3f} | {r.rounds} | {r.virtual_time_s:.1f} | "
                     f"{links[0]} | {links[1]} | {r.handovers} / {r.migrations} / {r.restarts} | {r.ring_passes} | "
                     f"{r.switches} | {residual_text(r)} |")
    lines.append("")
    for r in rows:
        if r.same_as:
            lines.append(f"{r.variant} derives the same scenario as {r.same_as}: one run serves both.  ")
    by_name = {r.variant: r for r in rows}
    lines += ["Time-to-target ratios (above 1: the first is slower):", ""]
    lines += [f"- {label}: {text}" for label, (_, text) in summary_ratios(by_name).items()]
    n_rounds = sorted({r.rounds for r in rows})
    lines += ["", f"The same over the virtual time of all {'/'.join(map(str, n_rounds))} rounds (where the target "
              "falls is coarse, one round; this is not):", ""]
    lines += [f"- {label}: {text}" for label, (_, text) in summary_ratios(by_name, ALL_ROUNDS).items()]
    return "\n".join(lines) + "\n"


def residual_text(r: Row) -> str:
    return f"{r.exact_rounds} of {len(r.curve)}; {100 * r.residual_max:.1f}%"


def to_json(rows: Sequence[Row], scenario: str, target: float) -> dict:
    return {"scenario": scenario, "target_accuracy": target,
            "rows": [asdict(r) for r in rows],
            "ratios": {label: {"value": v, "text": text}
                       for label, (v, text) in summary_ratios({r.variant: r for r in rows}).items()},
            "ratios_all_rounds": {label: {"value": v, "text": text} for label, (v, text)
                                  in summary_ratios({r.variant: r for r in rows}, ALL_ROUNDS).items()}}


def plot(rows: Sequence[Row], target: float, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 5.5))
    shared = {r.same_as: r.variant for r in rows if r.same_as}
    ends = [r.curve[-1][0] for r in rows if r.curve and r.curve[-1][0] > 0]
    firsts = [r.curve[0][0] for r in rows if r.curve and r.curve[0][0] > 0]
    log_x = bool(ends and firsts) and max(ends) / min(firsts) > 50  # fast and slow policies both readable
    for r in rows:
        if r.same_as or not r.curve:
            continue  # drawn once, under both names
        xs, ys = zip(*r.curve, strict=True)
        label = r.variant if r.variant not in shared else f"{r.variant} = {shared[r.variant]}"
        ax.plot(xs, ys, marker="o", markersize=3, label=label)
    ax.axhline(target, color="grey", linestyle="--", linewidth=1, label=f"target {target:.0%}")
    if log_x:
        from matplotlib.ticker import ScalarFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.set_xlabel("virtual time (s)" + (", log scale" if log_x else ""))
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.set_title("accuracy against (virtual) time, one run per policy, same scenario and seeds")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _ttt_text(r: Row) -> str:
    return "not reached" if r.time_to_target_s is None else f"{r.time_to_target_s:.1f} s (round {r.target_round})"


def start_comparison(scenario: Scenario, out: Path, address: str | None, profile_path: str | None,
                     profile: LayerProfile | None = None) -> LayerProfile | None:
    """Ready ``out`` for a comparison, in an order that leaves nothing behind on failure: the dataset
    and the layer profile (unless given), then Ray, then the directory. One profile serves every
    variant, so they differ by their policy alone; a profile made here is kept in
    ``layer_profile.json`` beside the table (None when compute is priced by FLOP counts)."""
    from tierflow.orchestrator.clock import build_cost_model
    from tierflow.orchestrator.profiles import write_profile
    from tierflow.orchestrator.world import load_dataset

    made = profile is None
    if made:
        _, profile = build_cost_model(scenario, load_dataset(scenario).shape, profile_path=profile_path)
    ensure_ray(address)
    out.mkdir(parents=True, exist_ok=True)
    if made and profile is not None:
        write_profile(out, profile)
    return profile


def compare(scenario: Scenario, names: Sequence[str], out: Path, address: str | None = None,
            rounds: int | None = None, progress: bool = True, profile_path: str | None = None,
            profile: LayerProfile | None = None) -> list[Row]:
    """Run ``scenario`` under each named variant into ``out/<variant>/``; write compare.md/.json/.png."""
    from tierflow.orchestrator.runner import RunOptions, run_scenario

    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise TierflowError(f"unknown variants {', '.join(unknown)}; expected some of {', '.join(VARIANTS)}")
    if rounds is not None:
        scenario = replace(scenario, training=replace(scenario.training, rounds=rounds))
    profile = start_comparison(scenario, out, address, profile_path, profile)
    derived: list[tuple[str, Scenario]] = []
    rows: list[Row] = []
    t_all = time.perf_counter()
    for i, name in enumerate(names, 1):
        sc = VARIANTS[name].derive(scenario)
        twin = next((n for n, s in derived if s == sc), None)
        derived.append((name, sc))
        run_dir = out / name
        t0 = time.perf_counter()
        if twin is not None:
            _link(run_dir, out / twin)
            rows.append(replace(row_from_run(name, out / twin), same_as=twin))
        else:
            if run_dir.is_symlink():  # an earlier comparison shared a twin's run here: do not write into it
                run_dir.unlink()
            # A comparison owns its variants' directories: it runs each one over (fresh).
            run_scenario(sc, RunOptions(out_dir=run_dir, address=address, progress=progress, profile=profile,
                                        fresh=True))
            rows.append(row_from_run(name, run_dir))
        r = rows[-1]
        how = f"same run as {twin}" if twin else f"{time.perf_counter() - t0:.0f} s wall"
        print(f"[{i}/{len(names)}] {name}: final accuracy {r.final_accuracy:.3f}, time to target {_ttt_text(r)}, "
              f"{r.virtual_time_s:.1f} virtual s ({how})", flush=True)
    write_outputs(out, rows, scenario.name, scenario.training.target_accuracy,
                  {"wall_time_s": time.perf_counter() - t_all, "seed": scenario.training.seed})
    return rows


def write_outputs(out: Path, rows: Sequence[Row], scenario_name: str, target: float, extra: dict | None = None) -> None:
    """compare.md, compare.json and compare.png from the rows (also to redo them from run directories)."""
    (out / "compare.md").write_text(markdown(rows, target))
    doc = to_json(rows, scenario_name, target)
    doc["variants"] = {r.variant: asdict(VARIANTS[r.variant]) for r in rows if r.variant in VARIANTS}
    doc.update(extra or {})
    (out / "compare.json").write_text(json.dumps(doc, indent=1) + "\n")
    plot(rows, target, out / "compare.png")


def _link(run_dir: Path, target: Path) -> None:
    """``run_dir`` points at the twin's run (a relative symlink, so the output folder can move)."""
    if run_dir.is_symlink() or run_dir.is_file():
        run_dir.unlink()
    elif run_dir.exists():
        if any(run_dir.iterdir()) and not (run_dir / "events.jsonl").exists():
            raise TierflowError(f"{run_dir}: exists and is not a run directory; move it out of the way")
        shutil.rmtree(run_dir)  # this variant's own run from an earlier comparison
    os.symlink(os.path.relpath(target, run_dir.parent), run_dir, target_is_directory=True)

