"""tierflow against Flower on Flower's own FedAvg workload, whole process to whole process.

The workload (design.md §6): 50 clients × 30 scikit-learn digits upsampled to 32×32, VGG-5, one
local epoch of batch 32 (one step of the 30 samples), FedAvg, the global model evaluated on the held-out
digits every round, 10 rounds. Both sides get the same arrays, the same partition (tierflow's IID
partition with the scenario's seed, written out for Flower), the same initial weights and plain SGD
(no momentum, so Flower's per-round optimizer and tierflow's kept one step identically): the accuracies
should agree closely, and any gap is reported.

Flower runs in its own virtual environment (``benchmarks/.venv-flower``, created on first use with
``flwr[simulation]``; never a tierflow dependency) as ``benchmarks/flower_peer_flwr.py`` under
``flwr.simulation.run_simulation``; tierflow runs as ``tierflow run`` on a devices-only scenario
(every device trains the whole model; one edge averages them and the cloud takes the edge's average:
FedAvg). Each side is timed from launch to exit. Last line: JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FLOWER_VENV = HERE / ".venv-flower"
FLOWER_REQUIREMENTS = ["torch==2.13.0", "flwr[simulation]==1.42.0"]
DATA_ENV = "TIERFLOW_FLOWER_PEER_DATA"  # the arrays file, for tierflow_dataset() in the run's process

CLIENTS, PER_CLIENT, ROUNDS, BATCH, LR, SEED, SIDE = 50, 30, 10, 32, 0.1, 0, 32
TARGET_RATIO = 0.4


def digits32(seed: int = SEED) -> dict[str, np.ndarray]:
    """scikit-learn's digits, scaled, upsampled bilinearly to 32x32; the first 1,500 of a seeded shuffle
    train, the other 297 test."""
    import torch
    import torch.nn.functional as F

    from tierflow.orchestrator.data import read_digits

    images, target = read_digits()
    x = (images.astype(np.float32) / 16.0)[:, None]
    x = (x - x.mean()) / x.std()
    x = F.interpolate(torch.from_numpy(x), size=(SIDE, SIDE), mode="bilinear", align_corners=False).numpy()
    order = np.random.default_rng(seed).permutation(len(target))
    n_train = CLIENTS * PER_CLIENT
    train, test = order[:n_train], order[n_train:]
    y = target.astype(np.int64)
    return {"x_train": x[train], "y_train": y[train], "x_test": x[test], "y_test": y[test]}


def tierflow_dataset():
    """The scenario's ``dataset.name`` (``flower_peer:tierflow_dataset``): the arrays this benchmark wrote."""
    with np.load(os.environ[DATA_ENV]) as f:
        return f["x_train"], f["y_train"], f["x_test"], f["y_test"]


def scenario_yaml() -> str:
    devices = "\n".join(f"  - {{name: d{i:02d}, position: [{i}, 0], flops_per_s: 1.0e+10, bandwidth_mbps: 100}}"
                        for i in range(CLIENTS))
    return f"""# Flower's FedAvg workload as a tierflow scenario (written by benchmarks/flower_peer.py).
name: flower-peer
cloud: {{flops_per_s: 1.0e+12}}
edges:
  - {{name: e0, position: [0, 0], radius_m: 1000, flops_per_s: 1.0e+11, cloud_bandwidth_mbps: 1000}}
devices:
{devices}
model: {{name: vgg5}}
dataset: {{name: "flower_peer:tierflow_dataset", partition: iid}}
training:
  rounds: {ROUNDS}
  local_steps: 1   # one epoch: {PER_CLIENT} samples in one batch of up to {BATCH}
  batch_size: {BATCH}
  optimizer: {{name: sgd, lr: {LR}}}
  seed: {SEED}
  target_accuracy: 0.9
aggregation: {{schedule: hierfavg, cloud_every: 1}}
split: []   # devices-only: every device trains the whole model
"""


