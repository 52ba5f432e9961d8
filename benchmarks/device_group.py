"""Device-steps per second, vectorized (a DeviceGroup) against looped (DeviceHost.train, device by device).

Both train the same devices, on their own shards and samplers, for the same device-only steps, on one
thread like a device-host actor. Also prints what choose_engine picks for each case. Rates are by wall
clock and by this process's CPU time: on a shared machine the second is the steadier. Last line: JSON.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from tierflow.tiers.device_group import DeviceGroup, DeviceState, choose_engine, draw_batch
from tierflow.tiers.hosts import DeviceHost, DeviceSetup
from tierflow.tiers.models import InputShape, build_model
from tierflow.tiers.optim import OptimizerSpec
from tierflow.tiers.session import SplitKey, partition_state
from tierflow.tiers.split import assignment_from_cuts, trace

OPT = OptimizerSpec("sgd", lr=0.05, momentum=0.9, weight_decay=1e-4)
TOKEN = "0123456789abcdef0123456789abcdef"  # the host's data-plane client wants one; unused here
BATCH = 8
SHARD = 64


def _host(model: str, shape: InputShape, n_devices: int) -> tuple[DeviceHost, SplitKey]:
    key = SplitKey.of(assignment_from_cuts(trace(build_model(model, shape)), []), 1)
    rng = np.random.default_rng(0)
    host = DeviceHost("bench", model, shape, OPT, threads=1, token=TOKEN)
    setups = [DeviceSetup(f"d{i}", rng.standard_normal((SHARD, shape.channels, shape.height, shape.width))
                          .astype(np.float32), rng.integers(0, shape.num_classes, SHARD).astype(np.int64), BATCH, i)
              for i in range(n_devices)]
    host.add_devices(setups)
    state = {k: v.numpy() for k, v in build_model(model, shape).state_dict().items()}
    for s in setups:
        host.configure(s.device_id, key, state)
    return host, key


def _timed(fn, device_steps: int) -> tuple[float, float]:
    """Device-steps per second of ``fn()``: by wall clock, and by CPU time."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return device_steps / (time.perf_counter() - t0), device_steps / (time.process_time() - c0)


def looped(model: str, shape: InputShape, n_devices: int, steps: int) -> tuple[float, float]:
    host, _ = _host(model, shape, n_devices)
    for d in host.devices:  # warm-up: one step each
        host.train(d, 1, None, None)

    def run() -> None:
        for d in host.devices:
            host.train(d, steps, None, None)

    return _timed(run, n_devices * steps)


def vectorized(model: str, shape: InputShape, n_devices: int, steps: int) -> tuple[float, float]:
    host, key = _host(model, shape, n_devices)
    ids = list(host.devices)
    states = {d: DeviceState(partition_state(host.devices[d].session.runner), host.optimizer_state(d)) for d in ids}
    group = DeviceGroup(host.factory, key, OPT, states)
    devices = [host.devices[d] for d in ids]
    group.step([draw_batch(devices)])  # warm-up
    # Drawing the batches is part of the step, as it is of DeviceHost.train.
    return _timed(lambda: group.step([draw_batch(devices) for _ in range(steps)]), n_devices * steps)


CASES = {  # name: model, shape, devices, steps
    "mlp_8x8": ("mlp", InputShape(1, 8, 8, 10), 1000, 5),
    "vgg5_8x8": ("vgg5", InputShape(1, 8, 8, 10), 200, 3),
    "vgg5_32x32": ("vgg5", InputShape(3, 32, 32, 10), 32, 3),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the devices (a smoke run)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out: dict[str, float | str] = {}
    for name, (model, shape, n, steps) in CASES.items():
        n = max(4, n // 10) if args.quick else n
        (loop_rate, loop_cpu), (vec_rate, vec_cpu) = looped(model, shape, n, steps), vectorized(model, shape, n, steps)
        host, key = _host(model, shape, 1)
        engine = choose_engine(host.factory, key, OPT, BATCH, n)
        print(f"{name}: {n} devices of batch {BATCH}: looped {loop_rate:.0f} device-steps/s, vectorized "
              f"{vec_rate:.0f} ({vec_rate / loop_rate:.2f}x; by CPU time {vec_cpu / loop_cpu:.2f}x, "
              f"{1e6 / vec_cpu:.0f} against {1e6 / loop_cpu:.0f} us per device-step); choose_engine -> {engine}",
              flush=True)
        out[f"{name}_ratio"] = round(vec_rate / loop_rate, 2)
        out[f"{name}_cpu_ratio"] = round(vec_cpu / loop_cpu, 2)
        out[f"{name}_looped_steps_per_s"] = round(loop_rate, 1)
        out[f"{name}_vectorized_steps_per_s"] = round(vec_rate, 1)
        out[f"{name}_engine"] = engine
    print(json.dumps(out))


if __name__ == "__main__":
    main()
