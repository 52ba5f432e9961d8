"""Scale: many devices through the real orchestrator against the same steps run bare.

Default: examples/scale.yaml (1,000 devices, 50 rounds of a small MLP in emulated time).
``--metro``: examples/metro.yaml (10,000 moving devices, 16 edges, augmented digits); ``--rounds N``
runs only the first N rounds of either (a metro round is long until the vectorized engine lands).

Runs the scenario through the real orchestrator (Ray actors, data plane, checkpoints as the scenario
says) and, as the baseline in the same run, the same number of training steps of the same model in
one plain process (no split, no Ray). Reports wall seconds per round (from the ``round_end``
events), the driver's peak memory (getrusage) and each actor process's peak memory (VmHWM of the
``ray::`` processes under this one, Linux only). Prints one JSON line last with device-steps/s of
both and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from statistics import mean

import torch
import torch.nn.functional as F

from tierflow.orchestrator.runner import RunOptions, run_scenario
from tierflow.orchestrator.scenario import load_scenario
from tierflow.orchestrator.world import build_world
from tierflow.tiers.models import build_model
from tierflow.tiers.optim import make_optimizer

ROOT = Path(__file__).resolve().parents[1]


def monolithic_steps(scenario, steps: int) -> float:
    """Wall seconds for ``steps`` plain forward/backward/step passes of the scenario's model."""
    torch.set_num_threads(1)
    world = build_world(scenario)
    tr = scenario.training
    model = build_model(scenario.model.name, world.dataset.shape, seed=tr.seed)
    opt = make_optimizer(model.parameters(), tr.optimizer)
    x = torch.from_numpy(world.dataset.x_train[: tr.batch_size])
    y = torch.from_numpy(world.dataset.y_train[: tr.batch_size])
    t0 = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return time.perf_counter() - t0


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(p) for p in fh.read().split()]
    except OSError:
        return []


def actor_peaks_mib() -> dict[str, float]:
    """Peak resident MiB of every Ray worker process descended from this one, by its process title
    (``ray::DeviceHostActor`` ...); empty where /proc is not Linux's."""
    out: dict[str, float] = {}
    todo, seen = _children(os.getpid()), set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        todo.extend(_children(pid))
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                title = fh.read().split(b"\0")[0].decode(errors="replace")
            with open(f"/proc/{pid}/status") as fh:
                hwm = next((line.split()[1] for line in fh if line.startswith("VmHWM:")), None)
        except OSError:
            continue
        if title.startswith("ray::") and not title.endswith(("Agent", "IDLE")) and hwm is not None:
            name = title.split()[0]
            out[f"{name}[{pid}]"] = round(int(hwm) / 1024, 1)
    return out


class Watch:
    """An event sink: each round's wall time, and the actors' peak memory while they live."""

    def __init__(self):
        self.round_wall: list[float] = []
        self.actors: dict[str, float] = {}
        self._last: float | None = None
        self.last_round_end: float | None = None  # perf_counter() at the last round's end
        self.tail_s = 0.0  # from the last round's end to the run's: its checkpoint, mostly

    def __call__(self, record: dict) -> None:
        if record.get("event") == "run_start":
            self._last = 0.0
        if record.get("event") == "run_end" and self.last_round_end is not None:
            self.tail_s = time.perf_counter() - self.last_round_end
        if record.get("event") != "round_end":
            return
        self.last_round_end = time.perf_counter()
        wall = float(record["wall_time_s"])
        if self._last is not None:
            self.round_wall.append(wall - self._last)
        self._last = wall
        for k, v in actor_peaks_mib().items():
            self.actors[k] = max(v, self.actors.get(k, 0.0))


def checkpoints(scenario, rounds: int) -> int:
    """How many checkpoints a run of ``rounds`` rounds writes (every ``every_rounds``, and at its end)."""
    every = scenario.checkpoints.every_rounds
    return rounds // every + (rounds % every != 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--metro", action="store_true", help="run examples/metro.yaml instead of examples/scale.yaml")
    ap.add_argument("--rounds", type=int, help="run only the first N rounds")
    args = ap.parse_args()
    scenario = load_scenario(ROOT / "examples" / ("metro.yaml" if args.metro else "scale.yaml"))
    full_rounds = scenario.training.rounds
    if args.rounds:
        scenario = replace(scenario, training=replace(scenario.training, rounds=args.rounds))
    tr = scenario.training
    steps = len(scenario.devices) * tr.local_steps * scenario.aggregation.cloud_every * tr.rounds
    watch = Watch()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        summary = run_scenario(scenario, RunOptions(out_dir=Path(tmp), progress=True, event_sinks=(watch,)))
        wall = time.perf_counter() - t0
    driver_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    baseline = monolithic_steps(scenario, steps)
    per_round = watch.round_wall
    print("actor peak memory (MiB):", json.dumps(watch.actors))
    print(json.dumps({
        "scenario": scenario.name, "devices": len(scenario.devices), "rounds": tr.rounds, "device_steps": steps,
        "wall_s": round(wall, 2), "round_loop_s": round(summary["round_loop_s"], 2),
        "startup_s": round(wall - summary["round_loop_s"], 2),
        "s_per_round": round(summary["round_loop_s"] / tr.rounds, 3),
        "round_wall_s": {"first_with_startup": round(per_round[0], 2), "min": round(min(per_round), 2),
                         "max": round(max(per_round), 2),
                         "after_first_mean": round(mean(per_round[1:] or per_round), 3)} if per_round else None,
        # This run, then for every further round of the scenario as written the mean of this run's
        # rounds after the first (which also opens the sessions and times the engines), and for every
        # further checkpoint the one this run ended with.
        "full_rounds": full_rounds, "checkpoint_s": round(watch.tail_s, 2),
        "extrapolated_full_run_s": round(wall + (full_rounds - tr.rounds) * mean(per_round[1:] or per_round)
                                         + (checkpoints(scenario, full_rounds) - checkpoints(scenario, tr.rounds))
                                         * watch.tail_s, 1),
        "final_accuracy": round(summary["final_accuracy"], 4), "virtual_time_s": round(summary["virtual_time_s"], 2),
        "handovers": summary["handovers"], "migrations": summary["migrations"],
        "driver_peak_rss_mib": round(driver_peak, 1),
        "actor_peak_rss_mib_max": max(watch.actors.values(), default=None),
        "device_steps_per_s": round(steps / wall, 1), "monolithic_steps_per_s": round(steps / baseline, 1),
        "monolithic_s": round(baseline, 2), "ratio_vs_monolithic": round(wall / baseline, 2),
    }))


if __name__ == "__main__":
    main()
