"""The event schema: every kind round-trips, a missing or mistyped field is refused by name, and a
real run's log parses and re-serialises to the very bytes it holds."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from tierflow.orchestrator import event_types as ev
from tierflow.orchestrator.errors import TierflowError
from tierflow.orchestrator.events import EventLog, read_typed_events

HERE = Path(__file__).parent

SAMPLES: list[ev.Event] = [
    ev.RunStart(wall_time_s=0.0, virtual_time_s=0.0, time_mode="emulated", scenario="city", devices=4,
                edges=["w", "e"], policy="migrate"),
    ev.RunResumed(round=2, wall_time_s=12.5, virtual_time_s=80.25),
    ev.RoundEnd(round=1, wall_time_s=3.5, virtual_time_s=40.0, duration_s=40.0, accuracy=0.5, loss=1.25,
                train_loss=1.5, bytes={"device-edge": {"up": 100, "down": 90}, "edge-cloud": {"up": 7, "down": 7}},
                compute_s={"device": 1.5, "edge": 0.25, "cloud": 0.0},
                wall_compute_s={"device": 0.5, "edge": 0.125, "cloud": 0.0}, devices_per_edge={"w": 3, "e": 1},
                devices_per_ring={"0": 2, "1": 2}, splits={"d0": [2, 7, 0], "d1": [3, 4, 2]}, samples=128,
                failures=1, predicted_s=39.5, charged_s=40.0),
    ev.Handover(round=1, virtual_time_s=20.0, device="d0", from_edge="w", to_edge="e"),
    ev.Handover(round=1, virtual_time_s=21.0, device="d1", from_edge="e", to_edge=None),
    ev.Migration(round=1, virtual_time_s=20.0, device="d0", from_edge="w", to_edge="e", policy="migrate",
                 bytes=4_000_000, wall_duration_s=0.05, ok=True, charged_s=0.1),
    ev.Migration(round=1, virtual_time_s=20.0, device="d0", from_edge="w", to_edge="e", policy="migrate",
                 bytes=0, wall_duration_s=0.0, ok=False, charged_s=0.0, ring="0"),
    ev.Failure(round=1, virtual_time_s=20.5, failure_kind="migration", entity="e", detail="d0: timed out"),
    ev.Rejoin(round=2, virtual_time_s=40.0, entity="host1", devices=["d2", "d3"]),
    ev.Rehome(round=2, virtual_time_s=40.0, device="d1", from_edge="e", to_edge="@cloud"),
    ev.Replan(round=2, virtual_time_s=80.0, changed=1, adopted=True, predicted_before_s=40.0, predicted_after_s=35.5,
              switch_s=0.5),
    ev.RingsFormed(round=1, virtual_time_s=0.0, rings={"0": ["d0", "d1"], "1": ["d2"]},
                   splits={"0": [2, 7], "1": [2, 5, 2]}, edges={"d0": "w", "d1": "e", "d2": "w", "d3": None},
                   left_out=["d3"]),
    ev.RingRound(round=1, virtual_time_s=0.0, interval_s=40.0, hops={"0": 4, "1": 2}, first={"0": "d0", "1": "d2"},
                 trained_hops={"0": 4, "1": 1}, samples={"0": 256, "1": 64}, ring_s={"0": 39.0, "1": 20.0},
                 predicted_s={"0": 38.5, "1": 41.0}, dropped={"1": "d2 failed: gone"}, left_out=["d3"]),
    ev.RingPass(round=1, virtual_time_s=0.0, ring="0", device="d1", from_edge="w", to_edge="e", bytes=2_000_000,
                wall_duration_s=0.02, ok=True, charged_s=0.07),
    ev.Refused(round=3, virtual_time_s=120.0, counts={"dataplane": {"unauthenticated": 3}}),
    ev.EngineChoice(round=1, virtual_time_s=0.0, host="host0", key="mlp|[1]|8", engine="vectorized"),
    ev.RunEnd(wall_time_s=20.0, virtual_time_s=160.0, final_accuracy=0.875, rounds=4),
]


def test_the_samples_cover_every_kind():
    assert {e.kind for e in SAMPLES} == set(ev.EVENT_TYPES)


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: e.kind)
def test_every_kind_round_trips(event):
    d = event.to_dict()
    assert d["event"] == event.kind
    assert ev.parse_event(d, "x:1") == event
    line = json.dumps(d, sort_keys=True)
    back = ev.parse_event(json.loads(line), "x:1")
    assert back == event and json.dumps(back.to_dict(), sort_keys=True) == line


def test_the_objects_are_today_s():
    """The keys the round loop always wrote: an optional ring only when there is one, a failure's kind."""
    migration = next(e for e in SAMPLES if isinstance(e, ev.Migration))
    assert "ring" not in migration.to_dict()
    assert dataclasses.replace(migration, ring="7").to_dict()["ring"] == "7"
    failure = next(e for e in SAMPLES if isinstance(e, ev.Failure)).to_dict()
    assert failure == {"event": "failure", "round": 1, "virtual_time_s": 20.5, "kind": "migration", "entity": "e",
                       "detail": "d0: timed out"}
    handover = [e.to_dict() for e in SAMPLES if isinstance(e, ev.Handover)][1]
    assert handover["to_edge"] is None  # written as null, not left out
    with pytest.raises(dataclasses.FrozenInstanceError):
        migration.ok = False


