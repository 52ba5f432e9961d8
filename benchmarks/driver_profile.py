"""The orchestrator's own work per round, outside device training, at city scale.

Runs the real run loop (mobility, handover detection, trajectories, events, round_end, checkpoints,
aggregation glue) against ``NoTrainFleet``: a fleet that starts no actor and trains nothing, but
answers every call with data of the real shapes (reports, partial sums, the device and session
exports a checkpoint writes, built by the real ``Session.export``). So what it measures is the
driver process alone, the part that does not shrink when device training is vectorized.

    python benchmarks/driver_profile.py SCENARIO [--rounds N] [--profile FILE.prof]

Prints the top of a cProfile (cumulative) and one JSON line last: seconds per round of driver work.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import resource
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from tierflow.migration.outcome import MigrationOutcome
from tierflow.orchestrator.fleet import CLOUD, ActorsSnapshot, Fleet, TrainBatch
from tierflow.orchestrator.runner import Orchestrator, RunOptions
from tierflow.orchestrator.scenario import load_scenario
from tierflow.tiers.aggregate import WeightedSum
from tierflow.tiers.session import Session, StageFactory, load_partition
from tierflow.tiers.train_report import TrainReport


class NoTrainFleet(Fleet):
    """Every Ray call answered in-process with data of the real shapes; no actor, no training."""

    def start(self, setups) -> None:
        self.cloud, self.hosts = None, [None] * self.n_hosts
        self.edges = {e.name: None for e in self.scenario.edges}
        self.endpoints = dict.fromkeys(self.edges, "inproc")
        self.samples = {s.device_id: len(s.y) for ss in setups for s in ss}
        self.batch = {s.device_id: min(s.batch_size, len(s.y)) for ss in setups for s in ss}
        self.orders = {s.device_id: np.arange(len(s.y), dtype=np.int64) for ss in setups for s in ss}
        self.factory = StageFactory(self.scenario.model.name, self.shape)
        self.keys: dict[str, object] = {}
        self.at: dict[str, str | None] = {}
        self._exports: dict = {}

    def _export(self, key, tier: int, state) -> tuple[dict, dict]:
        if (key, tier) not in self._exports:
            runner = self.factory.runner(key, tier, self.scenario.training.optimizer)
            load_partition(runner, state)
            self._exports[key, tier] = Session("x", tier, key, runner, 1.0).export()
        meta, arrays = self._exports[key, tier]
        return dict(meta), dict(arrays)  # what Ray hands back is fresh; the driver only reads it

    def actor_nodes(self) -> dict[str, str]:
        return {}

    def stop(self) -> None:
        pass

    def open(self, openings, state, fresh=False, servers=True) -> None:
        self._state = state
        for o in openings:
            self.keys[o.device_id], self.at[o.device_id] = o.key, o.edge

    def open_sessions(self, openings, state) -> None:
        pass

    def close_sessions(self, where) -> None:
        pass

    def load_weights(self, state, devices, served=None) -> None:
        self._state = state

    def _ref(self, state):
        return state

    def weighted_sums(self, groups, session_at) -> dict[str, WeightedSum]:
        state = self._state.ref if hasattr(self._state, "ref") else self._state
        out = {}
        for g, members in groups.items():
            s = WeightedSum()
            s.add(state, float(sum(self.samples[d] for d in members)))
            out[g] = s
        return out

    def train(self, jobs) -> TrainBatch:
        reports = []
        for j in sorted(jobs, key=lambda j: j.device_id):
            b = self.batch[j.device_id]
            reports.append(TrainReport(j.device_id, j.edge, j.steps, j.steps * b, 2.0 * j.steps * b, j.steps,
                                       (1e-4, 1e-4, 0.0), (512 * j.steps, 0), (512 * j.steps, 0),
                                       self.keys[j.device_id].n_tiers))
        return TrainBatch(reports, {})

    def migrate_many(self, moves):
        return [MigrationOutcome(True, 40_000, 1e-3) for _ in moves]

    def host_answers(self, host: int) -> bool:
        return True

    def drop_dead_edges(self) -> list[str]:
        return []

    def refused_counts(self, timeout_s: float) -> dict[str, dict]:
        return {}

    def peak_rss_bytes(self, timeout_s: float) -> dict[str, int]:
        return {}  # no actor: the driver's own peak is measured by the run

    def snapshot(self) -> ActorsSnapshot:
        state = self._state.ref if hasattr(self._state, "ref") else self._state
        devices, sessions = {}, {name: {} for name in [*self.edges, CLOUD]}
        for d in sorted(self.keys):
            meta, arrays = self._export(self.keys[d], 0, state)
            meta["sampler"] = {"rng": np.random.default_rng(0).bit_generator.state, "pos": 0}
            arrays["sampler/order"] = self.orders[d].copy()
            devices[d] = (meta, arrays)
            if self.keys[d].n_tiers >= 2 and self.at.get(d):
                sessions.setdefault(self.at[d], {})[d] = self._export(self.keys[d], 1, state)
        return ActorsSnapshot(devices, sessions)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scenario")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--profile", help="write the cProfile stats here")
    ap.add_argument("--top", type=int, default=35)
    ap.add_argument("--bare", action="store_true", help="no cProfile: the times without its overhead")
    args = ap.parse_args()
    sc = load_scenario(args.scenario)
    sc = replace(sc, training=replace(sc.training, rounds=args.rounds))
    with tempfile.TemporaryDirectory() as tmp:
        orch = Orchestrator(sc, RunOptions(out_dir=Path(tmp), progress=False), fleet_class=NoTrainFleet)
        import tierflow.orchestrator.runner as runner_mod

        runner_mod.ensure_ray = lambda address: None  # no Ray: the fleet above answers every call
        prof = cProfile.Profile()
        t0, cpu0 = time.perf_counter(), time.process_time()
        if not args.bare:
            prof.enable()
        summary = orch.run()
        prof.disable()
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    if not args.bare:
        stats = pstats.Stats(prof, stream=sys.stdout).sort_stats("cumulative")
        stats.print_stats(args.top)
        if args.profile:
            stats.dump_stats(args.profile)
    print(json.dumps({"devices": len(sc.devices), "rounds": args.rounds, "wall_s": round(wall, 2),
                      "round_loop_s": round(summary["round_loop_s"], 2),
                      "driver_s_per_round": round(summary["round_loop_s"] / args.rounds, 3),
                      "cpu_s": round(cpu, 2),  # under load from other jobs, steadier than wall time
                      "handovers": summary["handovers"],
                      "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))


if __name__ == "__main__":
    main()
