"""What authenticating the data plane costs per training step, against the unauthenticated protocol.

Three transports carry the same steps, interleaved in one run so the machine's noise hits all alike:

- ``plain``: the protocol before authentication (the run token as a JSON field, one frame per array);
- ``mac``: tierflow's data plane (tiers/frames.py: Poly1305 per message, replay counter, 4 MiB chunks);
- ``curve``: the plain protocol over libzmq's CURVE (encrypted and authenticated by libzmq), for scale.

A step is a real split-training step of the quickstart (VGG-5 cut at pool1, batch 32, device forward
and backward here, the edge's layers behind the data plane), and, as the worst case, bare round
trips of the same activation bytes (and of 64 times as many) with no compute.
Last line: JSON with the ratios to ``plain``.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from pathlib import Path

import numpy as np
import torch
import zmq

from tierflow.migration.wire import decode_state, encode_state
from tierflow.orchestrator.scenario import load_scenario
from tierflow.orchestrator.world import build_world
from tierflow.tiers.dataplane import DataPlaneClient, DataPlaneServer
from tierflow.tiers.hosts import DeviceHost, DeviceSetup, EdgeServer

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "0123456789abcdef0123456789abcdef"
ONE_FRAME = 1 << 62


class PlainServer:
    """The data plane as it was: token checked as a JSON field, nothing authenticated."""

    def __init__(self, handler, token: str, curve: tuple[bytes, bytes] | None = None):
        self._handler, self._token = handler, token
        self._sock = zmq.Context.instance().socket(zmq.ROUTER)
        self._sock.linger = 0
        if curve is not None:
            self._sock.curve_secretkey, self._sock.curve_publickey = curve[1], curve[0]
            self._sock.curve_server = True
        self.endpoint = f"tcp://127.0.0.1:{self._sock.bind_to_random_port('tcp://127.0.0.1')}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self._sock.rcvtimeo = 100
        while not self._stop.is_set():
            try:
                frames = self._sock.recv_multipart(copy=False)
            except zmq.Again:
                continue
            meta, arrays = decode_state(frames[2:])
            assert meta.pop("token") == self._token
            reply = encode_state(*self._handler(meta, arrays), chunk_bytes=ONE_FRAME)
            self._sock.send_multipart([*frames[:2], *reply], copy=False)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._sock.close(0)


class PlainClient:
    def __init__(self, token: str, curve_server_key: bytes | None = None):
        self._token = token
        self._curve = curve_server_key
        self._socks: dict[str, zmq.Socket] = {}

    def request(self, endpoint: str, meta: dict, arrays) -> tuple[dict, dict]:
        sock = self._socks.get(endpoint)
        if sock is None:
            sock = self._socks[endpoint] = zmq.Context.instance().socket(zmq.REQ)
            sock.linger = 0
            if self._curve is not None:
                sock.curve_publickey, sock.curve_secretkey = zmq.curve_keypair()
                sock.curve_serverkey = self._curve
            sock.connect(endpoint)
        sock.send_multipart(encode_state({**meta, "token": self._token}, arrays, chunk_bytes=ONE_FRAME), copy=False)
        meta, out = decode_state(sock.recv_multipart(copy=False))
        if "error" in meta:
            raise RuntimeError(meta["error"])
        return meta, out

    def close(self) -> None:
        for s in self._socks.values():
            s.close(0)


def transports(handler):
    """(name, server, client) for each transport, serving ``handler``."""
    public, secret = zmq.curve_keypair()
    return [
        ("plain", PlainServer(handler, TOKEN), PlainClient(TOKEN)),
        ("mac", DataPlaneServer(handler, TOKEN), DataPlaneClient(TOKEN)),
        ("curve", PlainServer(handler, TOKEN, (public, secret)), PlainClient(TOKEN, public)),
    ]


def training_steps(reps: int, steps: int) -> dict[str, list[float]]:
    """Seconds per real split step, per transport: device here, the edge's layers behind the data plane."""
    torch.set_num_threads(1)
    sc = load_scenario(ROOT / "examples" / "quickstart.yaml")
    world = build_world(sc)
    d = sc.devices[0].name
    key, shard = world.splits[d], world.shards[0]
    opt = sc.training.optimizer
    edge = EdgeServer("edge", sc.model.name, world.dataset.shape, opt, token=TOKEN)
    edge.open_session(d, key, world.initial_state, float(len(shard)))
    host = DeviceHost("host", sc.model.name, world.dataset.shape, opt, token=TOKEN)
    host.add_devices([DeviceSetup(d, world.dataset.x_train[shard], world.dataset.y_train[shard],
                                  sc.training.batch_size, 0)])
    host.configure(d, key, world.initial_state)
    return _interleave(edge._on_message, lambda client, endpoint: _train(host, client, d, endpoint, steps),
                       reps, steps)


def _train(host: DeviceHost, client, device_id: str, endpoint: str, steps: int) -> None:
    host.client = client
    host.train(device_id, steps, endpoint, "edge")


def round_trips(reps: int, steps: int, shape: tuple[int, ...]) -> dict[str, list[float]]:
    """Seconds per bare round trip of activations of ``shape`` there and back (no compute: the worst case)."""
    acts = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)

    def echo(meta, arrays):
        return {"n": 1}, {"g0": arrays["a0"]}

    def go(client, endpoint):
        for _ in range(steps):
            client.request(endpoint, {"op": "step"}, {"a0": acts})

    return _interleave(echo, go, reps, steps)


def _interleave(handler, work, reps: int, steps: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    ts = transports(handler)
    try:
        for _, server, client in ts:  # warm up: connections, handshakes, first allocations
            work(client, server.endpoint)
        for rep in range(reps):
            for name, server, client in ts[rep % len(ts):] + ts[:rep % len(ts)]:  # no transport always first
                t0 = time.perf_counter()
                work(client, server.endpoint)
                out.setdefault(name, []).append((time.perf_counter() - t0) / steps)
    finally:
        for _, server, client in ts:
            client.close()
            server.close()
    return out


def main() -> None:
    results = {
        "training_step": training_steps(reps=15, steps=10),
        # the quickstart's activations at pool1 (32 x 32 x 4 x 4 float32, 64 KiB), and 64 times larger
        "round_trip_64KiB": round_trips(reps=15, steps=50, shape=(32, 32, 4, 4)),
        "round_trip_4MiB": round_trips(reps=9, steps=10, shape=(32, 32, 32, 32)),
    }
    # On a shared machine other work only ever adds time: the fastest repetition is the estimate,
    # the median is shown for the spread.
    summary: dict = {}
    for kind, per in results.items():
        best = {name: min(v) for name, v in per.items()}
        for name, v in per.items():
            print(f"{kind:<17} {name:<6} best {best[name] * 1e3:8.3f} ms per step, median "
                  f"{statistics.median(v) * 1e3:8.3f} ({len(v)} repetitions)")
        summary[kind] = {"best_ms_per_step": {k: round(v * 1e3, 4) for k, v in best.items()},
                         "mac_over_plain": round(best["mac"] / best["plain"], 4),
                         "curve_over_plain": round(best["curve"] / best["plain"], 4)}
    summary["ratio_authenticated_over_plain"] = summary["training_step"]["mac_over_plain"]
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