def test_the_wall_clock_fields_are_fields_of_the_schema():
    """Two identical emulated runs may differ only in these: each must name a real field."""
    keys = {f.metadata.get("key", f.name) for cls in ev.EVENT_TYPES.values() for f in dataclasses.fields(cls)}
    assert ev.WALL_CLOCK_FIELDS <= keys and "virtual_time_s" not in ev.WALL_CLOCK_FIELDS


def _keys(event: ev.EventRecord) -> list[tuple[str, bool]]:
    """(JSON key, whether the writer may leave it out) of each field."""
    return [(f.metadata.get("key", f.name), f.default is None) for f in dataclasses.fields(event)]


CASES = [(e, key, optional) for e in SAMPLES for key, optional in _keys(e)]


@pytest.mark.parametrize(("event", "key", "optional"), CASES, ids=[f"{e.kind}-{k}" for e, k, _ in CASES])
def test_a_missing_field_is_refused_by_name(event, key, optional):
    d = event.to_dict()
    d.pop(key, None)
    if optional:
        assert ev.parse_event(d, "log:3") == dataclasses.replace(event, **{key: None})
        return
    with pytest.raises(ev.EventError, match=rf"^log:3: {event.kind} lacks '{key}' \(expected ") as err:
        ev.parse_event(d, "log:3")
    assert isinstance(err.value, TierflowError)


@pytest.mark.parametrize(("event", "key", "optional"), CASES, ids=[f"{e.kind}-{k}" for e, k, _ in CASES])
def test_a_field_of_the_wrong_type_is_refused_by_name(event, key, optional):
    d = {**event.to_dict(), key: [[]]}  # no field of the schema is a list of lists
    with pytest.raises(ev.EventError, match=rf"^log:3: malformed {event.kind}: {key}(\[0\])?: expected .*, got "):
        ev.parse_event(d, "log:3")


@pytest.mark.parametrize(("field", "value", "message"), [
    ("bytes", {"device-edge": {"up": "x", "down": 1}}, r"bytes\['device-edge'\]\['up'\]: expected an integer, got 'x'"),
    ("splits", {"d0": [2, 7.5, 0]}, r"splits\['d0'\]\[1\]: expected an integer, got 7\.5"),
    ("samples", True, r"samples: expected an integer, got True"),
    ("accuracy", "0.5", r"accuracy: expected a number, got '0\.5'"),
    ("devices_per_edge", {"w": None}, r"devices_per_edge\['w'\]: expected an integer, got None"),
])
def test_the_message_names_the_place_inside_a_field(field, value, message):
    d = {**SAMPLES[2].to_dict(), field: value}
    with pytest.raises(ev.EventError, match=message):
        ev.parse_event(d, "log:9")


