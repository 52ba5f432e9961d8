"""Whole runs, looped against vectorized: examples/scale.yaml (1,000 devices, MLP) run through the real
orchestrator twice in one process, ``execution.engine: looped`` then ``vectorized``, fewer rounds.

Prints one JSON line last: each engine's wall time and round-loop time, their ratios (looped over
vectorized: above 1 means the vectorized engine is faster), and how far the two final models lie
apart (they must agree to float rounding: tests/test_engine_run.py is the oracle). The rest of a
round (aggregation, checkpoints every round, evaluation) is the same work in both runs.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from tierflow.orchestrator.runner import RunOptions, run_scenario
from tierflow.orchestrator.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[1]


def run(scenario, engine: str, out: Path) -> tuple[dict, dict[str, np.ndarray]]:
    sc = replace(scenario, execution=replace(scenario.execution, engine=engine))
    summary = run_scenario(sc, RunOptions(out_dir=out, progress=False))
    return summary, load_file(str(out / "model.safetensors"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--scenario", default=str(ROOT / "examples" / "scale.yaml"))
    args = parser.parse_args()
    base = load_scenario(args.scenario)
    scenario = replace(base, training=replace(base.training, rounds=args.rounds))
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for engine in ("looped", "vectorized"):
            summary, model = run(scenario, engine, Path(tmp) / engine)
            results[engine] = (summary, model)
            print(f"{engine}: wall {summary['wall_time_s']:.1f} s, round loop {summary['round_loop_s']:.1f} s, "
                  f"accuracy {summary['final_accuracy']:.4f}, engine {summary['engine']}", flush=True)
    (loop_s, loop_m), (vec_s, vec_m) = results["looped"], results["vectorized"]
    diff = max(float(np.max(np.abs(loop_m[k].astype(np.float64) - vec_m[k]))) for k in loop_m)
    tr = scenario.training
    print(json.dumps({
        "benchmark": "engine_run", "scenario": scenario.name, "devices": len(scenario.devices),
        "rounds": tr.rounds, "device_steps": len(scenario.devices) * tr.local_steps
        * scenario.aggregation.cloud_every * tr.rounds,
        "looped_wall_s": round(loop_s["wall_time_s"], 2), "vectorized_wall_s": round(vec_s["wall_time_s"], 2),
        "looped_round_loop_s": round(loop_s["round_loop_s"], 2),
        "vectorized_round_loop_s": round(vec_s["round_loop_s"], 2),
        "ratio_wall": round(loop_s["wall_time_s"] / vec_s["wall_time_s"], 2),
        "ratio_round_loop": round(loop_s["round_loop_s"] / vec_s["round_loop_s"], 2),
        "final_accuracy": {"looped": loop_s["final_accuracy"], "vectorized": vec_s["final_accuracy"]},
        "max_weight_diff": diff,
        "engine": vec_s["engine"],
    }))


if __name__ == "__main__":
    main()
