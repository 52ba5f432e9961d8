"""Scale: 1,000 devices for 50 rounds of a small model in emulated time.

Runs examples/scale.yaml through the real orchestrator (Ray actors, data plane, checkpoints every
round) and, as the baseline in the same run, the same number of training steps of the same model
in one plain process (no split, no Ray). Prints one JSON line last: the orchestrated wall time,
the baseline's, and their ratio (what orchestrating 1,000 devices costs over the bare compute).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

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


def main() -> None:
    scenario = load_scenario(ROOT / "examples" / "scale.yaml")
    tr = scenario.training
    steps = len(scenario.devices) * tr.local_steps * scenario.aggregation.cloud_every * tr.rounds
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        summary = run_scenario(scenario, RunOptions(out_dir=Path(tmp), progress=True))
        wall = time.perf_counter() - t0
    baseline = monolithic_steps(scenario, steps)
    print(json.dumps({
        "devices": len(scenario.devices), "rounds": tr.rounds, "device_steps": steps,
        "wall_s": round(wall, 2), "round_loop_s": round(summary["round_loop_s"], 2),
        "s_per_round": round(summary["round_loop_s"] / tr.rounds, 3),
        "virtual_time_s": round(summary["virtual_time_s"], 2),
        "monolithic_s": round(baseline, 2), "ratio_vs_monolithic": round(wall / baseline, 2),
    }))


if __name__ == "__main__":
    main()
