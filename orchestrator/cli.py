"""The ``tierflow`` command: run, plan, compare, report."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from orchestrator.errors import TierflowError


def _default_out(scenario_path: str) -> Path:
    return Path("runs") / Path(scenario_path).stem


def cmd_run(args: argparse.Namespace) -> int:
    from orchestrator.scenario import load_scenario

    scenario = load_scenario(args.scenario)  # validated before Ray starts
    from orchestrator.runner import RunOptions, run_scenario

    out = Path(args.out) if args.out else _default_out(args.scenario)
    summary = run_scenario(scenario, RunOptions(out_dir=out, address=args.address, metrics_addr=args.metrics_addr))
    print(json.dumps({k: summary[k] for k in ("final_accuracy", "rounds", "wall_time_s", "virtual_time_s")}))
    print(f"run directory: {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tierflow", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a scenario on Ray (local unless --address)")
    run.add_argument("scenario")
    run.add_argument("--address", help="address of an existing Ray cluster (default: start a local one)")
    run.add_argument("--out", help="run directory (default: runs/<scenario name>)")
    run.add_argument("--metrics-addr", default=None,
                     help="serve Prometheus metrics at HOST:PORT (e.g. 127.0.0.1:9464); off by default")
    run.set_defaults(func=cmd_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except TierflowError as exc:
        print(f"tierflow: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
