"""Migration speed on this machine, in one run: raw pyzmq, our authenticated channel, and VGG-5's pause.

- raw_zmq_gbps: the best plain pyzmq loopback rate for a 256 MiB buffer sent as 2 MiB frames
  (copy=False, PUSH/PULL): the ceiling.
- migration_gbps: the same bytes through send_state (wire format + HMAC-SHA256 + ACK).
- vgg5_overhead_s: end to end for VGG-5's server-side session (split after pool2: conv3, fc1, fc2 with
  SGD momentum), from the pause at the source to the destination holding a verified, loaded session
  and its authenticated ACK back at the source (median of 5).
Last line: JSON.
"""

from __future__ import annotations

import json
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import zmq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from migration.channel import MigrationReceiver, send_state  # noqa: E402
from tiers.models import InputShape  # noqa: E402
from tiers.optim import OptimizerSpec  # noqa: E402
from tiers.session import Session, SplitKey, StageFactory  # noqa: E402
from tiers.split import assignment_from_cuts  # noqa: E402
from tiers.step import run_local_step  # noqa: E402

SIZE = 256 * 2**20
FRAME = 2 * 2**20
KEY = b"benchmark-key-32-bytes-long....."


def raw_zmq_gbps(buf: np.ndarray, repeats: int = 3) -> float:
    ctx = zmq.Context.instance()
    pull = ctx.socket(zmq.PULL)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    push = ctx.socket(zmq.PUSH)
    push.connect(f"tcp://127.0.0.1:{port}")
    view = memoryview(buf).cast("B")
    frames = [view[i:i + FRAME] for i in range(0, len(view), FRAME)]
    best = 0.0
    def drain():
        got = 0
        while got < len(view):
            got += sum(len(f) for f in pull.recv_multipart(copy=False))

    for _ in range(repeats):
        t = threading.Thread(target=drain)
        t0 = time.perf_counter()
        t.start()
        push.send_multipart(frames, copy=False)
        t.join()
        best = max(best, len(view) / (time.perf_counter() - t0) / 1e9)
    push.close(0)
    pull.close(0)
    return best


def migration_gbps(buf: np.ndarray, repeats: int = 3) -> float:
    receiver = MigrationReceiver(KEY, lambda sid, meta, arrays: None)
    best = 0.0
    try:
        for i in range(repeats):
            stats = send_state(receiver.endpoint, KEY, f"s{i}", {"round": 1}, {"w": buf}, timeout_s=60,
                               chunk_bytes=FRAME)
            best = max(best, stats.bytes_ / stats.duration_s / 1e9)
    finally:
        receiver.close()
    return best


def vgg5_overhead_s(repeats: int = 5) -> tuple[float, int]:
    shape = InputShape(3, 32, 32, 10)
    factory = StageFactory("vgg5", shape)
    opt = OptimizerSpec("sgd", 0.01, 0.9)
    key = SplitKey.of(assignment_from_cuts(factory._gm, ["pool2"]), 2)
    runners = [factory.runner(key, 0, opt), factory.runner(key, 1, opt)]
    rng = np.random.default_rng(0)
    run_local_step(runners, rng.standard_normal((100, 3, 32, 32)).astype(np.float32),
                   rng.integers(0, 10, 100))  # momentum buffers exist after one step
    source = Session("pi4-0", 1, key, runners[1], 5000.0, steps_done=17)
    dest_factory = StageFactory("vgg5", shape)
    loaded = {}

    def on_session(sid, meta, arrays):
        loaded[sid] = Session.from_export(meta, arrays, dest_factory, opt)

    receiver = MigrationReceiver(KEY, on_session)
    times, nbytes = [], 0
    try:
        for i in range(repeats):
            t0 = time.perf_counter()
            meta, arrays = source.export()
            stats = send_state(receiver.endpoint, KEY, "pi4-0", meta, arrays, timeout_s=30)
            times.append(time.perf_counter() - t0)
            nbytes = stats.bytes_
            assert loaded.pop("pi4-0").steps_done == 17, i
    finally:
        receiver.close()
    return statistics.median(times), nbytes


def main() -> None:
    buf = np.random.default_rng(0).integers(0, 255, SIZE, dtype=np.uint8)
    print("raw pyzmq loopback, 256 MiB in 2 MiB frames ...", flush=True)
    raw = raw_zmq_gbps(buf)
    print(f"  {raw:.2f} GB/s", flush=True)
    print("authenticated migration channel, same bytes ...", flush=True)
    mig = migration_gbps(buf)
    print(f"  {mig:.2f} GB/s", flush=True)
    print("VGG-5 server-side session, pause to running at the destination ...", flush=True)
    overhead, nbytes = vgg5_overhead_s()
    print(f"  {overhead * 1e3:.1f} ms for {nbytes / 2**20:.2f} MiB", flush=True)
    print(json.dumps({"raw_zmq_gbps": round(raw, 3), "migration_gbps": round(mig, 3),
                      "throughput_ratio": round(mig / raw, 3), "vgg5_overhead_s": round(overhead, 4),
                      "vgg5_state_bytes": nbytes, "fedfly_reported_overhead_s": 2.0,
                      "overhead_ratio_vs_fedfly": round(overhead / 2.0, 4)}))


if __name__ == "__main__":
    main()
