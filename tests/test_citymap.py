"""The city map: the trajectory recorder's file, the drawings made from it, and a real run's report."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from event_samples import write_event_log
from PIL import Image

from tierflow.migration.handover import EdgeSite, HandoverDetector
from tierflow.migration.mobility import RandomWaypoint, StaticMobility
from tierflow.orchestrator import citymap
from tierflow.orchestrator import event_types as ev
from tierflow.orchestrator.citymap import animate_city, draw_city, locate_marks
from tierflow.orchestrator.report import ReportError, render_report
from tierflow.orchestrator.trajectories import (
    TRAJECTORIES,
    TrajectoryError,
    TrajectoryRecorder,
    load_trajectories,
)

ROOT = Path(__file__).resolve().parents[1]
EDGES = [("north", (500.0, 1000.0), 650.0), ("south", (500.0, 0.0), 650.0),
         ("east", (1000.0, 500.0), 650.0), ("west", (0.0, 500.0), 650.0)]


def synthetic_run(run_dir: Path, n_devices: int = 8, rounds: int = 4, checks_per_round: int = 8,
                  moving: bool = True, seed: int = 1, policy: str = "migrate", **recorder_kw) -> list[ev.Event]:
    """A run as the round loop records it: random-waypoint devices among four edges, the detector's
    handovers as events (each followed by a migration, one of them failed), and the recorder fed at
    every check. Writes events.jsonl and trajectories.npz; returns the events."""
    devices = [f"phone-{i}" for i in range(n_devices)]
    rng = np.random.default_rng(seed)
    start = {d: (float(x), float(y)) for d, (x, y) in zip(devices, rng.uniform(200, 800, (n_devices, 2)),
                                                           strict=True)}
    mobility = (RandomWaypoint(devices, (1000, 1000), (5, 15), 5, seed, start) if moving
                else StaticMobility(start))
    detector = HandoverDetector([EdgeSite(n, p[0], p[1], r) for n, p, r in EDGES], 25.0)
    detector.update(0.0, mobility.positions(0.0))
    serving = dict(detector.current)
    rec = TrajectoryRecorder("synthetic-city", devices, EDGES, **recorder_kw)
    rec.record(0, 0.0, mobility.positions(0.0), serving)
    events: list[ev.Event] = [ev.RunStart(wall_time_s=0.0, virtual_time_s=0.0, time_mode="emulated",
                                          scenario="synthetic-city", devices=n_devices, edges=[e[0] for e in EDGES],
                                          policy=policy)]
    t = 0.0
    failed_one = False
    for r in range(1, rounds + 1):
        for _ in range(checks_per_round):
            t += 60.0 / checks_per_round
            pos = mobility.positions(t)
            moves = detector.update(t, pos)
            for h in moves:
                events.append(ev.Handover(round=r, virtual_time_s=60.0 * (r - 1), device=h.device,
                                          from_edge=h.from_edge, to_edge=h.to_edge))
                if h.from_edge and h.to_edge:
                    ok = failed_one or policy != "migrate"
                    failed_one = True
                    events.append(ev.Migration(round=r, virtual_time_s=60.0 * (r - 1), device=h.device,
                                               from_edge=h.from_edge, to_edge=h.to_edge, policy=policy, bytes=1000,
                                               wall_duration_s=0.01, ok=ok, charged_s=0.1))
                serving[h.device] = h.to_edge
            rec.record(r, t, pos, serving, moves)
        per_edge = {e[0]: sum(1 for s in serving.values() if s == e[0]) for e in EDGES}
        events.append(ev.RoundEnd(round=r, wall_time_s=float(r), virtual_time_s=60.0 * r, duration_s=60.0,
                                  accuracy=0.2 * r, loss=1.0, train_loss=1.0,
                                  bytes={"device-edge": {"up": 10, "down": 10}}, compute_s={}, wall_compute_s={},
                                  devices_per_edge=per_edge, devices_per_ring={},
                                  splits={d: [2, 7, 0] for d in devices}, samples=len(devices), failures=0,
                                  predicted_s=60.0, charged_s=60.0))
    write_event_log(run_dir / "events.jsonl", events)
    rec.save(run_dir)
    return events


def kinds(events, kind):
    """The events of one kind, as the objects the log holds."""
    return [e.to_dict() for e in events if e.kind == kind]


def read_log(path: Path) -> list[ev.Event]:
    return [ev.parse_event(json.loads(x), f"{path}:{i}") for i, x in enumerate(path.read_text().splitlines(), 1)]


# ----- the recorder -----

def test_recorder_round_trip(tmp_path):
    events = synthetic_run(tmp_path, n_devices=5, rounds=3, checks_per_round=4)
    with np.load(tmp_path / TRAJECTORIES, allow_pickle=False) as npz:  # arrays only, nothing to unpickle
        assert npz["positions"].dtype == np.float32
    traj = load_trajectories(tmp_path / TRAJECTORIES)
    assert traj.scenario == "synthetic-city"
    assert list(traj.devices) == [f"phone-{i}" for i in range(5)]
    assert list(traj.edges) == [e[0] for e in EDGES]
    assert traj.positions.shape == (1 + 3 * 4, 5, 2) and traj.serving.shape == (13, 5)
    assert list(traj.rounds) == [0] + [r for r in (1, 2, 3) for _ in range(4)]
    assert np.allclose(traj.times_s, np.arange(13) * 15.0)
    # the positions are the mobility model's, to float32 precision
    mob = RandomWaypoint(list(traj.devices), (1000, 1000), (5, 15), 5, 1,
                         {d: tuple(map(float, traj.positions[0, i])) for i, d in enumerate(traj.devices)})
    for f in (3, 12):
        want = mob.positions(float(traj.times_s[f]))
        assert np.allclose(traj.positions[f], [want[d] for d in traj.devices], atol=1e-3)
    # one recorded handover per handover event, in order, at the device's position then
    hs = kinds(events, "handover")
    assert len(hs) == len(traj.handover_t_s) > 0
    for k, h in enumerate(hs):
        assert traj.devices[traj.handover_device[k]] == h["device"]
        to = traj.handover_to[k]
        assert (traj.edges[to] if to >= 0 else None) == h["to_edge"]


def test_recorder_decimates_to_a_bounded_evenly_spread_set_of_frames(tmp_path):
    rec = TrajectoryRecorder("x", ["a", "b"], EDGES[:2], max_frames=16)
    for i in range(1000):
        rec.record(i // 10, float(i), {"a": (i, 0.0), "b": (0.0, i)}, {"a": "north", "b": None})
    traj = rec.snapshot()
    assert len(traj.times_s) <= 17  # the kept frames and the latest check
    assert traj.times_s[0] == 0.0 and traj.times_s[-1] == 999.0
    gaps = np.diff(traj.times_s[:-1])
    assert np.all(gaps == gaps[0]) and gaps[0] == traj.stride  # evenly spread
    assert traj.checks == 1000
    assert list(traj.serving[-1]) == [0, -1]


def test_recorder_bounds_the_file_for_ten_thousand_devices(tmp_path):
    n = 10_000
    devices = [f"d{i}" for i in range(n)]
    rec = TrajectoryRecorder("big", devices, EDGES)
    xy = np.random.default_rng(0).uniform(0, 1000, (n, 2))
    serving = {d: "north" for d in devices}
    places = [{d: (xy[j, 0] + k, xy[j, 1]) for j, d in enumerate(devices)} for k in range(3)]
    for i in range(rec.max_frames * 3):
        rec.record(i, float(i), places[i % 3], serving)
    path = rec.save(tmp_path)
    assert path.stat().st_size < 17_000_000
    assert len(load_trajectories(path).times_s) <= rec.max_frames + 1


def test_resume_keeps_what_the_checkpoint_covers(tmp_path):
    synthetic_run(tmp_path, n_devices=6, rounds=4, checks_per_round=5)
    whole = load_trajectories(tmp_path / TRAJECTORIES)
    rec = TrajectoryRecorder("synthetic-city", list(whole.devices), EDGES)
    rec.resume(tmp_path, checkpoint_round=2)
    got = rec.snapshot()
    keep = whole.rounds <= 2
    assert np.array_equal(got.positions, whole.positions[keep]) and np.array_equal(got.times_s, whole.times_s[keep])
    assert np.array_equal(got.handover_t_s, whole.handover_t_s[whole.handover_round <= 2])
    # a recorder with no usable file keeps its own frames (the map then starts at the resume)
    fresh = TrajectoryRecorder("synthetic-city", list(whole.devices), EDGES)
    fresh.resume(tmp_path / "nowhere", checkpoint_round=2)
    assert len(fresh.snapshot().times_s) == 0


@pytest.mark.parametrize("damage", ["garbage", "truncated", "missing_field", "bad_shape", "bad_index", "pickle",
                                    "device", "bomb"])
def test_damaged_trajectories_are_refused_naming_the_file(tmp_path, damage):
    synthetic_run(tmp_path, n_devices=3, rounds=2)
    path = tmp_path / TRAJECTORIES
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    if damage == "garbage":
        path.write_bytes(b"\x00not a zip" * 100)
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:300])
    elif damage == "device":  # an endless stream: refused, never read
        path.unlink()
        path.symlink_to("/dev/zero")
    elif damage == "bomb":  # a small file whose member unpacks to 300 MB
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf, zf.open("positions.npy", "w",
                                                                             force_zip64=True) as member:
            chunk = bytes(1 << 20)
            for _ in range(300):
                member.write(chunk)
        assert path.stat().st_size < 2_000_000
    else:
        if damage == "missing_field":
            del arrays["serving"]
        elif damage == "bad_shape":
            arrays["positions"] = arrays["positions"][:, :2]
        elif damage == "bad_index":
            arrays["serving"] = arrays["serving"] + 9
        elif damage == "pickle":
            arrays["devices"] = np.array([{"a": 1}] * 3, dtype=object)
        with open(path, "wb") as fh:
            np.savez(fh, **arrays)
    with pytest.raises(TrajectoryError, match=str(path)):
        load_trajectories(path)
    with pytest.raises(ReportError, match=TRAJECTORIES):
        render_report(tmp_path)


# ----- the drawings -----

def test_city_png_and_gif_from_a_synthetic_run(tmp_path):
    events = synthetic_run(tmp_path, n_devices=8, rounds=4, checks_per_round=10)
    paths = render_report(tmp_path)
    assert [p.name for p in paths][-2:] == ["city.png", "city.gif"]
    with Image.open(tmp_path / "report" / "city.png") as png:
        assert png.format == "PNG" and png.size[0] >= 900 and png.size[1] >= 600
        assert len(np.unique(np.asarray(png.convert("RGB")).reshape(-1, 3), axis=0)) > 50  # not blank
    with Image.open(tmp_path / "report" / "city.gif") as gif:
        assert gif.format == "GIF" and gif.n_frames == 41  # every recorded frame, up to GIF_FRAMES
        gif.seek(gif.n_frames - 1)
    traj = load_trajectories(tmp_path / TRAJECTORIES)
    drawn = draw_city(traj, events, "t", tmp_path / "again.png")
    assert drawn.moving and drawn.devices_drawn == 8 and drawn.edges == 4
    anim = animate_city(traj, events, "t", tmp_path / "short.gif", max_frames=7)
    with Image.open(anim.path) as gif:
        assert gif.n_frames == anim.frames == 7


def test_every_handover_and_migration_of_the_events_is_marked(tmp_path):
    events = synthetic_run(tmp_path, n_devices=10, rounds=5)
    traj = load_trajectories(tmp_path / TRAJECTORIES)
    n_handovers = len(kinds(events, "handover"))
    migrations = kinds(events, "migration")
    assert n_handovers > 3 and len(migrations) > 1
    drawn = draw_city(traj, events, "t", tmp_path / "city.png")
    assert drawn.marks["handover"] == drawn.marks_total["handover"] == n_handovers
    assert drawn.marks["migration"] == sum(m["ok"] for m in migrations)
    assert drawn.marks["failed_migration"] == sum(not m["ok"] for m in migrations) == 1
    # each mark sits where the recorder saw the device hand over
    marks = [m for m in locate_marks(traj, events) if m.kind == "handover"]
    assert np.allclose([(m.x, m.y) for m in marks], traj.handover_xy)


def test_handovers_the_recorder_did_not_keep_are_still_marked(tmp_path):
    events = synthetic_run(tmp_path, n_devices=10, rounds=5, max_handovers=2)
    traj = load_trajectories(tmp_path / TRAJECTORIES)
    assert len(traj.handover_t_s) == 2 and traj.handovers_dropped > 0
    drawn = draw_city(traj, events, "t", tmp_path / "city.png")
    assert drawn.marks["handover"] == len(kinds(events, "handover"))
    # placed from the frames: where the device first shows its new edge in that round
    marks = [m for m in locate_marks(traj, events) if m.kind == "handover"]
    for m, h in list(zip(marks, kinds(events, "handover"), strict=True))[2:]:
        i = list(traj.devices).index(h["device"])
        frames = np.flatnonzero((traj.rounds == h["round"]) & np.all(traj.positions[:, i] == (m.x, m.y), axis=1))
        assert frames.size


def test_restart_policy_marks_restarts(tmp_path):
    events = synthetic_run(tmp_path, n_devices=10, rounds=4, policy="restart")
    drawn = draw_city(load_trajectories(tmp_path / TRAJECTORIES), events, "t", tmp_path / "city.png")
    assert drawn.marks["restart"] == len(kinds(events, "migration")) > 0
    assert "migration" not in drawn.marks


@pytest.mark.parametrize("n", [1, 4, 9, 12, 18, 30, 200])
def test_edge_colours_are_distinct_and_never_the_no_edge_grey(n):
    import matplotlib.colors as mc

    colors = [mc.to_hex(c) for c in citymap.edge_colors(n)]
    assert len(colors) == n and len(set(colors)) == n
    for c in colors:
        r, g, b = mc.to_rgb(c)
        assert max(r, g, b) - min(r, g, b) > 0.1, c  # not a grey


def test_static_run_draws_the_placement(tmp_path):
    events = synthetic_run(tmp_path, n_devices=12, rounds=2, moving=False)
    traj = load_trajectories(tmp_path / TRAJECTORIES)
    assert not traj.moving and not kinds(events, "handover")
    drawn = draw_city(traj, events, "t", tmp_path / "city.png")
    assert not drawn.moving and drawn.devices_drawn == 12 and drawn.marks == {}


def test_ten_thousand_devices_are_subsampled_for_drawing(tmp_path):
    events = synthetic_run(tmp_path, n_devices=10_000, rounds=1, checks_per_round=3)
    traj = load_trajectories(tmp_path / TRAJECTORIES)
    drawn = draw_city(traj, events, "t", tmp_path / "city.png")
    assert drawn.devices == 10_000 and drawn.devices_drawn == citymap.MAX_PATHS
    assert sum(drawn.marks.values()) <= len(citymap.MARK_STYLE) * citymap.MAX_MARKERS
    anim = animate_city(traj, events, "t", tmp_path / "city.gif", max_frames=3)
    assert anim.devices_drawn == citymap.MAX_POINTS
    assert (tmp_path / "city.gif").stat().st_size < 3_000_000


def test_report_refuses_trajectories_of_another_run(tmp_path):
    synthetic_run(tmp_path, n_devices=4, rounds=2)
    events = [json.loads(x) for x in (tmp_path / "events.jsonl").read_text().splitlines()]
    events[0]["devices"] = 5
    write_event_log(tmp_path / "events.jsonl", events)
    with pytest.raises(ReportError, match="from another run"):
        render_report(tmp_path)


# ----- a real run -----

SCENARIO = {
    "name": "tiny-city",
    "cloud": {"flops_per_s": 1e12},
    "edges": [{"name": "west", "position": [0, 0], "radius_m": 350, "flops_per_s": 1e11},
              {"name": "east", "position": [500, 0], "radius_m": 350, "flops_per_s": 1e11}],
    "devices": [{"name": "car", "count": 4, "position": [250, 0], "spread_m": 80, "flops_per_s": 4e9,
                 "bandwidth_mbps": 40}],
    "model": {"name": "vgg5"},
    "training": {"rounds": 4, "local_steps": 4, "batch_size": 16, "seed": 3,
                 "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}},
    "split": ["pool1"],
    "mobility": {"model": "random_waypoint", "speed_mps": [20, 40], "pause_s": 0, "area_m": [500, 150],
                 "hysteresis_m": 10, "round_duration_s": 30, "check_every_steps": 1},
}


class Crash(Exception):
    pass


@pytest.mark.ray
def test_a_real_run_records_its_city_and_a_resume_keeps_it(ray_session, tmp_path):
    from tierflow.orchestrator.cli import main
    from tierflow.orchestrator.runner import Orchestrator, RunOptions, run_scenario
    from tierflow.orchestrator.scenario import load_scenario

    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(SCENARIO))
    scenario = load_scenario(path)
    whole_dir = tmp_path / "whole"
    summary = run_scenario(scenario, RunOptions(out_dir=whole_dir, progress=False))
    assert summary["handovers"] > 0 and summary["migrations"] > 0
    whole = load_trajectories(whole_dir / TRAJECTORIES)
    # one frame at time 0 and one per check: 4 rounds x 1 period x 4 checks
    assert len(whole.times_s) == 1 + 4 * 4 and list(whole.rounds) == [0] + [r for r in (1, 2, 3, 4) for _ in range(4)]
    assert len(whole.handover_t_s) == summary["handovers"]

    assert main(["report", str(whole_dir)]) == 0
    with Image.open(whole_dir / "report" / "city.png") as png:
        assert png.format == "PNG" and png.size[0] >= 900
    with Image.open(whole_dir / "report" / "city.gif") as gif:
        assert gif.n_frames == len(whole.times_s)
    events = read_log(whole_dir / "events.jsonl")
    drawn = draw_city(whole, events, "tiny", tmp_path / "city.png")
    assert drawn.marks["handover"] == summary["handovers"]
    assert drawn.marks["migration"] == summary["migrations"]

    # crash in round 3 (after the round-2 checkpoint), resume: the same trajectories as the whole run
    cut = tmp_path / "cut"

    def crash(event):
        if event["event"] == "round_end" and event["round"] == 3:
            raise Crash

    orch = Orchestrator(scenario, RunOptions(out_dir=cut, progress=False, event_sinks=(crash,)))
    with pytest.raises(Crash):
        orch.run()
    orch.fleet.stop()
    assert load_trajectories(cut / TRAJECTORIES).rounds.max() == 2
    run_scenario(scenario, RunOptions(out_dir=cut, progress=False, resume=True))
    resumed = load_trajectories(cut / TRAJECTORIES)
    for name in ("times_s", "rounds", "positions", "serving", "handover_t_s", "handover_xy", "handover_device"):
        assert np.array_equal(getattr(resumed, name), getattr(whole, name)), name


@pytest.mark.ray
def test_a_ring_run_records_its_city(ray_session, tmp_path):
    from tierflow.orchestrator.runner import RunOptions, run_scenario
    from tierflow.orchestrator.scenario import load_scenario

    path = tmp_path / "rings.yaml"
    path.write_text(yaml.safe_dump({**SCENARIO, "name": "ring-city", "policy": {"rings": 2},
                                    "training": {**SCENARIO["training"], "rounds": 2}}))
    summary = run_scenario(load_scenario(path), RunOptions(out_dir=tmp_path / "run", progress=False))
    traj = load_trajectories(tmp_path / "run" / TRAJECTORIES)
    assert traj.moving and set(traj.rounds.tolist()) == {0, 1, 2}
    assert len(traj.handover_t_s) == summary["handovers"] > 0
    paths = render_report(tmp_path / "run")
    assert paths[-2].name == "city.png" and paths[-1].name == "city.gif"


def test_a_device_re_homed_to_the_cloud_is_recorded_and_drawn_without_a_circle(tmp_path):
    rec = TrajectoryRecorder("x", ["a", "b"], EDGES)
    rec.record(0, 0.0, {"a": (0.0, 0.0), "b": (500.0, 0.0)}, {"a": "west", "b": "south"})
    rec.record(1, 5.0, {"a": (10.0, 0.0), "b": (500.0, 10.0)}, {"a": "@cloud", "b": None})
    traj = load_trajectories(rec.save(tmp_path))
    assert list(traj.edges) == [e[0] for e in EDGES] + ["@cloud"] and np.isnan(traj.edge_xy[-1]).all()
    assert traj.serving[-1].tolist() == [4, -1]
    drawn = draw_city(traj, [], "t", tmp_path / "city.png")
    assert drawn.edges == 4 and drawn.devices_drawn == 2
