"""Mobility and handover against traces computed by hand."""

from __future__ import annotations

import math

import pytest
from test_mobility import waypoint_oracle

from tierflow.migration.errors import MobilityInputError
from tierflow.migration.handover import EdgeSite, Handover, HandoverDetector, handovers_between
from tierflow.migration.mobility import RandomWaypoint, TraceMobility

A = EdgeSite("a", 0, 0, 600)
B = EdgeSite("b", 1000, 0, 600)


def walk(tmp_path, rows):
    text = "time_s,device,x,y\n" + "".join(f"{t},{d},{x},{y}\n" for t, d, x, y in rows)
    return TraceMobility.from_text(text, str(tmp_path / "t.csv"))


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


def brute_force_edge(edges, hysteresis, current, p):
    """The rule, written plainly: every covering edge, then the current one kept unless beaten by > h."""
    covering = [(math.hypot(e.x - p[0], e.y - p[1]), e.name) for e in edges
                if math.hypot(e.x - p[0], e.y - p[1]) <= e.radius_m]
    if not covering:
        return None
    best = min(covering)
    mine = [d for d, n in covering if n == current]
    return current if mine and mine[0] - best[0] <= hysteresis else best[1]


def test_random_waypoint_handovers_match_a_brute_force_recomputation():
    edges = [EdgeSite("a", 200, 200, 260), EdgeSite("b", 600, 200, 260), EdgeSite("c", 400, 450, 200)]
    area, speed, pause, seed = (800.0, 600.0), (3.0, 12.0), 2.0, 5
    ids = [f"d{i}" for i in range(6)]
    rw = RandomWaypoint(ids, area_m=area, speed_mps=speed, pause_s=pause, seed=seed)
    first = rw.positions(0.0)
    current = {d: brute_force_edge(edges, 0, None, first[d]) for d in ids}
    detector = HandoverDetector(edges, 25, dict(current))
    got = handovers_between(rw, detector, 0, 600, 0.5)

    want = []
    for k in range(1201):
        t = k * 0.5
        for i, d in enumerate(ids):
            new = brute_force_edge(edges, 25, current[d], waypoint_oracle(seed, i, None, area, speed, pause, t))
            if new != current[d]:
                want.append(Handover(t, d, current[d], new))
                current[d] = new
    want.sort(key=lambda h: (h.t_s, h.device))
    assert len(want) > 20 and any(h.to_edge is None for h in want)  # the walk exercises every case
    assert got == want


def test_first_sight_attaches_without_an_event_and_dead_edges_reconnect():
    det = HandoverDetector([A, B], 0, {"gone": "zzz"})
    assert det.update(0, {"new": (10, 0)}) == []
    assert det.current["new"] == "a"
    assert det.update(1, {"gone": (990, 0)}) == [Handover(1, "gone", None, "b")]


@pytest.mark.parametrize("h", [-1, math.nan])
def test_bad_hysteresis_is_refused(h):
    with pytest.raises(MobilityInputError, match="hysteresis_m"):
        HandoverDetector([A, B], h)
