"""Synthetic orchestrator events for tests: a realistic run, deterministic from a seed.

The stream is built from the event records (orchestrator/event_types.py), so it follows the
schema the round loop emits: a run_start, one round_end per round, handovers with their
migrations, failures of several kinds, a replan, and a run_end. Timestamps only move forward.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterable, Mapping
from pathlib import Path

from tierflow.orchestrator import event_types as ev

# A 9-node model graph; a split is (device nodes, edge nodes, cloud nodes).
N_NODES = 9
SPLIT_CHOICES = ((2, 7, 0), (3, 6, 0), (3, 4, 2), (5, 4, 0))


def sample_records(
    rounds: int = 8,
    edges: tuple[str, ...] = ("edge-a", "edge-b", "edge-c"),
    devices: int = 6,
    seed: int = 0,
    time_mode: str = "emulated",
    migration_policy: str = "migrate",
) -> list[ev.Event]:
    """A run of ``rounds`` rounds with a handover and migration every third round.

    Round 3 also has a device failure, round 5 a failed migration (with its failure event) and a
    poisoned update, round 4 a replan; every even round a ring pass, the one in round 6 failed.
    """
    assert rounds >= 1 and devices >= 2 and len(edges) >= 2
    rng = random.Random(seed)
    device_ids = [f"dev-{i}" for i in range(devices)]
    edge_of = {d: edges[i % len(edges)] for i, d in enumerate(device_ids)}
    split_of = {d: list(SPLIT_CHOICES[i % 2]) for i, d in enumerate(device_ids)}
    ring_of = {d: str(i % 2) for i, d in enumerate(device_ids)}

    wall = 0.0
    virtual = 0.0
    events: list[ev.Event] = [
        ev.RunStart(wall_time_s=0.0, virtual_time_s=0.0, time_mode=time_mode, scenario="sample-city",
                    devices=devices, edges=list(edges), policy=migration_policy)
    ]
    last_accuracy = 0.0
    for r in range(1, rounds + 1):
        duration = 20.0 + 10.0 * rng.random()
        wall_step = 0.5 + 0.2 * rng.random()
        if time_mode == "real":
            wall_step = duration
        mid = virtual + duration / 2

        if r % 3 == 0 or r == 5:
            mover = device_ids[r % devices]
            src = edge_of[mover]
            dst = edges[(edges.index(src) + 1) % len(edges)]
            events.append(ev.Handover(round=r, virtual_time_s=mid, device=mover, from_edge=src, to_edge=dst))
            ok = r != 5
            events.append(
                ev.Migration(round=r, virtual_time_s=mid + 0.4, device=mover, from_edge=src, to_edge=dst,
                             policy=migration_policy, bytes=4_000_000 + 100_000 * r,
                             wall_duration_s=0.05 + 0.01 * r, ok=ok, charged_s=0.1 if ok else 0.0)
            )
            if not ok:
                events.append(ev.Failure(round=r, virtual_time_s=mid + 0.5, failure_kind="migration", entity=mover,
                                         detail=f"{dst} did not acknowledge the session"))
            edge_of[mover] = dst
        if r % 2 == 0:  # ring rounds: the ring's session follows its members across edges
            ok = r != 6
            events.append(
                ev.RingPass(round=r, virtual_time_s=mid - 0.3, ring="ring:0", device=device_ids[0],
                            from_edge=edges[0], to_edge=edges[1], bytes=2_000_000 + 10_000 * r,
                            wall_duration_s=0.02, ok=ok, charged_s=0.07 if ok else 0.0)
            )
            if not ok:
                events.append(ev.Failure(round=r, virtual_time_s=mid - 0.2, failure_kind="ring_pass",
                                         entity=edges[1], detail="ring:0: no acknowledgement"))
        if r == 3:
            events.append(ev.Failure(round=r, virtual_time_s=mid + 1.0, failure_kind="device", entity=device_ids[1],
                                     detail="actor died"))
        if r == 5:
            events.append(ev.Failure(round=r, virtual_time_s=mid + 1.5, failure_kind="poisoned_update",
                                     entity=device_ids[2], detail="non-finite weights"))
        if r == 4:
            changed = device_ids[:2]
            for d in changed:
                split_of[d] = list(SPLIT_CHOICES[2 + device_ids.index(d) % 2])
            events.append(ev.Replan(round=r, virtual_time_s=mid, changed=len(changed), adopted=True,
                                    predicted_before_s=round(duration, 6), predicted_after_s=round(0.9 * duration, 6),
                                    switch_s=0.2))

        virtual += duration
        wall += wall_step
        if time_mode == "real":
            virtual = wall
        failures = sum(1 for e in events if isinstance(e, ev.Failure) and e.round == r)
        n_dev = {e: 0 for e in edges}
        for d in device_ids:
            n_dev[edge_of[d]] += 1
        n_ring: dict[str, int] = {}
        for d in device_ids:
            n_ring[ring_of[d]] = n_ring.get(ring_of[d], 0) + 1
        samples = 100 * (devices - (1 if r == 3 else 0))
        act_up = sum(10_000 * s[0] for s in split_of.values()) * 10
        cloud_up = sum(8_000 * (s[2] > 0) for s in split_of.values()) * 10
        charged = round(duration if time_mode == "emulated" else wall_step, 6)
        last_accuracy = round(0.95 - 0.85 * math.exp(-r / 3.0), 6)
        events.append(
            ev.RoundEnd(
                round=r,
                wall_time_s=round(wall, 6),
                virtual_time_s=round(virtual, 6),
                duration_s=charged,
                accuracy=last_accuracy,
                loss=round(2.3 * math.exp(-r / 4.0) + 0.1, 6),
                train_loss=round(2.2 * math.exp(-r / 4.0) + 0.08, 6),
                bytes={
                    "device-edge": {"up": act_up, "down": act_up},
                    "edge-cloud": {"up": cloud_up + 50_000, "down": cloud_up + 50_000},
                },
                compute_s={
                    "device": round(sum(1.5 * s[0] for s in split_of.values()), 6),
                    "edge": round(sum(0.2 * s[1] for s in split_of.values()), 6),
                    "cloud": round(sum(0.05 * s[2] for s in split_of.values()) + 0.01, 6),
                },
                wall_compute_s={"device": round(0.3 * wall_step, 6), "edge": round(0.1 * wall_step, 6),
                                "cloud": round(0.01 * wall_step, 6)},
                devices_per_edge=n_dev,
                devices_per_ring=n_ring,
                splits={d: list(s) for d, s in split_of.items()},
                samples=samples,
                failures=failures,
                predicted_s=round(0.98 * charged, 6),
                charged_s=charged,
            )
        )
    events.append(ev.RunEnd(wall_time_s=round(wall + 0.1, 6), virtual_time_s=round(virtual, 6),
                            final_accuracy=last_accuracy, rounds=rounds))
    return events


def sample_events(**kw) -> list[dict]:
    """:func:`sample_records` as the JSON objects the log holds (each a fresh dict, free to change)."""
    return [json.loads(json.dumps(e.to_dict())) for e in sample_records(**kw)]


def write_event_log(path: Path, events: Iterable[Mapping | ev.EventRecord]) -> Path:
    """Write events (records, or their objects) as JSON lines, the way the orchestrator does."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for e in events:
            f.write(json.dumps(e if isinstance(e, Mapping) else e.to_dict(), sort_keys=True) + "\n")
    return path
