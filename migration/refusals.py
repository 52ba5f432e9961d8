"""What a zmq port refused, counted by reason and logged at a bounded rate.

A hostile peer can send thousands of messages a second; a warning per message would bury the log
(and cost more than refusing). Every refusal is counted (the orchestrator turns the counts into
``tierflow_refused_messages_total``); only the first few are logged, then one summary line per
interval with how many more there were and the last one's text.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

# The ``reason`` label of the refused-messages metric: a small fixed set.
REASONS = ("malformed", "unauthenticated", "replayed", "oversize", "busy")
PORTS = ("dataplane", "migration")


class RateLimitedLog:
    """Logs the first ``first`` messages, then at most one summary line per ``interval_s``."""

    def __init__(self, logger: logging.Logger, first: int = 10, interval_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic):
        self._logger = logger
        self.first = first
        self.interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._shown = 0
        self._suppressed = 0
        self._last = ""
        self._since = 0.0

    def log(self, level: int, msg: str, *args) -> None:
        with self._lock:
            self._summarize(self._clock())
            if self._shown < self.first:
                self._shown += 1
                self._logger.log(level, msg, *args)
                if self._shown == self.first:
                    self._logger.log(level, "(further such messages: one summary line per %g s)", self.interval_s)
                return
            if not self._suppressed:
                self._since = self._clock()
            self._suppressed += 1
            self._last = msg % args if args else msg

    def tick(self) -> None:
        """Write the pending summary if its interval is over (call it now and then, e.g. when idle)."""
        with self._lock:
            self._summarize(self._clock())

    def flush(self) -> None:
        """Write the pending summary now (on close)."""
        with self._lock:
            self._summarize(float("inf"))

    def _summarize(self, now: float) -> None:
        if self._suppressed and now - self._since >= self.interval_s:
            self._logger.warning("%d more like this in the last %.0f s; the last: %s", self._suppressed,
                                 min(now, self._clock()) - self._since, self._last)
            self._suppressed = 0


class RefusalCounter:
    """Counts one port's refused messages by reason; logs them through a :class:`RateLimitedLog`."""

    def __init__(self, logger: logging.Logger, first: int = 10, interval_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic):
        self._logger = logger
        self.log = RateLimitedLog(logger, first, interval_s, clock)
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(REASONS, 0)

    def refuse(self, reason: str, msg: str, *args, quiet: bool = False) -> None:
        """Count one refusal; ``quiet`` ones (the known tail of something already refused) log at DEBUG."""
        if reason not in self._counts:
            reason = "malformed"
        with self._lock:
            self._counts[reason] += 1
        if quiet:
            self._logger.debug(msg, *args)
        else:
            self.log.log(logging.WARNING, msg, *args)

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())

    def counts(self) -> dict[str, int]:
        """Cumulative counts by reason, the non-zero ones."""
        with self._lock:
            return {r: n for r, n in self._counts.items() if n}
