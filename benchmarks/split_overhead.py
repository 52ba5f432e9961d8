"""What the tiers cost: the quickstart's training once in one process, once through the Ray tier actors.

Both do the same work: every device trains the same number of steps on the same batches with its
own optimizer, models are averaged each round (FedAvg), and the global model is evaluated.
The tiered time is the round loop only (actor start-up is reported apart). Last line: JSON.
"""

from __future__ import annotations

import copy
import json
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from tierflow.orchestrator.runner import RunOptions, run_scenario
from tierflow.orchestrator.scenario import load_scenario
from tierflow.orchestrator.world import build_world, model_state
from tierflow.tiers.aggregate import weighted_average
from tierflow.tiers.hosts import BatchSampler
from tierflow.tiers.models import build_model
from tierflow.tiers.optim import make_optimizer

ROOT = Path(__file__).resolve().parents[1]


def monolithic(scenario) -> float:
    torch.set_num_threads(1)  # like each tier actor
    world = build_world(scenario)
    tr = scenario.training
    ds = world.dataset
    base = build_model(scenario.model.name, ds.shape, seed=tr.seed)
    models, opts, samplers, data, weights = [], [], [], [], []
    for i, idx in enumerate(world.shards):
        m = copy.deepcopy(base)
        m.train()
        models.append(m)
        opts.append(make_optimizer(m.parameters(), tr.optimizer))
        samplers.append(BatchSampler(len(idx), tr.batch_size, tr.seed * 100_003 + i))
        data.append((ds.x_train[idx], ds.y_train[idx]))
        weights.append(float(len(idx)))
    t0 = time.perf_counter()
    for _ in range(tr.rounds):
        for _ in range(scenario.aggregation.cloud_every):
            for m, opt, sampler, (x, y) in zip(models, opts, samplers, data, strict=True):
                for _ in range(tr.local_steps):
                    b = sampler.next_indices()
                    opt.zero_grad()
                    F.cross_entropy(m(torch.from_numpy(x[b])), torch.from_numpy(y[b])).backward()
                    opt.step()
            avg = weighted_average([(model_state(m), w) for m, w in zip(models, weights, strict=True)])
            for m in models:
                m.load_state_dict({k: torch.from_numpy(v) for k, v in avg.items()})
        base.load_state_dict({k: torch.from_numpy(v) for k, v in avg.items()})
        base.eval()
        with torch.no_grad():
            (base(torch.from_numpy(ds.x_test)).argmax(1) == torch.from_numpy(ds.y_test)).float().mean()
    return time.perf_counter() - t0


def main() -> None:
    scenario = load_scenario(ROOT / "examples" / "quickstart.yaml")
    print("monolithic: training in one process ...", flush=True)
    mono_s = monolithic(scenario)
    print(f"monolithic: {mono_s:.2f} s", flush=True)
    print("tiered: the same work through the Ray tier actors ...", flush=True)
    with tempfile.TemporaryDirectory() as out:
        summary = run_scenario(scenario, RunOptions(out_dir=Path(out), progress=True))
    tiered_s = summary["round_loop_s"]
    print(f"tiered: {tiered_s:.2f} s in the round loop ({summary['wall_time_s']:.1f} s with Ray start-up)")
    print(json.dumps({"monolithic_s": round(mono_s, 3), "tiered_s": round(tiered_s, 3),
                      "ratio": round(tiered_s / mono_s, 3),
                      "startup_s": round(summary["wall_time_s"] - tiered_s, 3)}))


if __name__ == "__main__":
    main()
