"""Mobility models: pure functions of time, checked against positions computed independently."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tierflow.migration.errors import MobilityInputError
from tierflow.migration.mobility import RandomWaypoint, StaticMobility, TraceMobility


def waypoint_oracle(seed, index, start, area, speed, pause, t):
    """Where device ``index`` is at ``t``, recomputed from the documented draw order alone."""
    rng = np.random.default_rng([seed, index])
    here = start if start is not None else (rng.uniform(0, area[0]), rng.uniform(0, area[1]))
    clock = 0.0
    while True:
        target = (rng.uniform(0, area[0]), rng.uniform(0, area[1]))
        v = rng.uniform(*speed)
        leg = math.dist(here, target) / v
        if t < clock + leg:
            f = (t - clock) / leg
            return (here[0] + f * (target[0] - here[0]), here[1] + f * (target[1] - here[1]))
        clock += leg
        if t < clock + pause:
            return target
        clock += pause
        here = target


def test_static_positions_do_not_move():
    m = StaticMobility({"a": (1, 2)})
    assert m.positions(0) == m.positions(1e6) == {"a": (1.0, 2.0)}


def test_random_waypoint_matches_an_independent_recomputation():
    area, speed, pause = (800.0, 500.0), (2.0, 9.0), 4.0
    rw = RandomWaypoint(["d0", "d1", "d2"], area_m=area, speed_mps=speed, pause_s=pause, seed=11,
                        start={"d1": (10.0, 20.0)})
    times = [0.0, 0.5, 3.0, 77.7, 400.0, 123.4, 1999.0, 5.0]  # out of order on purpose
    for t in times:
        got = rw.positions(t)
        for i, d in enumerate(["d0", "d1", "d2"]):
            want = waypoint_oracle(11, i, (10.0, 20.0) if d == "d1" else None, area, speed, pause, t)
            assert got[d] == pytest.approx(want, abs=1e-9), (d, t)
            assert 0 <= got[d][0] <= area[0] and 0 <= got[d][1] <= area[1]


def test_random_waypoint_is_a_pure_function_of_time():
    kw = {"area_m": (1000, 1000), "speed_mps": (5, 15), "pause_s": 3, "seed": 7}
    a, b = RandomWaypoint(["x", "y"], **kw), RandomWaypoint(["x", "y"], **kw)
    late = a.positions(900.0)
    forward = [b.positions(float(t)) for t in range(0, 901)]
    assert forward[-1] == late and a.positions(10.0) == forward[10]
    for p, q in zip(forward, forward[1:], strict=False):  # never faster than the top speed
        assert all(math.dist(p[d], q[d]) <= 15 + 1e-9 for d in p)
    assert RandomWaypoint(["x", "y"], **{**kw, "seed": 8}).positions(900.0) != late


@pytest.mark.parametrize("kw", [
    {"area_m": (0, 10)}, {"speed_mps": (0, 1)}, {"speed_mps": (3, 2)}, {"pause_s": -1}, {"pause_s": math.inf},
])
def test_random_waypoint_refuses_bad_parameters(kw):
    args = {"area_m": (10, 10), "speed_mps": (1, 2), "pause_s": 0, "seed": 0, **kw}
    with pytest.raises(MobilityInputError):
        RandomWaypoint(["d"], **args)


def _trace(tmp_path, text):
    return TraceMobility.from_text(text, str(tmp_path / "trace.csv"))


def test_trace_interpolates_and_holds(tmp_path):
    m = _trace(tmp_path, "time_s,device,x,y\n10,a,0,0\n20,a,100,50\n5,b,7,7\n")
    assert m.positions(0) == {"a": (0, 0), "b": (7, 7)}  # before the first sample: hold
    assert m.positions(15) == {"a": (50, 25), "b": (7, 7)}
    assert m.positions(99)["a"] == (100, 50)  # after the last: hold


@pytest.mark.parametrize(("text", "message"), [
    ("t,device,x,y\n", ":1: expected the header"),
    ("", ":1: expected the header"),
    ("time_s,device,x,y\n0,d,1,oops\n", ":2: expected numbers"),
    ("time_s,device,x,y\n0,d,1,nan\n", ":2: expected finite numbers"),
    ("time_s,device,x,y\n5,d,1,1\n4,d,1,1\n", ":3: time_s 4.0 goes back"),
    ("time_s,device,x,y\n5,d,1\n", ":2: expected 4 fields"),
    ("time_s,device,x,y\n5, ,1,1\n", ":2: device: expected a name"),
    ("time_s,device,x,y\n", "no samples"),
])
def test_bad_trace_files_name_the_file_and_line(tmp_path, text, message):
    with pytest.raises(MobilityInputError, match=message) as err:
        _trace(tmp_path, text)
    assert "trace.csv" in str(err.value)
