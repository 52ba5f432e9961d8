"""Mobility and handover against traces computed by hand."""

from __future__ import annotations

import math

import pytest

from migration.errors import MobilityInputError
from migration.handover import EdgeSite, HandoverDetector, handovers_between
from migration.mobility import RandomWaypoint, TraceMobility

A = EdgeSite("a", 0, 0, 600)
B = EdgeSite("b", 1000, 0, 600)


def walk(tmp_path, rows):
    p = tmp_path / "t.csv"
    p.write_text("time_s,device,x,y\n" + "".join(f"{t},{d},{x},{y}\n" for t, d, x, y in rows))
    return TraceMobility.from_csv(p)


def test_straight_walk_hands_over_at_the_hysteresis_point(tmp_path):
    # 0 -> 1000 m in 100 s at 10 m/s. Without hysteresis b is nearer past x = 500 (t = 51 at 1 s
    # sampling); with 100 m it must be nearer by more than 100 m: x > 550, i.e. t = 56.
    mob = walk(tmp_path, [(0, "d", 0, 0), (100, "d", 1000, 0)])
    plain = handovers_between(mob, HandoverDetector([A, B], 0, {"d": "a"}), 0, 100, 1)
    sticky = handovers_between(mob, HandoverDetector([A, B], 100, {"d": "a"}), 0, 100, 1)
    assert [(h.t_s, h.from_edge, h.to_edge) for h in plain] == [(51, "a", "b")]
    assert [(h.t_s, h.from_edge, h.to_edge) for h in sticky] == [(56, "a", "b")]


def test_hysteresis_stops_flapping_on_the_border(tmp_path):
    rows = [(t, "d", 500 + (20 if t % 2 else -20), 0) for t in range(0, 20)]
    mob = walk(tmp_path, rows)
    assert len(handovers_between(mob, HandoverDetector([A, B], 0, {"d": "a"}), 0, 19, 1)) > 10
    assert handovers_between(mob, HandoverDetector([A, B], 50, {"d": "a"}), 0, 19, 1) == []


def test_out_of_coverage_disconnects_then_reconnects(tmp_path):
    mob = walk(tmp_path, [(0, "d", 0, 0), (10, "d", 0, 1000), (20, "d", 0, 0)])
    events = handovers_between(mob, HandoverDetector([A, B], 10, {"d": "a"}), 0, 20, 1)
    # Leaves a's 600 m at y > 600 (t = 7), back inside at t = 14.
    assert [(h.t_s, h.from_edge, h.to_edge) for h in events] == [(7, "a", None), (14, None, "a")]


def test_random_waypoint_matches_an_independent_recomputation():
    rw = RandomWaypoint(["d0", "d1"], area_m=(1000, 1000), speed_mps=(5, 15), pause_s=3, seed=7,
                        start={"d0": (0, 0), "d1": (1000, 0)})
    later = rw.positions(500.0)
    again = RandomWaypoint(["d0", "d1"], area_m=(1000, 1000), speed_mps=(5, 15), pause_s=3, seed=7,
                           start={"d0": (0, 0), "d1": (1000, 0)})
    samples = [again.positions(t) for t in range(0, 501, 1)]  # asked in another order: same answer
    assert samples[-1] == later
    for a, b in zip(samples, samples[1:], strict=False):  # never faster than the top speed
        for d in a:
            assert math.dist(a[d], b[d]) <= 15 + 1e-9
    det1, det2 = HandoverDetector([A, B], 20, {"d0": "a", "d1": "b"}), HandoverDetector([A, B], 20,
                                                                                       {"d0": "a", "d1": "b"})
    by_helper = handovers_between(rw, det1, 0, 500, 1)
    by_hand = [h for t in range(0, 501) for h in det2.update(t, samples[t])]
    assert by_helper == by_hand


@pytest.mark.parametrize(("text", "message"), [
    ("t,device,x,y\n", ":1: expected the header"),
    ("time_s,device,x,y\n0,d,1,oops\n", ":2: expected numbers"),
    ("time_s,device,x,y\n5,d,1,1\n4,d,1,1\n", ":3: time_s 4.0 goes back"),
    ("time_s,device,x,y\n5,d,1\n", ":2: expected 4 fields"),
])
def test_bad_trace_files_name_the_line(tmp_path, text, message):
    p = tmp_path / "bad.csv"
    p.write_text(text)
    with pytest.raises(MobilityInputError, match=message):
        TraceMobility.from_csv(p)
