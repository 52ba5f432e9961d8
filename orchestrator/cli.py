"""The ``tierflow`` command: run, plan, compare, report."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tierflow.orchestrator.cluster import check_address
from tierflow.orchestrator.errors import TierflowError
from tierflow.orchestrator.limits import ROUNDS
from tierflow.orchestrator.validate import check_run_flags

ADDRESS_HELP = ("HOST:PORT of a Ray cluster's head, or 'local' (default: RAY_ADDRESS, else the `ray start` cluster "
                "on this machine, else a private local Ray)")


def _default_out(scenario_path: str) -> Path:
    return Path("runs") / Path(scenario_path).stem


def cmd_run(args: argparse.Namespace) -> int:
    from tierflow.orchestrator.scenario import load_scenario

    if args.resume:
        from tierflow.orchestrator.checkpoint import load_checkpoint

        out = Path(args.resume)
        if args.out and Path(args.out) != out:
            raise TierflowError("--out: a resumed run continues in its own directory; leave --out out")
        if args.fresh:
            raise TierflowError("--fresh: starts a run over, --resume continues it; give one of them")
        recorded = load_checkpoint(out).state["scenario_path"]  # a damaged checkpoint stops here
        scenario_path = args.scenario or recorded
    elif args.scenario:
        from tierflow.orchestrator.run_dir import refuse_used_run_dir

        scenario_path = args.scenario
        out = Path(args.out) if args.out else _default_out(args.scenario)
        refuse_used_run_dir(out, fresh=args.fresh)  # never mix two runs in one directory
    else:
        raise TierflowError("run: expected a scenario file, or --resume RUN_DIR")
    scenario = load_scenario(scenario_path)  # validated before Ray starts
    check_run_flags(None if args.resume else out, args.metrics_addr)  # before any directory or port is taken
    if args.address:
        check_address(args.address, "--address")  # checked here too: a process already connected skips it
    from tierflow.orchestrator.profiles import PROFILE_FILE
    from tierflow.orchestrator.runner import RunOptions, run_scenario

    profile_path = args.profile
    if args.resume and profile_path is None and (out / PROFILE_FILE).is_file():
        profile_path = str(out / PROFILE_FILE)  # a resumed run charges what the interrupted one did
    summary = run_scenario(scenario, RunOptions(out_dir=out, address=args.address, metrics_addr=args.metrics_addr,
                                                resume=bool(args.resume), fresh=args.fresh,
                                                profile_path=profile_path))
    print(json.dumps({k: summary[k] for k in ("final_accuracy", "rounds", "wall_time_s", "virtual_time_s")}))
    print(f"run directory: {out}")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    if args.target.endswith(".json"):
        from tierflow.orchestrator.files import read_text
        from tierflow.placement.errors import InvalidInstanceError
        from tierflow.placement.instance import instance_from_text, solve_instance

        try:
            result = solve_instance(instance_from_text(read_text(args.target, "cost-graph instance"), args.target))
        except InvalidInstanceError as exc:
            raise TierflowError(str(exc)) from exc
        print(json.dumps(result) if args.json else _format_instance(result))
        return 0
    from tierflow.orchestrator.clock import build_cost_model
    from tierflow.orchestrator.planning import plan_scenario
    from tierflow.orchestrator.scenario import load_scenario
    from tierflow.orchestrator.world import build_world
    from tierflow.placement.rings import form_rings

    scenario = load_scenario(args.target)
    world = build_world(scenario)
    cost, _ = build_cost_model(scenario, world.dataset.shape, profile_path=args.profile)
    plans = plan_scenario(scenario, cost, world.batch_sizes())
    k = None if scenario.policy.rings in ("off", "auto") else int(scenario.policy.rings)
    periods = scenario.aggregation.cloud_every
    rings = form_rings({d: periods * p.period_s for d, p in plans.items()}, k)
    ring_of = {d: i for i, ring in enumerate(rings) for d in ring.members}
    rows = []
    for d, p in plans.items():
        counts = p.key.counts() + [0] * (3 - p.key.n_tiers)
        rows.append({"device": d, "edge": p.edge, "device_layers": counts[0], "edge_layers": counts[1],
                     "cloud_layers": counts[2], "period_s": p.period_s, "round_time_s": periods * p.period_s,
                     "ring": ring_of[d]})
    if args.json:
        print(json.dumps(rows))
    else:
        print(f"{'device':<14}{'edge':<10}{'split d/e/c':<14}{'period s':>10}{'round s':>10}{'ring':>6}")
        for r in rows:
            split = f"{r['device_layers']}/{r['edge_layers']}/{r['cloud_layers']}"
            print(f"{r['device']:<14}{r['edge']:<10}{split:<14}{r['period_s']:>10.4f}{r['round_time_s']:>10.3f}"
                  f"{r['ring']:>6}")
    return 0


def _format_instance(result: dict) -> str:
    lines = [f"batch_time_s: {result['batch_time_s']:.6g}"]
    lines += [f"  {node}: tier {tier}" for node, tier in result["assignment"].items()]
    return "\n".join(lines)


def cmd_compare(args: argparse.Namespace) -> int:
    from tierflow.orchestrator.compare import compare, parse_policies
    from tierflow.orchestrator.compare_seeds import compare_over_seeds
    from tierflow.orchestrator.scenario import load_scenario

    names = parse_policies(args.policies)  # before Ray starts, like the scenario
    seeds = parse_seeds(args.seeds)
    scenario = load_scenario(args.scenario)
    if args.rounds is not None and args.rounds < 1:
        raise TierflowError(f"--rounds: expected an integer >= 1, got {args.rounds}")
    if args.rounds is not None and args.rounds > ROUNDS["maximum"]:
        raise TierflowError(f"--rounds: expected an integer <= {ROUNDS['maximum']:,} ({ROUNDS['why']}), "
                            f"got {args.rounds}")
    out = Path(args.out) if args.out else Path("runs") / f"{Path(args.scenario).stem}-compare"
    check_run_flags(out, None)  # before its directory is created
    if args.address:
        check_address(args.address, "--address")
    if seeds is None:
        compare(scenario, names, out, address=args.address, rounds=args.rounds, profile_path=args.profile)
    else:
        for s in seeds:
            load_scenario(args.scenario, seed=s)  # every seed's scenario is valid before anything runs
        compare_over_seeds(lambda s: load_scenario(args.scenario, seed=s), seeds, names, out, address=args.address,
                           rounds=args.rounds, profile_path=args.profile)
    print((out / "compare.md").read_text())
    print(f"written: {out / 'compare.md'}, {out / 'compare.json'}, {out / 'compare.png'}")
    return 0


def parse_seeds(text: str | None) -> list[int] | None:
    """``--seeds 1,2,3``: distinct non-negative integers, in the order given (None: the scenario's own)."""
    if text is None:
        return None
    try:
        seeds = list(dict.fromkeys(int(s) for s in text.split(",") if s.strip()))
    except ValueError:
        seeds = []
    if not seeds or any(s < 0 or s >= 2**32 for s in seeds):
        raise TierflowError(f"--seeds: expected a comma-separated list of integers from 0 to 2**32-1, got {text!r}")
    return seeds


def cmd_report(args: argparse.Namespace) -> int:
    from tierflow.orchestrator.report import render_report

    for path in render_report(Path(args.run_dir)):
        print(path)
    return 0


PROFILE_HELP = ("a layer profile (a run's layer_profile.json) to price compute with; default: this host's "
                "cached profile, timed once if missing")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tierflow", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a scenario on Ray (local unless --address)")
    run.add_argument("scenario", nargs="?", help="the scenario file (with --resume: the one the run recorded)")
    run.add_argument("--resume", metavar="RUN_DIR",
                     help="continue an interrupted run from its last round-boundary checkpoint")
    run.add_argument("--address", help=ADDRESS_HELP)
    run.add_argument("--out", help="run directory (default: runs/<scenario name>)")
    run.add_argument("--fresh", action="store_true",
                     help="the run directory holds an earlier run: delete that run's files and start over")
    run.add_argument("--metrics-addr", default=None,
                     help="serve Prometheus metrics at HOST:PORT; :PORT binds 127.0.0.1, another host is allowed "
                          "with a warning; off by default")
    run.add_argument("--profile", metavar="FILE", help=PROFILE_HELP)
    run.set_defaults(func=cmd_run)
    plan = sub.add_parser("plan", help="print each device's split, predicted times and ring; or solve INSTANCE.json")
    plan.add_argument("target", help="a scenario file, or a bare cost-graph instance (.json)")
    plan.add_argument("--json", action="store_true", help="print JSON")
    plan.add_argument("--profile", metavar="FILE", help=PROFILE_HELP)
    plan.set_defaults(func=cmd_plan)
    cmp = sub.add_parser("compare", help="run a scenario under several policies; write a table and a plot")
    cmp.add_argument("scenario")
    cmp.add_argument("--policies", help="comma-separated variants (default: all): device-only, fixed, "
                                        "fixed+migrate, fixed+restart, fixed+static, adaptive, adaptive+rings, "
                                        "adaptive+rings+migrate, adaptive+rings+restart, adaptive+rings+static")
    cmp.add_argument("--out", help="output directory (default: runs/<scenario>-compare)")
    cmp.add_argument("--address", help=ADDRESS_HELP)
    cmp.add_argument("--rounds", type=int, help="override training.rounds (a quick look)")
    cmp.add_argument("--profile", metavar="FILE", help=PROFILE_HELP)
    cmp.add_argument("--seeds", help="comma-separated training seeds: every variant on each, then means and "
                                     "min-max (default: the scenario's own seed)")
    cmp.set_defaults(func=cmd_compare)
    report = sub.add_parser("report", help="plot a run directory's event log to PNG files")
    report.add_argument("run_dir")
    report.set_defaults(func=cmd_report)
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
