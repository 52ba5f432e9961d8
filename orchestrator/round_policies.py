"""Round policies by name (``policy.rings`` picks one), apart from the policies themselves so that
neither policy module needs the other."""

from __future__ import annotations

from collections.abc import Callable

from tierflow.orchestrator.rings_round import RingRounds
from tierflow.orchestrator.rounds import RoundPolicy, SyncRounds

# Each entry makes a fresh policy object.
ROUND_POLICIES: dict[str, Callable[[], RoundPolicy]] = {"sync": SyncRounds, "rings": RingRounds}


def round_policy_for(rings: int | str) -> RoundPolicy:
    """``policy.rings: off`` trains synchronously; anything else (``auto`` or K) in capability rings."""
    return ROUND_POLICIES["sync" if rings == "off" else "rings"]()
