"""Start-up timing (orchestrator/startup.py): laps that add up, and a process age the OS vouches for."""

from __future__ import annotations

import sys
import time

import pytest

from tierflow.orchestrator.startup import StartupTimes, process_age_s

T_IMPORTED = time.perf_counter()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the process's start time is read from /proc")
def test_process_age_is_the_time_since_this_process_started():
    age = process_age_s()
    assert age is not None
    # This process imported this module after it started, and /proc counts in ticks of 10 ms.
    assert age >= time.perf_counter() - T_IMPORTED - 0.02
    assert age < 3600


def test_laps_are_contiguous_and_add_up_to_the_total():
    times = StartupTimes()
    times.begin()
    t0 = time.perf_counter()
    time.sleep(0.02)
    times.lap("world_s")
    time.sleep(0.01)
    times.lap("ray_s")
    times.lap("ray_s")  # a second lap of a phase adds to it
    elapsed = time.perf_counter() - t0
    assert times.world_s >= 0.02 and times.ray_s >= 0.01
    assert times.world_s + times.ray_s == pytest.approx(elapsed, abs=0.005)
    doc = times.to_json()
    assert "_t" not in doc and set(doc) == {"before_s", "world_s", "ray_s", "actors_s", "open_s", "first_eval_s",
                                            "total_s"}
    if doc["before_s"] is not None:
        assert doc["total_s"] == pytest.approx(doc["before_s"] + times.world_s + times.ray_s)
