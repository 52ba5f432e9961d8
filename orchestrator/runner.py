"""The round loop: start the tier actors, train, aggregate, evaluate, log.

One round is one cloud aggregation: ``cloud_every`` periods of ``local_steps`` steps per device,
with an edge aggregation after each period (HierFAVG). The orchestrator decides; the tier actors
execute (conventions: controller and replicas).
"""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray
import torch
import torch.nn.functional as F
from tqdm import tqdm

from orchestrator.aggregation import AGGREGATIONS, restrict
from orchestrator.clock import LinkRates, device_round_time, host_flops_per_s, round_time
from orchestrator.events import EventLog
from orchestrator.scenario import Scenario
from orchestrator.world import World, build_world
from tiers.actors import CloudActor, DeviceHostActor, EdgeActor, actor_options
from tiers.aggregate import WeightedSum
from tiers.hosts import DeviceSetup, TrainReport
from tiers.models import build_model
from tiers.session import SplitKey, StageFactory

LINKS = ("device-edge", "edge-cloud")


@dataclass(frozen=True)
class RunOptions:
    out_dir: Path
    address: str | None = None
    progress: bool = True
    metrics_addr: str | None = None


def init_ray(address: str | None) -> None:
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, logging_level="WARNING", log_to_driver=True)
    else:
        ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False, logging_level="WARNING",
                 configure_logging=True)


