"""Reports render from an event log; bad logs give a ReportError naming the file and line."""

from __future__ import annotations

import json
import struct
import zlib

import pytest
from event_samples import sample_events, write_event_log

from tierflow.orchestrator.errors import TierflowError
from tierflow.orchestrator.report import ReportError, last_run, load_events, render_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk, checking the signature and the chunk's CRC."""
    assert data[:8] == PNG_MAGIC
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    body = data[16:29]
    (crc,) = struct.unpack(">I", data[29:33])
    assert zlib.crc32(kind + body) == crc
    assert data.endswith(b"IEND\xaeB`\x82")
    return struct.unpack(">II", body[:8])


@pytest.mark.parametrize("time_mode", ["emulated", "real"])
def test_renders_valid_pngs(tmp_path, time_mode):
    write_event_log(tmp_path / "events.jsonl", sample_events(rounds=12, time_mode=time_mode))
    paths = render_report(tmp_path)
    assert [p.name for p in paths] == ["accuracy.png", "bytes_per_link.png", "devices_per_edge.png",
                                       "placement.png"]
    for p in paths:
        assert p.parent == tmp_path / "report"
        data = p.read_bytes()
        w, h = png_size(data)
        assert w >= 600 and h >= 300, p
        assert len(data) > 10_000, f"{p} looks blank ({len(data)} bytes)"


def test_out_dir_single_round_and_unknown_events(tmp_path):
    events = sample_events(rounds=1)
    events.insert(1, {"event": "checkpoint_saved", "round": 1, "path": "x"})
    write_event_log(tmp_path / "run" / "events.jsonl", events)
    paths = render_report(tmp_path / "run", out_dir=tmp_path / "plots")
    assert all(p.parent == tmp_path / "plots" and p.stat().st_size > 5_000 for p in paths)


def test_missing_log(tmp_path):
    with pytest.raises(ReportError, match="events.jsonl: no event log"):
        render_report(tmp_path)


def test_corrupt_line_names_file_and_line(tmp_path):
    log = write_event_log(tmp_path / "events.jsonl", sample_events(rounds=3))
    lines = log.read_text().splitlines()
    lines[2] = lines[2][:25]  # a line cut short, as after a crash mid-write
    log.write_text("\n".join(lines) + "\n")
    with pytest.raises(ReportError, match=r"events\.jsonl:3: not a JSON event") as err:
        render_report(tmp_path)
    assert isinstance(err.value, ValueError) and isinstance(err.value, TierflowError)
    assert str(log) in str(err.value)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("[1, 2]", r":2: expected an object with an 'event' name"),
        (json.dumps({"round": 1}), r":2: expected an object with an 'event' name"),
        (json.dumps({"event": "round_end", "round": 1}), r":2: round_end lacks 'wall_time_s'"),
    ],
)
def test_malformed_events(tmp_path, line, message):
    start = json.dumps(sample_events(rounds=1)[0])
    (tmp_path / "events.jsonl").write_text(start + "\n" + line + "\n")
    with pytest.raises(ReportError, match=message):
        render_report(tmp_path)


def test_malformed_round_values(tmp_path):
    events = sample_events(rounds=2)
    second = [i for i, e in enumerate(events) if e["event"] == "round_end"][1]
    events[second]["splits"]["dev-0"] = [1, 2]
    write_event_log(tmp_path / "events.jsonl", events)
    with pytest.raises(ReportError, match=rf":{second + 1}: malformed round_end: .*split of dev-0"):
        render_report(tmp_path)


def test_no_rounds(tmp_path):
    write_event_log(tmp_path / "events.jsonl", sample_events(rounds=1)[:1])
    with pytest.raises(ReportError, match="no round_end events"):
        render_report(tmp_path)
    (tmp_path / "events.jsonl").write_text("")
    with pytest.raises(ReportError, match="no round_end events"):
        render_report(tmp_path)


def test_load_events_skips_blank_lines(tmp_path):
    events = sample_events(rounds=2)
    log = tmp_path / "events.jsonl"
    log.write_text("\n".join(json.dumps(e) for e in events) + "\n\n")
    got = load_events(log)
    assert [e["event"] for e in got] == [e["event"] for e in events]


def test_a_reused_run_dir_reports_the_last_run(tmp_path):
    first, second = sample_events(rounds=5, seed=1), sample_events(rounds=3, seed=2)
    log = write_event_log(tmp_path / "events.jsonl", first + second)
    events = last_run(load_events(log))
    assert [e["round"] for e in events if e["event"] == "round_end"] == [1, 2, 3]
    assert events[0]["_line"] == len(first) + 1
    assert len(render_report(tmp_path)) == 4
