"""The run's events as typed records: one frozen dataclass per kind, the one schema writers and
readers share.

``to_dict`` gives the JSON object the event log holds (``"event"`` names the kind); ``parse_event``
turns such an object back into its record and refuses a missing or mistyped field, naming the
place, the kind, the field and what was expected. Keys a record does not know are ignored, so a
reader copes with a log from a newer writer. Numbers are kept as read (an ``int`` where a float
is declared stays an ``int``), so a parsed record re-serialises to the very bytes it came from.
"""

from __future__ import annotations

import dataclasses
import reprlib
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Union, get_args, get_origin, get_type_hints

from tierflow.orchestrator.errors import TierflowError

# Fields that measure this host's wall clock: the only ones two identical emulated runs may differ in.
WALL_CLOCK_FIELDS = frozenset({"wall_time_s", "wall_duration_s", "wall_compute_s"})

_KEY = "key"  # field metadata: the JSON key, where the attribute's name cannot be it
_OMIT = "omit_if_none"  # field metadata: the key is left out when the value is None


def _optional() -> Any:
    """A field the writer leaves out of the object when it has no value."""
    return field(default=None, metadata={_OMIT: True})


class EventError(TierflowError):
    """An event object the schema refuses; the message names where, the kind and the field."""


class UnknownEventKind(EventError):
    """An object whose ``"event"`` names no kind of this schema (a newer writer, or damage)."""


@dataclass(frozen=True)
class EventRecord:
    """What every event has: its kind, and its JSON object."""

    kind: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"event": self.kind}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None and f.metadata.get(_OMIT):
                continue
            out[f.metadata.get(_KEY, f.name)] = value
        return out


# ----- the kinds -----

@dataclass(frozen=True)
class RunStart(EventRecord):
    kind: ClassVar[str] = "run_start"
    wall_time_s: float
    virtual_time_s: float
    time_mode: str
    scenario: str
    devices: int
    edges: list[str]
    policy: str


@dataclass(frozen=True)
class RunResumed(EventRecord):
    kind: ClassVar[str] = "run_resumed"
    round: int  # the checkpoint's round: training goes on from the next
    wall_time_s: float
    virtual_time_s: float


@dataclass(frozen=True)
class RoundEnd(EventRecord):
    kind: ClassVar[str] = "round_end"
    round: int
    wall_time_s: float
    virtual_time_s: float
    duration_s: float
    accuracy: float
    loss: float
    train_loss: float
    bytes: dict[str, dict[str, int]]  # link -> {"up", "down"} -> bytes
    compute_s: dict[str, float]  # tier -> charged compute seconds
    wall_compute_s: dict[str, float]  # tier -> what the steps took on this host
    devices_per_edge: dict[str, int]
    devices_per_ring: dict[str, int]
    splits: dict[str, list[int]]  # device -> [device nodes, edge nodes, cloud nodes]
    samples: int
    failures: int
    predicted_s: float
    charged_s: float
    cohort: int | None = _optional()  # devices sampled to train this round (training.devices_per_round)


@dataclass(frozen=True)
class Handover(EventRecord):
    kind: ClassVar[str] = "handover"
    round: int
    virtual_time_s: float
    device: str
    from_edge: str | None  # None: the device was out of every edge's coverage
    to_edge: str | None  # None: it has left coverage


@dataclass(frozen=True)
class Migration(EventRecord):
    """A session moved (or restarted) by the handover policy: a device's own, or ``ring``'s."""

    kind: ClassVar[str] = "migration"
    round: int
    virtual_time_s: float
    device: str
    from_edge: str
    to_edge: str
    policy: str
    bytes: int
    wall_duration_s: float
    ok: bool
    charged_s: float
    ring: str | None = _optional()


@dataclass(frozen=True)
class Failure(EventRecord):
    kind: ClassVar[str] = "failure"
    round: int
    virtual_time_s: float
    # The JSON key is "kind" (device, edge, poisoned_update, migration, ring_pass); ``kind`` names the event.
    failure_kind: str = field(metadata={_KEY: "kind"})
    entity: str
    detail: str


@dataclass(frozen=True)
class Rejoin(EventRecord):
    kind: ClassVar[str] = "rejoin"
    round: int
    virtual_time_s: float
    entity: str  # the device host that came back
    devices: list[str]


@dataclass(frozen=True)
class Rehome(EventRecord):
    kind: ClassVar[str] = "rehome"
    round: int
    virtual_time_s: float
    device: str
    from_edge: str  # the edge that is gone
    to_edge: str


@dataclass(frozen=True)
class Replan(EventRecord):
    kind: ClassVar[str] = "replan"
    round: int
    virtual_time_s: float
    changed: int
    adopted: bool
    predicted_before_s: float
    predicted_after_s: float
    switch_s: float


@dataclass(frozen=True)
class RingsFormed(EventRecord):
    kind: ClassVar[str] = "rings_formed"
    round: int
    virtual_time_s: float
    rings: dict[str, list[str]]  # ring id -> members in ring order
    splits: dict[str, list[int]]  # ring id -> nodes per tier of the ring's split
    edges: dict[str, str | None]  # device -> its edge (None: unavailable)
    left_out: list[str]


