"""End to end through real Ray tier actors: oracles first, then the quickstart target."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tierflow.orchestrator.aggregation import FlatFedAvg, HierFAVG
from tierflow.orchestrator.runner import RunOptions, run_scenario
from tierflow.orchestrator.scenario import load_scenario, parse_scenario
from tierflow.orchestrator.world import build_world
from tierflow.tiers.aggregate import WeightedSum
from tierflow.tiers.hosts import BatchSampler
from tierflow.tiers.models import build_model
from tierflow.tiers.optim import make_optimizer

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.ray


def small_scenario(model: str, split: list, devices: int = 1, edges: int = 1, schedule: str = "hierfavg",
                   rounds: int = 2, local_steps: int = 3, cloud_every: int = 2) -> dict:
    return {
        "name": "oracle",
        "cloud": {"flops_per_s": 1e12},
        "edges": [{"name": f"e{i}", "position": [1000 * i, 0], "radius_m": 400, "flops_per_s": 1e11}
                  for i in range(edges)],
        "devices": [{"name": f"d{i}", "edge": f"e{i % edges}", "flops_per_s": 1e9, "bandwidth_mbps": 20}
                    for i in range(devices)],
        "model": {"name": model},
        "training": {"rounds": rounds, "local_steps": local_steps, "batch_size": 16, "seed": 4,
                     "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4}},
        "aggregation": {"schedule": schedule, "cloud_every": cloud_every},
        "split": split,
    }


def _final_state(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "model.pt")


def _monolithic(scenario) -> dict[str, torch.Tensor]:
    """The same device's batches, the same optimizer, one plain model in this process."""
    world = build_world(scenario)
    tr = scenario.training
    model = build_model(scenario.model.name, world.dataset.shape, seed=tr.seed)
    model.train()
    opt = make_optimizer(model.parameters(), tr.optimizer)
    idx = world.shards[0]
    x, y = world.dataset.x_train[idx], world.dataset.y_train[idx]
    sampler = BatchSampler(len(y), tr.batch_size, tr.seed * 100_003)
    for _ in range(tr.rounds * tr.local_steps * scenario.aggregation.cloud_every):
        b = sampler.next_indices()
        opt.zero_grad()
        F.cross_entropy(model(torch.from_numpy(x[b])), torch.from_numpy(y[b])).backward()
        opt.step()
    return model.state_dict()


@pytest.mark.parametrize(("model", "split"), [
    ("vgg5", ["pool1"]),
    ("vgg5", ["pool1", "relu4"]),
    ("resnet_small", ["stem_2"]),
    ("resnet_small", ["block1_conv_b", "block3_relu_a"]),  # skip connections cross both cuts
])
def test_tiered_training_equals_monolithic(ray_session, tmp_path, model, split):
    scenario = parse_scenario(small_scenario(model, split), "oracle.yaml")
    run_scenario(scenario, RunOptions(out_dir=tmp_path, progress=False))
    got = _final_state(tmp_path)
    expected = _monolithic(scenario)
    for name, value in expected.items():
        diff = (got[name].double() - value.double()).abs().max().item()
        assert diff <= 1e-5, f"{name}: {diff}"


def test_hierfavg_equals_flat_average_when_k1_k2_are_one(ray_session, tmp_path):
    finals = {}
    for schedule in ("hierfavg", "flat"):
        spec = small_scenario("vgg5", ["pool1"], devices=4, edges=2, schedule=schedule, rounds=2, local_steps=1,
                              cloud_every=1)
        run_scenario(parse_scenario(spec, "h.yaml"), RunOptions(out_dir=tmp_path / schedule, progress=False))
        finals[schedule] = _final_state(tmp_path / schedule)
    for name, value in finals["flat"].items():
        assert (finals["hierfavg"][name].double() - value.double()).abs().max().item() <= 1e-5, name


def test_hierarchical_sums_equal_flat_average():
    rng = np.random.default_rng(0)
    models = [({"w": rng.standard_normal(5).astype(np.float32)}, float(rng.integers(1, 50))) for _ in range(6)]
    edge_of = {f"d{i}": f"e{i % 3}" for i in range(6)}
    sums: dict[str, WeightedSum] = {}
    for i, (state, weight) in enumerate(models):
        sums.setdefault(edge_of[f"d{i}"], WeightedSum()).add(state, weight)
    flat = WeightedSum()
    for state, weight in models:
        flat.add(state, weight)
    np.testing.assert_allclose(HierFAVG().global_model(sums)["w"], FlatFedAvg().global_model({"all": flat})["w"],
                               rtol=1e-6, atol=1e-7)


def test_quickstart_reaches_target_accuracy(ray_session, tmp_path):
    scenario = load_scenario(ROOT / "examples" / "quickstart.yaml")
    summary = run_scenario(scenario, RunOptions(out_dir=tmp_path, progress=False))
    assert summary["final_accuracy"] >= 0.9
    saved = json.loads((tmp_path / "summary.json").read_text())
    for key in ("final_accuracy", "rounds", "wall_time_s", "bytes_up", "bytes_down"):
        assert key in saved
    assert saved["bytes_up"]["device-edge"] > 0 and saved["bytes_down"]["device-edge"] > 0
    assert saved["bytes_up"]["edge-cloud"] > 0  # phone-0 runs a 3-tier split
    # Peak memory of the driver and of every actor, each a process that has imported torch (> 50 MiB).
    assert set(saved["peak_rss_mb"]) == {"driver", "cloud", *(f"edge:{e.name}" for e in scenario.edges),
                                         *(f"devices:{i}" for i in range(scenario.execution.device_hosts))}
    assert all(50 < mb < 8192 for mb in saved["peak_rss_mb"].values()), saved["peak_rss_mb"]
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    rounds = [e for e in events if e["event"] == "round_end"]
    assert len(rounds) == scenario.training.rounds
    assert rounds[-1]["splits"]["phone-0"][2] > 0
    assert set(_final_state(tmp_path)) == set(build_model("vgg5", build_world(scenario).dataset.shape).state_dict())