def dataplane_host() -> str | None:
    """Loopback when every Ray node is this machine; otherwise each actor binds its node's address."""
    addresses = {n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive")}
    return "127.0.0.1" if addresses <= {ray.util.get_node_ip_address()} else None


class Orchestrator:
    def __init__(self, scenario: Scenario, options: RunOptions):
        self.scenario = scenario
        self.options = options
        self.world: World = build_world(scenario)
        self.shape = self.world.dataset.shape
        self.aggregation = AGGREGATIONS[scenario.aggregation.schedule]()
        self.global_state = dict(self.world.initial_state)
        self.splits: dict[str, SplitKey] = dict(self.world.splits)
        self.edge_of: dict[str, str | None] = {d.name: d.edge for d in scenario.devices}
        self.devices = {d.name: d for d in scenario.devices}
        self.weights = {d.name: float(len(s)) for d, s in zip(scenario.devices, self.world.shards, strict=True)}
        self.factory = StageFactory(scenario.model.name, self.shape)
        self.eval_model = build_model(scenario.model.name, self.shape)
        self.bytes_total = {link: {"up": 0, "down": 0} for link in LINKS}
        self.virtual_time_s = 0.0
        self.host_speed = host_flops_per_s()

    # ----- actors -----
    def start_actors(self) -> None:
        sc = self.scenario
        opt = sc.training.optimizer
        model = sc.model.name
        token = secrets.token_hex(16)  # per run: data-plane messages without it are refused
        self.cloud = CloudActor.options(**actor_options("cloud")).remote("cloud", model, self.shape, opt, 1, token)
        self.edges = {
            e.name: EdgeActor.options(**actor_options("edge")).remote(e.name, model, self.shape, opt, self.cloud, 1,
                                                                      token)
            for e in sc.edges
        }
        n_hosts = min(sc.execution.device_hosts, len(sc.devices))
        self.hosts = [
            DeviceHostActor.options(**actor_options("device")).remote(f"host{i}", model, self.shape, opt, 1, token)
            for i in range(n_hosts)
        ]
        bind = dataplane_host()
        cloud_endpoint = ray.get(self.cloud.start_dataplane.remote(bind))
        names = list(self.edges)
        endpoints = ray.get([self.edges[n].start_dataplane.remote(bind) for n in names])
        self.endpoints = dict(zip(names, endpoints, strict=True))
        ray.get([edge.set_cloud_endpoint.remote(cloud_endpoint) for edge in self.edges.values()])
        self.host_of = {d.name: i % n_hosts for i, d in enumerate(sc.devices)}
        ds = self.world.dataset
        calls = []
        for h, host in enumerate(self.hosts):
            setups = [
                DeviceSetup(d.name, ds.x_train[idx], ds.y_train[idx], sc.training.batch_size,
                            sc.training.seed * 100_003 + i)
                for i, (d, idx) in enumerate(zip(sc.devices, self.world.shards, strict=True))
                if self.host_of[d.name] == h
            ]
            calls.append(host.add_devices.remote(setups))
        ray.get(calls)
        state_ref = ray.put(self.global_state)
        calls = []
        for d in sc.devices:
            calls.extend(self._open_device(d.name, self.splits[d.name], state_ref))
        ray.get(calls)

    def _open_device(self, device_id: str, key: SplitKey, state_ref) -> list:
        calls = [self.hosts[self.host_of[device_id]].configure.remote(device_id, key, state_ref)]
        edge = self.edge_of[device_id]
        if key.n_tiers >= 2 and edge is not None:
            calls.append(self.edges[edge].open_session.remote(device_id, key, state_ref, self.weights[device_id]))
        if key.n_tiers == 3:
            calls.append(self.cloud.open_session.remote(device_id, key, state_ref, self.weights[device_id]))
        return calls

    # ----- one round -----
    def train_period(self, steps: int) -> list[TrainReport]:
        jobs: list[list] = [[] for _ in self.hosts]
        for device_id, edge in sorted(self.edge_of.items()):
            if edge is None:
                continue
            jobs[self.host_of[device_id]].append((device_id, steps, self.endpoints[edge], edge))
        results = ray.get([h.train_many.remote(j) for h, j in zip(self.hosts, jobs, strict=True) if j])
        return [r for batch in results for r in batch]

    def partial_sums(self, groups: dict[str, list[str]]) -> dict[str, WeightedSum]:
        calls = []
        for h, host in enumerate(self.hosts):
            mine = {d for d, hh in self.host_of.items() if hh == h}
            calls.append(host.weighted_sums.remote(restrict(groups, mine)))
        for edge_name, edge in self.edges.items():
            served = {d for d, e in self.edge_of.items() if e == edge_name}
            calls.append(edge.weighted_sums.remote(restrict(groups, served)))
        calls.append(self.cloud.weighted_sums.remote(groups))
        totals = {g: WeightedSum() for g in groups}
        for part in ray.get(calls):
            for g, s in part.items():
                totals[g].merge(s)
        return totals

    def push(self, state: dict[str, np.ndarray], device_ids: list[str]) -> None:
        ref = ray.put(state)
        calls = []
        chosen = set(device_ids)
        for h, host in enumerate(self.hosts):
            mine = [d for d in device_ids if self.host_of[d] == h]
            if mine:
                calls.append(host.load_weights.remote(mine, ref))
        for edge_name, edge in self.edges.items():
            served = [d for d, e in self.edge_of.items() if e == edge_name and d in chosen
                      and self.splits[d].n_tiers >= 2]
            if served:
                calls.append(edge.load_weights.remote(served, ref))
        three = [d for d in device_ids if self.splits[d].n_tiers == 3]
        if three:
            calls.append(self.cloud.load_weights.remote(three, ref))
        ray.get(calls)

    def evaluate(self) -> tuple[float, float]:
        self.eval_model.load_state_dict({k: torch.from_numpy(v) for k, v in self.global_state.items()})
        self.eval_model.eval()
        ds = self.world.dataset
        with torch.no_grad():
            logits = self.eval_model(torch.from_numpy(ds.x_test))
            target = torch.from_numpy(ds.y_test)
            loss = float(F.cross_entropy(logits, target))
            acc = float((logits.argmax(1) == target).float().mean())
        return acc, loss

    def device_param_bytes(self, device_id: str) -> int:
        stage = self.factory.stage(self.splits[device_id], 0)
        return sum(t.numel() * t.element_size() for t in stage.module.state_dict().values())

    def round_clock(self, reports: list[TrainReport]) -> float:
        sc = self.scenario
        times = []
        for r in reports:
            d = self.devices[r.device_id]
            edge = sc.edge(r.edge) if r.edge else sc.edges[0]
            speeds = (d.flops_per_s, edge.flops_per_s, sc.cloud.flops_per_s)
            links = LinkRates(d.bandwidth_mbps * 1e6, edge.cloud_bandwidth_mbps * 1e6)
            times.append(device_round_time(r.device_id, r.edge, r.compute_s, speeds, r.bytes_up, r.bytes_down,
                                           links, self.device_param_bytes(r.device_id), self.host_speed))
        return round_time(times)

    # ----- the run -----
    def run(self) -> dict:
        sc = self.scenario
        out = self.options.out_dir
        out.mkdir(parents=True, exist_ok=True)
        sinks = []
        exporter = None
        if self.options.metrics_addr:
            from orchestrator.metrics import MetricsExporter

            exporter = MetricsExporter(self.options.metrics_addr)
            exporter.start()
            sinks.append(exporter.observe)
        log = EventLog(out / "events.jsonl", sinks)
        t_start = time.perf_counter()
        init_ray(self.options.address)
        self.start_actors()
        log.emit({"event": "run_start", "wall_time_s": 0.0, "virtual_time_s": 0.0, "time_mode": sc.execution.time,
                  "scenario": sc.name, "devices": len(sc.devices), "edges": [e.name for e in sc.edges],
                  "policy": self.policy_name()})
        time_to_target: dict[str, float] | None = None
        accuracy, loss = self.evaluate()
        t_loop = time.perf_counter()
        bar = tqdm(total=sc.training.rounds, desc=sc.name, unit="round", disable=not self.options.progress)
        wall_prev = time.perf_counter()
        for rnd in range(1, sc.training.rounds + 1):
            reports: list[TrainReport] = []
            virtual_round = 0.0
            for period in range(sc.aggregation.cloud_every):
                period_reports = self.train_period(sc.training.local_steps)
                reports.extend(period_reports)
                virtual_round += self.round_clock(period_reports)
                healthy = {r.device_id for r in period_reports if r.finite}
                groups = self.aggregation.groups({d: e for d, e in self.edge_of.items() if d in healthy})
                sums = self.partial_sums(groups)
                if period < sc.aggregation.cloud_every - 1:
                    for edge, state in self.aggregation.edge_models(sums).items():
                        self.push(state, groups[edge])
                else:
                    self.global_state = self.aggregation.global_model(sums)
                    self.push(self.global_state, sorted(self.edge_of))
            accuracy, loss = self.evaluate()
            now = time.perf_counter()
            wall_round = now - wall_prev
            wall_prev = now
            self.virtual_time_s += virtual_round if sc.execution.time == "emulated" else wall_round
            event = self.round_event(rnd, reports, accuracy, loss, now - t_start,
                                     virtual_round if sc.execution.time == "emulated" else wall_round)
            log.emit(event)
            if time_to_target is None and accuracy >= sc.training.target_accuracy:
                time_to_target = {"virtual_time_s": self.virtual_time_s, "wall_time_s": now - t_start, "round": rnd}
            bar.set_postfix(loss=f"{loss:.3f}", acc=f"{accuracy:.3f}", train_loss=f"{event['train_loss']:.3f}")
            bar.update(1)
        bar.close()
        loop_s = time.perf_counter() - t_loop
        wall = time.perf_counter() - t_start
        summary = {
            "scenario": sc.name,
            "final_accuracy": accuracy,
            "final_loss": loss,
            "rounds": sc.training.rounds,
            "wall_time_s": wall,
            "round_loop_s": loop_s,
            "virtual_time_s": self.virtual_time_s,
            "time_mode": sc.execution.time,
            "target_accuracy": sc.training.target_accuracy,
            "time_to_target": time_to_target,
            "bytes_up": {link: v["up"] for link, v in self.bytes_total.items()},
            "bytes_down": {link: v["down"] for link, v in self.bytes_total.items()},
            "devices": len(sc.devices),
            "edges": len(sc.edges),
            "policy": self.policy_name(),
        }
        log.emit({"event": "run_end", "wall_time_s": wall, "virtual_time_s": self.virtual_time_s,
                  "final_accuracy": accuracy, "rounds": sc.training.rounds})
        log.close()
        torch.save({k: torch.from_numpy(v) for k, v in self.global_state.items()}, out / "model.pt")
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if exporter is not None:
            exporter.stop()
        self.stop_actors()
        return summary

    def stop_actors(self) -> None:
        for actor in [self.cloud, *self.edges.values(), *self.hosts]:
            ray.kill(actor)

    def policy_name(self) -> str:
        p = self.scenario.policy
        return f"{p.placement}+rings={p.rings}+{p.handover}+{self.aggregation.name}"

    def round_event(self, rnd: int, reports: list[TrainReport], accuracy: float, loss: float, wall_s: float,
                    duration_s: float) -> dict:
        bytes_round = {link: {"up": 0, "down": 0} for link in LINKS}
        compute = {"device": 0.0, "edge": 0.0, "cloud": 0.0}
        samples, loss_sum = 0, 0.0
        for r in reports:
            for k, link in enumerate(LINKS):
                bytes_round[link]["up"] += r.bytes_up[k]
                bytes_round[link]["down"] += r.bytes_down[k]
            for k, tier in enumerate(compute):
                compute[tier] += r.compute_s[k]
            samples += r.samples
            loss_sum += r.loss_sum
        for link in LINKS:
            for direction in ("up", "down"):
                self.bytes_total[link][direction] += bytes_round[link][direction]
        per_edge: dict[str, int] = {e.name: 0 for e in self.scenario.edges}
        for edge in self.edge_of.values():
            if edge is not None:
                per_edge[edge] += 1
        return {
            "event": "round_end", "round": rnd, "wall_time_s": wall_s, "virtual_time_s": self.virtual_time_s,
            "duration_s": duration_s, "accuracy": accuracy, "loss": loss,
            "train_loss": loss_sum / max(samples, 1), "bytes": bytes_round, "compute_s": compute,
            "devices_per_edge": per_edge, "devices_per_ring": {},
            "splits": {d: self.splits[d].counts() + [0] * (3 - self.splits[d].n_tiers) for d in sorted(self.splits)},
            "samples": samples, "failures": sum(1 for r in reports if not r.finite),
        }


def run_scenario(scenario: Scenario, options: RunOptions) -> dict:
    return Orchestrator(scenario, options).run()
