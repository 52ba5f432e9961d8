"""How long the quickstart waits before its first round: one whole ``tierflow run`` process, timed from outside.

It runs ``tierflow run examples/quickstart.yaml --out DIR --fresh`` on a private Ray instance, times the
process from launch to exit, and reads the run's own record of where the time went: ``summary.json``'s
``startup`` (seconds per phase, from the OS's start of the process to the first round) and
``round_loop_s``; whatever is left is teardown (final files, stopping the actors and Ray).

A shared host's load moves every figure, so two baselines are measured in the same run, each a whole
process too: ``python -c "import torch, ray"`` (what any actor pays to exist), and a bare ``ray.init``
with as many empty actors as the quickstart starts, each importing torch (what Ray and the actor
processes cost with none of tierflow's work). Start-up over each is the figure to compare across
machines. Last line: JSON.
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

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = ROOT / "examples" / "quickstart.yaml"
TARGET_STARTUP_S = 10.0

# Ray and n actors that import torch and answer a ping: the floor under any run's actor start-up.
_BARE_RAY = """
import os, sys
import ray
ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False, logging_level="WARNING")

@ray.remote(num_cpus=0)
class Empty:
    def __init__(self):
        import torch  # noqa: F401  (every tier actor imports it)

    def ping(self):
        return 1

actors = [Empty.remote() for _ in range(int(sys.argv[1]))]
assert sum(ray.get([a.ping.remote() for a in actors])) == len(actors)
"""


def _env() -> dict[str, str]:
    # A private Ray instance, never a `ray start` cluster someone left on this machine.
    return {**os.environ, "RAY_ADDRESS": "local", "PYTHONUNBUFFERED": "1"}


def timed_process(argv: list[str], timeout_s: float = 900.0) -> float:
    """Wall seconds of a whole process, launch to exit; a failure stops the benchmark with its stderr."""
    t0 = time.perf_counter()
    done = subprocess.run(argv, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout_s)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:3])} ... failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return wall


def quickstart_actors() -> int:
    """The actors the quickstart starts: the cloud, one per edge, its device hosts."""
    from tierflow.orchestrator.scenario import load_scenario

    sc = load_scenario(str(SCENARIO))
    return 1 + min(sc.execution.edge_hosts, len(sc.edges)) + min(sc.execution.device_hosts, len(sc.devices))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tierflow", default=str(Path(sys.executable).with_name("tierflow")),
                    help="the tierflow command to time (default: beside this python)")
    args = ap.parse_args()
    n_actors = quickstart_actors()
    load_before = os.getloadavg()[0]
    import_s = timed_process([sys.executable, "-c", "import torch, ray"])
    bare_s = timed_process([sys.executable, "-c", _BARE_RAY, str(n_actors)])
    with tempfile.TemporaryDirectory(prefix="tierflow-startup-") as tmp:
        out = Path(tmp) / "q"
        whole_s = timed_process([args.tierflow, "run", str(SCENARIO), "--out", str(out), "--fresh"])
        summary = json.loads((out / "summary.json").read_text())
        rounds = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    startup = summary["startup"]
    if startup.get("total_s") is None:
        raise SystemExit("summary.json has no startup.total_s (the process's start time is known on Linux only)")
    startup_s, loop_s = float(startup["total_s"]), float(summary["round_loop_s"])
    round_ends = [e for e in rounds if e["event"] == "round_end"]
    phases = {k: round(float(v), 3) for k, v in startup.items() if k.endswith("_s") and k != "total_s"}
    for name, value in phases.items():
        print(f"  {name:14s} {value:7.2f} s")
    print(f"start-up {startup_s:.2f} s, round loop {loop_s:.2f} s ({len(round_ends)} rounds), "
          f"whole process {whole_s:.2f} s; baselines: import torch+ray {import_s:.2f} s, "
          f"ray.init + {n_actors} torch actors {bare_s:.2f} s")
    print(json.dumps({
        "startup_s": round(startup_s, 3),
        "round_loop_s": round(loop_s, 3),
        "teardown_s": round(whole_s - startup_s - loop_s, 3),
        "whole_process_s": round(whole_s, 3),
        "target_startup_s": TARGET_STARTUP_S,
        "startup_met": startup_s <= TARGET_STARTUP_S,
        "phases_s": phases,
        "final_accuracy": summary["final_accuracy"],
        "actors": n_actors,
        "baseline_import_torch_ray_s": round(import_s, 3),
        "baseline_ray_init_actors_s": round(bare_s, 3),
        "startup_over_import": round(startup_s / import_s, 2),
        "startup_over_ray_actors": round(startup_s / bare_s, 2),
        "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "cpus": os.cpu_count(),
    }))


if __name__ == "__main__":
    main()
