"""Small checkers for user-supplied mappings: every failure names the file, the field and the expectation."""

from __future__ import annotations

import math
import reprlib
from collections.abc import Mapping, Sequence
from typing import Any

from tierflow.orchestrator.errors import TierflowError

_MISSING = object()


class Fields:
    """A view of one YAML mapping that knows its file and field path, for error messages."""

    def __init__(self, source: str, path: str, data: Any):
        self.source = source
        self.path = path
        if not isinstance(data, Mapping):
            self.fail("", "a mapping", data)
        self.data: Mapping[str, Any] = data
        self.used: set[str] = set()

    def field(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def fail(self, key: str, expected: str, got: Any) -> None:
        where = self.field(key) if key else (self.path or "top level")
        raise TierflowError(f"{self.source}: {where}: expected {expected}, got {_show(got)}")

    def get(self, key: str, default: Any = _MISSING) -> Any:
        self.used.add(key)
        if key not in self.data or self.data[key] is None:
            if default is _MISSING:
                raise TierflowError(f"{self.source}: {self.field(key)}: missing (required)")
            return default
        return self.data[key]

    def sub(self, key: str, default: Any = _MISSING) -> Fields:
        return Fields(self.source, self.field(key), self.get(key, default))

    def items(self, key: str, default: Any = _MISSING) -> list[Fields]:
        value = self.get(key, default)
        if not isinstance(value, list):
            self.fail(key, "a list", value)
        return [Fields(self.source, f"{self.field(key)}[{i}]", v) for i, v in enumerate(value)]

    def number(self, key: str, default: Any = _MISSING, *, positive: bool = False, minimum: float | None = None,
               maximum: float | None = None, why: str = "") -> float:
        value = self.get(key, default)
        because = f" ({why})" if why else ""
        if finite(value) is None:
            self.fail(key, "a positive number" if positive else "a number", value)
        if positive and value <= 0:
            self.fail(key, "a positive number", value)
        if minimum is not None and value < minimum:
            self.fail(key, f"a number >= {minimum:g}" + because, value)
        if maximum is not None and value > maximum:
            self.fail(key, f"a number <= {maximum:g}" + because, value)
        return float(value)

    def integer(self, key: str, default: Any = _MISSING, *, minimum: int = 0, maximum: int | None = None,
                why: str = "") -> int:
        """A whole number in ``[minimum, maximum]``; ``why`` says what the upper bound protects, and
        goes into the message so the user learns the reason, not just the number."""
        value = self.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.fail(key, f"an integer >= {minimum}", value)
        if maximum is not None and value > maximum:
            self.fail(key, f"an integer <= {maximum:,}" + (f" ({why})" if why else ""), value)
        return int(value)

    def string(self, key: str, default: Any = _MISSING, *, choices: Sequence[str] | None = None) -> str:
        value = self.get(key, default)
        if not isinstance(value, str) or not value:
            self.fail(key, "a non-empty string", value)
        if choices is not None and value not in choices:
            self.fail(key, "one of " + ", ".join(repr(c) for c in choices), value)
        return value

    def boolean(self, key: str, default: Any = _MISSING) -> bool:
        value = self.get(key, default)
        if not isinstance(value, bool):
            self.fail(key, "true or false", value)
        return value

    def point(self, key: str, default: Any = _MISSING) -> tuple[float, float]:
        value = self.get(key, default)
        if not isinstance(value, (list, tuple)) or len(value) != 2 or any(finite(v) is None for v in value):
            self.fail(key, "a pair of numbers [x, y]", value)
        return float(value[0]), float(value[1])

    def reject_unknown(self) -> None:
        unknown = sorted(set(self.data) - self.used, key=str)  # YAML keys need not be strings, nor comparable
        if unknown:
            raise TierflowError(
                f"{self.source}: {self.field(unknown[0])}: unknown field (expected one of: "
                f"{', '.join(sorted(self.used))})"
            )


def finite(value: Any) -> float | None:
    """``value`` as a float if it is a finite real number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        x = float(value)  # a YAML integer can be too large for a float
    except OverflowError:
        return None
    return x if math.isfinite(x) else None


# Bounded work whatever the value: YAML aliases can make a small file a huge (or cyclic) structure.
_repr = reprlib.Repr()
_repr.maxlevel, _repr.maxlist, _repr.maxtuple, _repr.maxdict = 3, 6, 6, 4
_repr.maxstring, _repr.maxlong, _repr.maxother = 60, 60, 60


def _show(value: Any) -> str:
    text = _repr.repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
