"""The run's event log: every event is one JSON line, and also goes to any live sinks (metrics)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tierflow.orchestrator.files import EVENT_LOG_LIMIT_BYTES, read_text

Event = dict[str, Any]

# Fields that measure this host's wall clock: the only ones two identical emulated runs may differ in.
WALL_CLOCK_FIELDS = frozenset({"wall_time_s", "wall_duration_s", "wall_compute_s"})


class EventLog:
    def __init__(self, path: Path, sinks: list[Callable[[Event], None]] | None = None):
        self.path = path
        self._fh = open(path, "a", buffering=1)
        self.sinks = list(sinks or [])

    def emit(self, event: Event) -> None:
        self._fh.write(json.dumps(event, sort_keys=True) + "\n")
        for sink in self.sinks:
            sink(event)

    def flush(self) -> None:
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def read_events(path: Path) -> list[Event]:
    text = read_text(path, "event log", max_bytes=EVENT_LOG_LIMIT_BYTES)
    return [json.loads(line) for line in text.splitlines() if line.strip()]
