"""The run's event log: every event is one JSON line, and also goes to any live sinks (metrics)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tierflow.orchestrator.errors import TierflowError
from tierflow.orchestrator.event_types import WALL_CLOCK_FIELDS, Event, EventRecord, parse_known_event
from tierflow.orchestrator.files import EVENT_LOG_LIMIT_BYTES, read_text

__all__ = ["WALL_CLOCK_FIELDS", "EventLog", "Record", "json_lines", "read_events", "read_typed_events"]

Record = dict[str, Any]  # an event as its JSON object: what the log holds and the sinks receive


class EventLog:
    def __init__(self, path: Path, sinks: list[Callable[[Record], None]] | None = None):
        self.path = path
        self._fh = open(path, "a", buffering=1)
        self.sinks = list(sinks or [])

    def emit(self, event: EventRecord) -> None:
        record = event.to_dict()
        self._fh.write(json.dumps(record, sort_keys=True) + "\n")
        for sink in self.sinks:
            sink(record)

    def flush(self) -> None:
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def read_events(path: Path) -> list[Record]:
    """The log's JSON objects as written, unchecked (for tools that compare logs key by key)."""
    text = read_text(path, "event log", max_bytes=EVENT_LOG_LIMIT_BYTES)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def json_lines(path: Path) -> list[tuple[int, str, Any]]:
    """(line number, line, JSON value) of each non-blank line of the log; TierflowError names
    ``path:line`` of a line that is not JSON."""
    text = read_text(path, "event log", max_bytes=EVENT_LOG_LIMIT_BYTES)
    out = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append((lineno, line, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise TierflowError(f"{path}:{lineno}: not a JSON event ({exc.msg} at column {exc.colno})") from None
        except (ValueError, RecursionError) as exc:  # an integer of 5,000 digits, nesting deeper than the stack
            raise TierflowError(f"{path}:{lineno}: not a JSON event ({type(exc).__name__}: {str(exc)[:80]})"
                                ) from None
    return out


def read_typed_events(path: Path) -> list[Event]:
    """The log's events as records; kinds this schema does not know are skipped. A line that is
    not JSON, or an event the schema refuses, raises TierflowError naming ``path:line``."""
    events = []
    for lineno, _, obj in json_lines(path):
        event = parse_known_event(obj, f"{path}:{lineno}")
        if event is not None:
            events.append(event)
    return events