@dataclass(frozen=True)
class RingRound(EventRecord):
    kind: ClassVar[str] = "ring_round"
    round: int
    virtual_time_s: float
    interval_s: float
    hops: dict[str, int]
    first: dict[str, str]
    trained_hops: dict[str, int]
    samples: dict[str, int]
    ring_s: dict[str, float]
    predicted_s: dict[str, float]
    dropped: dict[str, str]  # ring id -> why its update was left out (only rings that were)
    left_out: list[str]


@dataclass(frozen=True)
class RingPass(EventRecord):
    kind: ClassVar[str] = "ring_pass"
    round: int
    virtual_time_s: float
    ring: str
    device: str
    from_edge: str
    to_edge: str
    bytes: int
    wall_duration_s: float
    ok: bool
    charged_s: float


@dataclass(frozen=True)
class Refused(EventRecord):
    kind: ClassVar[str] = "refused"
    round: int
    virtual_time_s: float
    counts: dict[str, dict[str, int]]  # port -> reason -> messages refused since the last report


@dataclass(frozen=True)
class EngineChoice(EventRecord):
    """The engine a device host trains a split and batch shape with (execution.engine; tiers/engine.py),
    stated the first time that host trains it in this process."""

    kind: ClassVar[str] = "engine"
    round: int
    virtual_time_s: float
    host: str
    key: str  # model|[cuts]|batch
    engine: str  # vectorized | looped


@dataclass(frozen=True)
class RunEnd(EventRecord):
    kind: ClassVar[str] = "run_end"
    wall_time_s: float
    virtual_time_s: float
    final_accuracy: float
    rounds: int


Event = (RunStart | RunResumed | RoundEnd | Handover | Migration | Failure | Rejoin | Rehome | Replan
         | RingsFormed | RingRound | RingPass | Refused | EngineChoice | RunEnd)

EVENT_TYPES: dict[str, type[EventRecord]] = {cls.kind: cls for cls in get_args(Event)}


# ----- reading -----

@dataclass(frozen=True)
class _Field:
    name: str
    key: str
    type_: Any
    omit_if_none: bool


def _schema(cls: type[EventRecord]) -> tuple[_Field, ...]:
    hints = get_type_hints(cls)
    return tuple(_Field(f.name, f.metadata.get(_KEY, f.name), hints[f.name], bool(f.metadata.get(_OMIT)))
                 for f in dataclasses.fields(cls))


_SCHEMAS = {kind: _schema(cls) for kind, cls in EVENT_TYPES.items()}


def _describe(tp: Any) -> str:
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if tp is bool:
        return "true or false"
    if tp is type(None):
        return "null"
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is list:
        return f"a list of ({_describe(args[0])})"
    if origin is dict:
        return f"an object of ({_describe(args[1])})"
    raise AssertionError(f"no description for {tp!r}")


def _misfit(value: Any, tp: Any) -> tuple[str, Any, Any] | None:
    """None if ``value`` fits ``tp``; else the path below it, the type expected there and the value found."""
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif tp is str:
        ok = isinstance(value, str)
    elif tp is type(None):
        ok = value is None
    else:
        origin, args = get_origin(tp), get_args(tp)
        if origin in (Union, types.UnionType):
            ok = any(_misfit(value, a) is None for a in args)
        elif origin is list:
            if not isinstance(value, list):
                return "", tp, value
            for i, item in enumerate(value):
                bad = _misfit(item, args[0])
                if bad is not None:
                    return f"[{i}]{bad[0]}", bad[1], bad[2]
            return None
        elif origin is dict:
            if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
                return "", tp, value
            for k, item in value.items():
                bad = _misfit(item, args[1])
                if bad is not None:
                    return f"[{k!r}]{bad[0]}", bad[1], bad[2]
            return None
        else:
            raise AssertionError(f"no check for {tp!r}")
    return None if ok else ("", tp, value)


_REPR = reprlib.Repr()  # bounded: the value may be large or deep
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 3, 40, 40


def _preview(value: Any) -> str:
    return _REPR.repr(value)


def parse_event(d: Mapping, where: str) -> Event:
    """The typed event of the object ``d`` (read at ``where``, e.g. ``file:line``); raises EventError
    naming ``where``, the kind and the field when a field is missing or of the wrong type, and
    UnknownEventKind when ``d["event"]`` names no kind here."""
    if not isinstance(d, Mapping):
        raise EventError(f"{where}: expected an event object, got {_preview(d)}")
    kind = d.get("event")
    if not isinstance(kind, str):
        raise EventError(f"{where}: expected an object with an 'event' name, got {_preview(kind)}")
    schema = _SCHEMAS.get(kind)
    if schema is None:
        raise UnknownEventKind(f"{where}: unknown event kind {kind[:60]!r} (expected one of "
                               f"{', '.join(sorted(EVENT_TYPES))})")
    values = {}
    for f in schema:
        if f.key not in d:
            if f.omit_if_none:
                continue
            raise EventError(f"{where}: {kind} lacks {f.key!r} (expected {_describe(f.type_)})")
        value = d[f.key]
        bad = _misfit(value, f.type_)
        if bad is not None:
            path, expected, got = bad
            raise EventError(f"{where}: malformed {kind}: {f.key}{path}: expected {_describe(expected)}, "
                             f"got {_preview(got)}")
        values[f.name] = value
    return EVENT_TYPES[kind](**values)


def parse_known_event(d: Mapping, where: str) -> Event | None:
    """As :func:`parse_event`, but None for a kind this schema does not know (a reader skips it)."""
    try:
        return parse_event(d, where)
    except UnknownEventKind:
        return None
