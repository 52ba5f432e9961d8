"""Small checkers for user-supplied values (scenario mappings, command-line flags): every failure names
the file or flag, the field and the expectation."""

from __future__ import annotations

import math
import os
import reprlib
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
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

    def point(self, key: str, default: Any = _MISSING, *, maximum_abs: float | None = None, why: str = "") \
            -> tuple[float, float]:
        value = self.get(key, default)
        if not isinstance(value, (list, tuple)) or len(value) != 2 or any(finite(v) is None for v in value):
            self.fail(key, "a pair of numbers [x, y]", value)
        if maximum_abs is not None and any(abs(v) > maximum_abs for v in value):
            self.fail(key, f"a pair of numbers [x, y] within +-{maximum_abs:g}" + (f" ({why})" if why else ""), value)
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


# ----- command-line values checked before anything starts -----

def check_run_flags(out: Path | None, metrics_addr: str | None) -> None:
    """``--out`` and ``--metrics-addr`` of a run, before a directory is created or a port is taken."""
    if out is not None:
        check_out_dir(out)
    if metrics_addr:
        check_listen_addr(metrics_addr)


def check_out_dir(path: Path, flag: str = "--out") -> None:
    """``path`` is a directory tierflow can write, or can be created as one: checked before the run
    starts, so a file in the way or a read-only parent is an error, not a traceback after the work."""
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise TierflowError(f"{flag}: expected a directory for the run's files, but {path} is a file "
                                "(name a new or existing directory)")
        if not os.access(path, os.W_OK | os.X_OK):
            raise TierflowError(f"{flag}: expected a directory tierflow can write, but {path} is not writable")
        return
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise TierflowError(f"{flag}: cannot create {path}: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise TierflowError(f"{flag}: cannot create {path}: {parent} is not writable")


def split_host_port(addr: str, flag: str = "--metrics-addr") -> tuple[str, int]:
    """``host:port`` or ``[v6]:port``; an empty host is loopback (metrics reveal the run: expose them
    on another interface only on purpose)."""
    host, sep, port_text = addr.rpartition(":")
    if not sep or not port_text.isascii() or not port_text.isdigit():
        raise TierflowError(f"{flag}: expected HOST:PORT (e.g. 127.0.0.1:9464), got {addr!r}")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise TierflowError(f"{flag}: expected a port from 0 to 65535 (0: any free port), got {port_text}")
    if host.startswith("[") != host.endswith("]"):
        raise TierflowError(f"{flag}: expected an IPv6 host in brackets ([::1]:PORT), got {addr!r}")
    host = host[1:-1] if host.startswith("[") else host
    return host or "127.0.0.1", port


def check_listen_addr(addr: str, flag: str = "--metrics-addr") -> tuple[str, int]:
    """``host:port`` (see :func:`split_host_port`) that can be listened on now.

    Binding and closing a socket tells a taken port or an address this host does not have apart from
    a typo, before a run directory exists. The port may still be taken in the instant before the
    exporter binds it; that is then reported when it fails."""
    host, port = split_host_port(addr, flag)
    try:
        family, kind, proto, _, where = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                           flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError, ValueError) as exc:
        raise TierflowError(f"{flag}: cannot resolve the host {host!r} ({exc})") from None
    try:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the HTTP server does
            probe.bind(where)
    except OSError as exc:
        raise TierflowError(f"{flag}: cannot listen on {addr} ({exc.strerror or exc}); expected a free port on "
                            "an address of this host") from None
    return host, port