def test_booleans_and_numbers_are_not_confused_and_numbers_are_kept_as_read():
    migration = next(e for e in SAMPLES if isinstance(e, ev.Migration)).to_dict()
    with pytest.raises(ev.EventError, match="ok: expected true or false, got 1"):
        ev.parse_event({**migration, "ok": 1}, "x")
    # an int where a float is declared stays an int, so the line comes back byte for byte
    back = ev.parse_event({**migration, "charged_s": 0}, "x")
    assert back.charged_s == 0 and type(back.charged_s) is int
    assert json.dumps(back.to_dict(), sort_keys=True) == json.dumps({**migration, "charged_s": 0}, sort_keys=True)


def test_unknown_kinds_and_extra_keys():
    with pytest.raises(ev.UnknownEventKind, match=r"^f:2: unknown event kind 'checkpoint_saved'"):
        ev.parse_event({"event": "checkpoint_saved", "round": 2}, "f:2")
    assert ev.parse_known_event({"event": "checkpoint_saved"}, "f:2") is None
    for bad in ([1, 2], {"round": 1}, {"event": 3}):
        with pytest.raises(ev.EventError, match="^f:2: expected an"):
            ev.parse_known_event(bad, "f:2")
    # keys a record does not know (a newer writer's) are ignored
    assert ev.parse_event({**SAMPLES[0].to_dict(), "future": [1]}, "f:1") == SAMPLES[0]


def test_the_log_writes_records_and_its_sinks_get_the_same_objects(tmp_path):
    seen = []
    log = EventLog(tmp_path / "events.jsonl", [seen.append])
    for e in SAMPLES:
        log.emit(e)
    log.close()
    lines = (tmp_path / "events.jsonl").read_text().splitlines()
    assert lines == [json.dumps(e.to_dict(), sort_keys=True) for e in SAMPLES]
    assert seen == [e.to_dict() for e in SAMPLES]
    assert read_typed_events(tmp_path / "events.jsonl") == SAMPLES


def test_a_log_line_the_schema_refuses_is_named_by_file_and_line(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text(json.dumps(SAMPLES[0].to_dict()) + "\n\n" + json.dumps({"event": "run_end", "rounds": 2}) + "\n")
    with pytest.raises(TierflowError, match=rf"^{path}:3: run_end lacks 'wall_time_s'"):
        read_typed_events(path)


@pytest.mark.ray
def test_a_real_ring_run_s_log_parses_and_re_serialises_byte_for_byte(ray_session, tmp_path):
    from tierflow.orchestrator.runner import RunOptions, run_scenario
    from tierflow.orchestrator.scenario import load_scenario

    doc = yaml.safe_load((HERE / "moving_city.yaml").read_text())
    doc["policy"] = {"placement": "adaptive", "rings": 2}
    doc["training"]["rounds"] = 2
    path = tmp_path / "moving-rings.yaml"
    path.write_text(yaml.safe_dump(doc))
    seen = []
    run_scenario(load_scenario(path), RunOptions(out_dir=tmp_path / "run", progress=False, event_sinks=(seen.append,)))
    log = tmp_path / "run" / "events.jsonl"
    lines = log.read_text().splitlines()
    kinds = set()
    for i, line in enumerate(lines, start=1):
        event = ev.parse_event(json.loads(line), f"{log}:{i}")
        kinds.add(event.kind)
        assert json.dumps(event.to_dict(), sort_keys=True) == line, f"{log}:{i}"
    assert {"run_start", "rings_formed", "ring_round", "handover", "migration", "round_end", "run_end"} <= kinds, kinds
    assert [ev.parse_event(d, "sink") for d in seen] == read_typed_events(log)