def write_inputs(tmp: Path) -> tuple[Path, Path]:
    """The arrays, tierflow's partition of them and the initial weights (one file both sides read), and
    the scenario."""
    from tierflow.orchestrator.data import partition_iid
    from tierflow.orchestrator.world import model_state
    from tierflow.tiers.models import InputShape, build_model

    data = digits32()
    shards = partition_iid(len(data["y_train"]), [1.0] * CLIENTS, SEED)  # what tierflow deals its devices
    assert all(len(s) == PER_CLIENT for s in shards)
    weights = model_state(build_model("vgg5", InputShape(1, SIDE, SIDE, 10), seed=SEED))
    arrays = tmp / "peer.npz"
    np.savez(arrays, **data, shards=np.stack(shards), **{f"w/{k}": v for k, v in weights.items()})
    scenario = tmp / "flower_peer.yaml"
    scenario.write_text(scenario_yaml())
    return arrays, scenario


def flower_python() -> Path:
    """The Flower venv's python, created on first use (a few minutes: torch and flwr[simulation])."""
    python = FLOWER_VENV / "bin" / "python"
    if not python.exists():
        print(f"creating {FLOWER_VENV} with {' '.join(FLOWER_REQUIREMENTS)}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(FLOWER_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
        for req in FLOWER_REQUIREMENTS:  # torch first, pinned: no CUDA build pulled in by flwr
            subprocess.run([str(python), "-m", "pip", "install", "-q", req], check=True)
    return python


def timed(argv: list[str], env: dict[str, str], cwd: Path, timeout_s: float = 1800) -> tuple[float, str]:
    t0 = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{argv[0]} {argv[1]} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return wall, done.stdout


def run_tierflow(arrays: Path, scenario: Path, tmp: Path) -> dict:
    env = {**os.environ, "RAY_ADDRESS": "local", DATA_ENV: str(arrays),
           "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    out = tmp / "tierflow-run"
    wall, _ = timed([str(Path(sys.executable).with_name("tierflow")), "run", str(scenario), "--out", str(out),
                     "--fresh"], env, ROOT)
    summary = json.loads((out / "summary.json").read_text())
    return {"wall_s": wall, "accuracy": float(summary["final_accuracy"]), "round_loop_s": summary["round_loop_s"],
            "startup_s": summary["startup"]["total_s"]}


def run_flower(arrays: Path, tmp: Path) -> dict:
    env = {**os.environ, "RAY_ADDRESS": "local"}
    env.pop("PYTHONPATH", None)
    wall, stdout = timed([str(flower_python()), str(HERE / "flower_peer_flwr.py"), str(arrays),
                          "--rounds", str(ROUNDS), "--batch", str(BATCH), "--lr", str(LR)], env, tmp)
    result = json.loads(stdout.strip().splitlines()[-1])
    return {"wall_s": wall, **result}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=("tierflow", "flower"), help="run one side (for looking into it)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="flower-peer-") as name:
        tmp = Path(name)
        arrays, scenario = write_inputs(tmp)
        flower = run_flower(arrays, tmp) if args.only != "tierflow" else None
        tier = run_tierflow(arrays, scenario, tmp) if args.only != "flower" else None
    for side, r in (("flower", flower), ("tierflow", tier)):
        if r is not None:
            print(f"{side}: {r['wall_s']:.2f} s whole process, final accuracy {r['accuracy']:.4f}  {r}")
    if flower is None or tier is None:
        return
    print(json.dumps({
        "tierflow_s": round(tier["wall_s"], 3),
        "flower_s": round(flower["wall_s"], 3),
        "tierflow_over_flower": round(tier["wall_s"] / flower["wall_s"], 3),
        "target_ratio": TARGET_RATIO,
        "tierflow_accuracy": round(tier["accuracy"], 4),
        "flower_accuracy": round(flower["accuracy"], 4),
        "accuracy_gap_points": round(100 * abs(tier["accuracy"] - flower["accuracy"]), 2),
        "tierflow_startup_s": tier["startup_s"],
        "tierflow_round_loop_s": round(tier["round_loop_s"], 3),
        "flower_rounds_s": flower.get("rounds_s"),
        "clients": CLIENTS, "rounds": ROUNDS, "load_avg_1m": round(os.getloadavg()[0], 2), "cpus": os.cpu_count(),
    }))


if __name__ == "__main__":
    main()
