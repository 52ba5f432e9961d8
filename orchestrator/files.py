"""The one way tierflow reads a file a user names: bounded, regular files only, errors that name it.

A scenario points at other files (traces, layer profiles, datasets, checkpoints); any of them may
be a FIFO, a device such as /dev/zero, a directory, huge, or not text. Every reader goes through
here, so one set of rules holds for all of them: a regular file, at most ``max_bytes`` (read until
one byte past the bound, never the whole of an endless stream), and UTF-8 text where text is
expected. Parsers in placement/ and migration/ take the text, never a path.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from tierflow.orchestrator.errors import TierflowError

MiB = 1 << 20
TEXT_LIMIT_BYTES = 64 * MiB  # scenario, traces, profiles, instances: far beyond any real one
EVENT_LOG_LIMIT_BYTES = 1024 * MiB  # a run's own log: a round of 100,000 devices is a few MiB


def _open_regular(path: Path, what: str):
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO must not block the open
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        reason = getattr(exc, "strerror", None) or str(exc)
        raise TierflowError(f"{path}: cannot read the {what} ({reason})") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file (a pipe, socket or device)"
        raise TierflowError(f"{path}: expected a regular file for the {what}, got {kind}")
    return os.fdopen(fd, "rb")


def read_bytes(path: str | Path, what: str, max_bytes: int = TEXT_LIMIT_BYTES) -> bytes:
    """The file's bytes; ``what`` names it in errors ("resource trace", "layer profile", ...)."""
    path = Path(path)
    with _open_regular(path, what) as fh:
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise TierflowError(f"{path}: the {what} is larger than {max_bytes / MiB:g} MiB; "
                            "expected a smaller file (is it the right one?)")
    return data


def read_text(path: str | Path, what: str, max_bytes: int = TEXT_LIMIT_BYTES) -> str:
    """The file as UTF-8 text (a byte-order mark is dropped); non-text is an error naming the offset."""
    raw = read_bytes(path, what, max_bytes)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise TierflowError(f"{path}: expected UTF-8 text for the {what}, got byte {raw[exc.start]:#04x} at "
                            f"offset {exc.start}") from None
