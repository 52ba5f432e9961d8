"""Flower's side of benchmarks/flower_peer.py: FedAvg under Flower's Ray simulation (run with Flower's venv).

It reads the arrays file benchmarks/flower_peer.py wrote (data, each client's partition, the initial
weights), so both sides train the same model from the same start on the same shards. A ClientApp
trains one local epoch (DataLoader batches, shuffled) with a fresh SGD each round, as Flower's PyTorch
examples do; the ServerApp runs Flower's FedAvg with a centralised evaluation of the global model on
the held-out set every round (what tierflow does; federated evaluation is off). Last line: JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.simulation import run_simulation
from torch import nn


class VGG5(nn.Module):
    """The VGG-5 of tierflow's tiers/models.py (same layers and names, so the same state dict)."""

    def __init__(self, channels: int, side: int, classes: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.conv3 = nn.Conv2d(64, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * (side // 4) * (side // 4), 128)
        self.fc2 = nn.Linear(128, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(F.relu(self.conv3(x)), 1)
        return self.fc2(F.relu(self.fc1(x)))


def _load(path: str) -> dict[str, np.ndarray]:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def _model(data: dict[str, np.ndarray]) -> VGG5:
    _, c, h, _ = data["x_train"].shape
    model = VGG5(c, h, int(max(data["y_train"].max(), data["y_test"].max())) + 1)
    model.load_state_dict({k[2:]: torch.from_numpy(v) for k, v in data.items() if k.startswith("w/")})
    return model


def build_apps(path: str, rounds: int, batch: int, lr: float) -> tuple[ServerApp, ClientApp, int, dict]:
    data = _load(path)
    n_clients = len(data["shards"])
    client_app, server_app = ClientApp(), ServerApp()
    record: dict = {}

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        torch.set_num_threads(1)
        idx = data["shards"][int(context.node_config["partition-id"])]
        x, y = torch.from_numpy(data["x_train"][idx]), torch.from_numpy(data["y_train"][idx])
        model = _model(data)
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch, shuffle=True)
        loss_sum = 0.0
        for xb, yb in loader:  # one local epoch
            opt.zero_grad()
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()
            loss_sum += float(loss) * len(yb)
        content = RecordDict({"arrays": ArrayRecord(model.state_dict()),
                              "metrics": MetricRecord({"train_loss": loss_sum / len(y), "num-examples": len(y)})})
        return Message(content=content, reply_to=msg)

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        model = _model(data)
        x_test, y_test = torch.from_numpy(data["x_test"]), torch.from_numpy(data["y_test"])

        def central(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            model.load_state_dict(arrays.to_torch_state_dict())
            model.eval()
            with torch.no_grad():
                logits = model(x_test)
            acc = float((logits.argmax(1) == y_test).float().mean())
            record.setdefault("accuracy", []).append(acc)
            record.setdefault("t", []).append(time.perf_counter())
            return MetricRecord({"accuracy": acc, "loss": float(F.cross_entropy(logits, y_test))})

        strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=n_clients,
                          min_available_nodes=n_clients)
        strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()), num_rounds=rounds,
                       evaluate_fn=central)

    return server_app, client_app, n_clients, record


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("arrays")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--client-cpus", type=float, default=1.0,
                    help="Ray CPUs per client (Flower's default is 2: one client at a time on 2 cores)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    server_app, client_app, n_clients, record = build_apps(args.arrays, args.rounds, args.batch, args.lr)
    t0 = time.perf_counter()
    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=n_clients,
                   backend_config={"client_resources": {"num_cpus": args.client_cpus, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": os.cpu_count() or 2, "include_dashboard": False}})
    accs = record.get("accuracy", [])
    if len(accs) != args.rounds + 1:  # evaluate_fn runs before round 1 and after each round
        raise SystemExit(f"expected {args.rounds + 1} centralised evaluations, got {len(accs)}")
    t = record["t"]
    print(json.dumps({"accuracy": accs[-1], "accuracies": accs, "rounds_s": round(t[-1] - t[0], 3),
                      "simulation_s": round(time.perf_counter() - t0, 3)}))


if __name__ == "__main__":
    main()
