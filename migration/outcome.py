"""What one session move between edges did: the source's answer, typed."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MigrationOutcome:
    ok: bool  # the destination verified and acknowledged the session
    bytes_: int  # bytes sent over the migration channel
    duration_s: float  # wall seconds the move took on this machine
    error: str = ""  # why it failed (the source copy is intact)
