"""What a device host reports for one device's training in a segment (the clock and metrics read it)."""

from __future__ import annotations

from dataclasses import dataclass

NOT_HOSTED = "device not hosted here (its host restarted and lost it)"


@dataclass(frozen=True)
class TrainReport:
    """One device's local training since the last report: the clock and the metrics read it."""

    device_id: str
    edge: str | None
    steps: int
    samples: int
    loss_sum: float
    correct: int
    compute_s: tuple[float, float, float]  # device, edge, cloud
    bytes_up: tuple[int, int]  # device-edge, edge-cloud
    bytes_down: tuple[int, int]
    n_tiers: int
    finite: bool = True
    error: str = ""  # non-empty: the segment failed (e.g. its edge stopped answering); not aggregated
    not_hosted: bool = False  # the host restarted and lost the device: it must be given its devices again
    engine: str = "looped"  # the engine this host chose for the device's split and batch (tiers/engine.py)
