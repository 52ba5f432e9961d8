"""The shape of a checkpoint's ``state.json``, checked before anything is restored from it.

A checkpoint another tierflow version wrote, or one edited by hand, must be refused with the key
that is wrong and what it should hold, before Ray starts, not fail later as a KeyError in the
middle of a restore. The spec below mirrors what ``Orchestrator.save_checkpoint`` writes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tierflow.orchestrator.errors import TierflowError


class Spec:
    expected: str

    def check(self, value: Any, where: str, fail) -> None:
        raise NotImplementedError


@dataclass(frozen=True)
class Scalar(Spec):
    expected: str
    types: tuple[type, ...]
    minimum: float | None = None

    def check(self, value, where, fail) -> None:
        if isinstance(value, bool) and bool not in self.types or not isinstance(value, self.types):
            fail(where, self.expected, value)
        if self.minimum is not None and value < self.minimum:
            fail(where, self.expected, value)


@dataclass(frozen=True)
class Nullable(Spec):
    inner: Spec

    @property
    def expected(self) -> str:
        return f"{self.inner.expected} or null"

    def check(self, value, where, fail) -> None:
        if value is not None:
            self.inner.check(value, where, fail)


@dataclass(frozen=True)
class ListOf(Spec):
    item: Spec
    length: int | None = None

    @property
    def expected(self) -> str:
        n = "" if self.length is None else f"{self.length} "
        return f"a list of {n}({self.item.expected})"

    def check(self, value, where, fail) -> None:
        if not isinstance(value, list) or self.length is not None and len(value) != self.length:
            fail(where, self.expected, value)
        for i, v in enumerate(value):
            self.item.check(v, f"{where}[{i}]", fail)


@dataclass(frozen=True)
class Pair(Spec):
    first: Spec
    second: Spec

    @property
    def expected(self) -> str:
        return f"a pair [{self.first.expected}, {self.second.expected}]"

    def check(self, value, where, fail) -> None:
        if not isinstance(value, list) or len(value) != 2:
            fail(where, self.expected, value)
        self.first.check(value[0], f"{where}[0]", fail)
        self.second.check(value[1], f"{where}[1]", fail)


@dataclass(frozen=True)
class MapOf(Spec):
    value: Spec

    @property
    def expected(self) -> str:
        return f"a mapping of names to ({self.value.expected})"

    def check(self, value, where, fail) -> None:
        if not isinstance(value, dict):
            fail(where, self.expected, value)
        for k, v in value.items():
            self.value.check(v, f"{where}.{k}", fail)


@dataclass(frozen=True)
class Fields(Spec):
    fields: Mapping[str, Spec]

    @property
    def expected(self) -> str:
        return "a mapping with " + ", ".join(self.fields)

    def check(self, value, where, fail) -> None:
        if not isinstance(value, dict):
            fail(where, self.expected, value)
        for key, spec in self.fields.items():
            if key not in value:
                fail(f"{where}.{key}", f"{spec.expected} (the key is missing)", None, missing=True)
            spec.check(value[key], f"{where}.{key}", fail)


INT = Scalar("a whole number >= 0", (int,), minimum=0)
NUMBER = Scalar("a number", (int, float))
TEXT = Scalar("a string", (str,))
ANY_MAP = Scalar("a mapping", (dict,))
SPLIT = Fields({"tiers": ListOf(Pair(TEXT, INT)), "n_tiers": INT})

STATE = Fields({
    "round": INT,
    "scenario_fingerprint": TEXT,
    "scenario_path": TEXT,
    "events_bytes": INT,
    "events_sha256": TEXT,
    "wall_time_s": NUMBER,
    "virtual_time_s": NUMBER,
    "mobility_t": NUMBER,
    "counters": MapOf(NUMBER),
    "bytes_total": MapOf(MapOf(INT)),
    "time_to_target": Nullable(MapOf(NUMBER)),
    "session_at": MapOf(TEXT),
    "edge_of": MapOf(Nullable(TEXT)),
    "detector": MapOf(Nullable(TEXT)),
    "edges": ListOf(TEXT),
    "lost_hosts": ListOf(INT),
    "measured_flops": MapOf(NUMBER),
    "splits": MapOf(SPLIT),
    "plans": MapOf(Fields({"edge": TEXT, "period_s": NUMBER})),
    "pending_extra_s": MapOf(NUMBER),
    "switch_from": MapOf(SPLIT),
    "observed": MapOf(Pair(TEXT, ListOf(NUMBER, length=4))),
    "profile_digest": Nullable(TEXT),
    "round_policy": ANY_MAP,
    "cohort": Nullable(ListOf(TEXT)),
    "engines": MapOf(MapOf(TEXT)),
})
DOCUMENT = Fields({"state": STATE, "devices": MapOf(ANY_MAP), "sessions": MapOf(MapOf(ANY_MAP))})


def check_state_document(doc: Any, source: str) -> None:
    """Raise TierflowError naming ``source``, the key and what it should hold, if ``doc`` is not the
    document ``save_checkpoint`` writes."""
    def fail(where: str, expected: str, value: Any, missing: bool = False):
        got = "nothing" if missing else json.dumps(value, default=repr)[:120]
        raise TierflowError(f"{source}: {where.lstrip('.') or 'the document'}: expected {expected}, got {got}")

    DOCUMENT.check(doc, "", fail)
