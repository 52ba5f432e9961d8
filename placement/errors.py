"""The placement package's user-facing errors: one type per kind a user can cause."""

from __future__ import annotations


class PlacementError(ValueError):
    """Base of the errors a user's input can cause in placement."""


class InvalidInstanceError(PlacementError):
    """A cost-graph instance file is malformed; the message names the file and the field path."""


class InfeasiblePlacementError(PlacementError):
    """No placement satisfies the pins and the device memory limit."""
