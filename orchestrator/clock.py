"""Emulated time: the computation really runs, the clock is virtual (design §5).

What a device's virtual time in a round includes, and nothing else:
- compute: seconds measured on this host for each tier's work, scaled by
  ``host_flops_per_s / tier_flops_per_s`` (the host is calibrated once by a matmul);
- transfers: bytes / bandwidth for activations up and gradients down on each link it used;
- model sync: the device-side parameters down and up once per round on its device-edge link;
- handovers: a migration's measured pause plus its state bytes over the edge-to-edge backhaul.
An edge server's compute is shared: the round cannot end before the edge has done all of its
devices' edge work back to back, and likewise the cloud for every device's cloud layers, so the
round time is the largest of the slowest device, the busiest edge and the cloud.
Resources may vary in time (orchestrator/resources.py); each period is charged at the speeds and
bandwidths of its start, held for the period. Aggregation arithmetic and Ray's own overhead are not
counted.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache

import torch


@contextmanager
def single_threaded() -> Iterator[None]:
    """Run the block on one torch thread, as each tier actor computes: timings here scale to theirs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@lru_cache(maxsize=1)
def host_flops_per_s() -> float:
    """This host's dense float32 speed, single-threaded like the tier actors."""
    n = 256
    a, b = torch.randn(n, n), torch.randn(n, n)
    with single_threaded():
        for _ in range(3):
            a @ b
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 0.2:
            a @ b
            reps += 1
        elapsed = time.perf_counter() - t0
    return 2 * n**3 * reps / elapsed


@dataclass(frozen=True)
class DeviceRoundTime:
    device_id: str
    edge: str | None
    compute_s: tuple[float, float, float]  # virtual, per tier
    transfer_s: float
    sync_s: float

    @property
    def total_s(self) -> float:
        return sum(self.compute_s) + self.transfer_s + self.sync_s


@dataclass(frozen=True)
class LinkRates:
    device_bandwidth_bps: float
    edge_cloud_bandwidth_bps: float


def device_round_time(device_id: str, edge: str | None, measured_compute_s: tuple[float, float, float],
                      speeds_flops_per_s: tuple[float, float, float], bytes_up: tuple[int, int],
                      bytes_down: tuple[int, int], links: LinkRates, sync_bytes: int,
                      host_speed: float, extra_s: float = 0.0) -> DeviceRoundTime:
    compute = tuple(m * host_speed / s for m, s in zip(measured_compute_s, speeds_flops_per_s, strict=True))
    transfer = 8 * (bytes_up[0] + bytes_down[0]) / links.device_bandwidth_bps
    transfer += 8 * (bytes_up[1] + bytes_down[1]) / links.edge_cloud_bandwidth_bps
    sync = 8 * 2 * sync_bytes / links.device_bandwidth_bps
    transfer += extra_s  # e.g. a migration's pause
    return DeviceRoundTime(device_id, edge, compute, transfer, sync)


def round_time(times: Iterable[DeviceRoundTime]) -> float:
    """Slowest device, or the busiest edge, or the cloud, if their shared compute takes longer."""
    times = list(times)
    if not times:
        return 0.0
    edge_busy: dict[str | None, float] = {}
    for t in times:
        edge_busy[t.edge] = edge_busy.get(t.edge, 0.0) + t.compute_s[1]
    cloud_busy = sum(t.compute_s[2] for t in times)  # one cloud serves every device's cloud layers
    return max(max(t.total_s for t in times), max(edge_busy.values()), cloud_busy)
