"""Migration speed on this machine, in one run: raw pyzmq, the authenticated channel, VGG-5's pause.

- raw_zmq_gbps: the best plain pyzmq loopback rate for a 256 MiB buffer sent as 2 MiB frames
  (copy=False, PUSH/PULL, one message per frame): the ceiling.
- migration_gbps: the same bytes as session state through send_state (wire format, Poly1305 MAC,
  replay check, destination arrays filled, authenticated ACK).
- vgg5_overhead_s: VGG-5's server-side session after conv3 (fc1.*, fc2.*, an SGD momentum buffer per
  parameter, counters, numpy and torch RNG state), from the pause at the source to the destination
  holding a verified copy loaded as torch tensors and its authenticated ACK back at the source
  (median of 20 after a warm-up).
Rates take the best of several tries on both sides: this machine's loopback varies by ~1.5x.
Last line: JSON.
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

from tierflow.migration.channel import MigrationReceiver, send_state
from tierflow.tiers.models import InputShape, build_model

ROOT = Path(__file__).resolve().parents[1]

SIZE = 256 * 2**20
FRAME = 2 * 2**20
KEY = b"benchmark-key-32-bytes-long....."
SERVER_LAYERS = ("fc1.", "fc2.")


def raw_zmq_gbps(buf: np.ndarray) -> float:
    ctx = zmq.Context.instance()
    pull = ctx.socket(zmq.PULL)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    push = ctx.socket(zmq.PUSH)
    push.connect(f"tcp://127.0.0.1:{port}")
    view = memoryview(buf).cast("B")
    frames = [view[i:i + FRAME] for i in range(0, len(view), FRAME)]

    def drain():
        got = 0
        while got < len(view):
            got += len(pull.recv(copy=False).buffer)

    t = threading.Thread(target=drain)
    t0 = time.perf_counter()
    t.start()
    for frame in frames:
        push.send(frame, copy=False)
    t.join()
    rate = len(view) / (time.perf_counter() - t0) / 1e9
    push.close(0)
    pull.close(0)
    return rate


def migration_gbps(receiver: MigrationReceiver, buf: np.ndarray) -> float:
    stats = send_state(receiver.endpoint, KEY, "bulk", {"round": 1}, {"w": buf}, timeout_s=60, chunk_bytes=FRAME)
    return stats.bytes_ / stats.duration_s / 1e9


def vgg5_source():
    """The server-side partition after one real SGD step, so momentum buffers hold real values."""
    torch.manual_seed(0)
    model = build_model("vgg5", InputShape(3, 32, 32, 10))
    params = {n: p for n, p in model.named_parameters() if n.startswith(SERVER_LAYERS)}
    opt = torch.optim.SGD(params.values(), lr=0.01, momentum=0.9)
    x = torch.randn(100, 4096)
    loss = torch.nn.functional.cross_entropy(model.fc2(model.relu4(model.fc1(x))), torch.randint(0, 10, (100,)))
    loss.backward()
    opt.step()
    momentum = {n: opt.state[p]["momentum_buffer"] for n, p in params.items()}
    return params, momentum, np.random.default_rng(42)


def export(params, momentum, rng) -> tuple[dict, dict[str, np.ndarray]]:
    """Zero-copy numpy views of the session: the state never goes through pickle."""
    arrays = {f"param/{n}": p.detach().numpy() for n, p in params.items()}
    arrays.update({f"momentum/{n}": m.numpy() for n, m in momentum.items()})
    arrays["rng/torch"] = torch.get_rng_state().numpy()
    meta = {"device_id": "pi4-0", "round": 3, "batch": 17, "samples_trained": 1700,
            "rng/numpy": rng.bit_generator.state}
    return meta, arrays


def make_loader(expected_shapes: dict[str, tuple[int, ...]], loaded: dict):
    def on_session(session_id: str, meta: dict, arrays: dict[str, np.ndarray]) -> None:
        if set(arrays) != set(expected_shapes):
            raise ValueError(f"session {session_id}: arrays {sorted(arrays)} are not VGG-5's server side")
        tensors = {}
        for name, arr in arrays.items():
            if arr.shape != expected_shapes[name]:
                raise ValueError(f"{name}: shape {arr.shape}, expected {expected_shapes[name]}")
            t = torch.from_numpy(np.array(arr))  # own, writable memory
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise ValueError(f"{name}: not finite")
            tensors[name] = t
        rng = np.random.default_rng()
        rng.bit_generator.state = meta["rng/numpy"]
        loaded[session_id] = (int(meta["round"]), int(meta["batch"]), tensors, rng)

    return on_session


def vgg5_overhead_s(repeats: int = 20) -> tuple[float, int]:
    params, momentum, rng = vgg5_source()
    meta0, arrays0 = export(params, momentum, rng)
    loaded: dict = {}
    receiver = MigrationReceiver(KEY, make_loader({k: v.shape for k, v in arrays0.items()}, loaded))
    times, nbytes = [], 0
    try:
        for i in range(repeats + 1):
            t0 = time.perf_counter()  # paused at a batch boundary
            meta, arrays = export(params, momentum, rng)
            stats = send_state(receiver.endpoint, KEY, "pi4-0", meta, arrays, timeout_s=30, chunk_bytes=FRAME)
            elapsed = time.perf_counter() - t0  # ACKed: the destination holds a verified, loaded copy
            if i:
                times.append(elapsed)
            nbytes = stats.bytes_
            rnd, batch, tensors, dest_rng = loaded.pop("pi4-0")
            assert (rnd, batch) == (3, 17)
            assert all(torch.equal(tensors[k], torch.from_numpy(np.array(v))) for k, v in arrays0.items())
            assert dest_rng.random() == np.random.default_rng(42).random()
    finally:
        receiver.close()
    return statistics.median(times), nbytes


def main() -> None:
    buf = np.random.default_rng(0).integers(0, 255, SIZE, dtype=np.uint8)
    receiver = MigrationReceiver(KEY, lambda sid, meta, arrays: None)
    raw, mig = [], []
    try:
        for i in range(5):  # interleaved, so both see the same machine
            raw.append(raw_zmq_gbps(buf))
            mig.append(migration_gbps(receiver, buf))
            print(f"try {i}: raw pyzmq {raw[-1]:.2f} GB/s, migration channel {mig[-1]:.2f} GB/s "
                  f"(256 MiB in 2 MiB frames)", flush=True)
    finally:
        receiver.close()
    best_raw, best_mig = max(raw), max(mig)
    print("VGG-5 server-side session, pause to loaded and ACKed at the destination ...", flush=True)
    overhead, nbytes = vgg5_overhead_s()
    print(f"  {overhead * 1e3:.2f} ms for {nbytes / 2**20:.2f} MiB", flush=True)
    print(json.dumps({"raw_zmq_gbps": round(best_raw, 3), "migration_gbps": round(best_mig, 3),
                      "throughput_ratio": round(best_mig / best_raw, 3), "vgg5_overhead_s": round(overhead, 4),
                      "vgg5_state_bytes": nbytes, "median_raw_zmq_gbps": round(statistics.median(raw), 3),
                      "median_migration_gbps": round(statistics.median(mig), 3)}))


if __name__ == "__main__":
    main()
