"""What happens to a device's offloaded session when it moves to another edge (chosen by name).

``migrate`` (FedFly): the source streams the session to the destination over pyzmq; the device is
re-routed only after the destination has loaded, verified and acknowledged it, and only then is
the source copy dropped. ``restart`` (the baseline): the session is thrown away and the device's
current period starts over at the new edge from the last aggregated model. Synchronous rounds move
a device's own session, ring rounds the ring's session its active member trains against; both go
through the policy, each with its own ``SessionMover``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class MoveResult:
    ok: bool
    bytes_: int
    duration_s: float  # wall seconds the move took on this machine
    virtual_s: float  # what it costs the device in the run's clock
    restarted: bool = False  # the device's period starts over
    error: str = ""


class SessionMover(Protocol):
    """Moves one kind of session (a device's, or a ring's) from edge to edge, both ways."""

    def migrate_session(self, device_id: str, src: str, dst: str) -> MoveResult: ...

    def restart_session(self, device_id: str, src: str, dst: str) -> MoveResult: ...


class HandoverPolicy(Protocol):
    name: str

    def move(self, mover: SessionMover, device_id: str, src: str, dst: str) -> MoveResult: ...


class Migrate:
    name = "migrate"

    def move(self, mover: SessionMover, device_id: str, src: str, dst: str) -> MoveResult:
        return mover.migrate_session(device_id, src, dst)


class Restart:
    name = "restart"

    def move(self, mover: SessionMover, device_id: str, src: str, dst: str) -> MoveResult:
        return mover.restart_session(device_id, src, dst)


HANDOVER_POLICIES = {"migrate": Migrate, "restart": Restart}
