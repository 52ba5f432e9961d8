"""Messages the actors' zmq ports refused, brought to the orchestrator once a round.

The metrics exporter lives in the orchestrator and reads events; the refusals happen in the edge
and cloud actors' serving threads. Each round the fleet asks every such actor for its
cumulative counts and emits a ``refused`` event with what is new, only when something is, so a
run nobody attacks logs nothing extra.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from tierflow.orchestrator import event_types as ev

Counts = dict[str, dict[str, int]]  # port -> reason -> messages


class RefusalTally:
    """Cumulative counts per actor in, increments out."""

    def __init__(self) -> None:
        self._seen: dict[str, Counts] = {}

    def increments(self, actor: str, counts: Mapping[str, Mapping[str, int]]) -> Counts:
        before = self._seen.get(actor, {})
        out: Counts = {}
        for port, by_reason in counts.items():
            for reason, n in by_reason.items():
                old = before.get(port, {}).get(reason, 0)
                new = n - old if n >= old else n  # fewer than before: a new actor under that name
                if new > 0:
                    out.setdefault(port, {})[reason] = new
        self._seen[actor] = {p: dict(r) for p, r in counts.items()}
        return out


def merge(total: Counts, more: Counts) -> Counts:
    for port, by_reason in more.items():
        for reason, n in by_reason.items():
            total.setdefault(port, {})[reason] = total.get(port, {}).get(reason, 0) + n
    return total


class RefusalReporter:
    """Turns the servers' cumulative counts (asked by the fleet each round) into ``refused`` events."""

    timeout_s = 5.0  # how long the fleet waits for the servers' counts

    def __init__(self) -> None:
        self.tally = RefusalTally()

    def report(self, emit: Callable[[ev.Refused], None], rnd: int, virtual_time_s: float,
               counts_by_actor: Mapping[str, Mapping[str, Mapping[str, int]]]) -> Counts:
        total: Counts = {}
        for name, counts in counts_by_actor.items():
            merge(total, self.tally.increments(name, counts))
        if total:
            emit(ev.Refused(round=rnd, virtual_time_s=virtual_time_s, counts=total))
        return total
