"""The link to the tier above: one step's (or one device group's) activations up and its answer down.

Over the pyzmq data plane when the link is an endpoint (tiers/dataplane.py), or as a direct call
on a plain object or a Ray actor handle (the oracle tests drive the hosts in one process).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tierflow.tiers.dataplane import DataPlaneClient, PendingReply


def call(target, method: str, *args):
    """Call ``target.method(*args)`` whether target is a Ray actor handle or a plain object."""
    bound = getattr(target, method)
    if hasattr(bound, "remote"):
        import ray

        return ray.get(bound.remote(*args))
    return bound(*args)


@dataclass(frozen=True)
class UpperReply:
    """What the tier above answers to one step: input gradients and what the step cost up there."""

    grads: list[np.ndarray]
    loss: float
    correct: int
    compute_s: tuple[float, ...]  # per tier above the caller
    bytes_up: tuple[int, ...]  # per link above the caller
    bytes_down: tuple[int, ...]


def reply_to_wire(reply: UpperReply) -> tuple[dict, dict[str, np.ndarray]]:
    meta = {"correct": reply.correct, "compute_s": list(reply.compute_s),
            "bytes_up": list(reply.bytes_up), "bytes_down": list(reply.bytes_down), "n": len(reply.grads)}
    arrays = {f"g{i}": g for i, g in enumerate(reply.grads)}
    arrays["loss"] = np.array(reply.loss)  # an array, not JSON: a poisoned step's loss is NaN
    return meta, arrays


def _reply_from_wire(meta: dict, arrays: dict[str, np.ndarray]) -> UpperReply:
    grads = [arrays[f"g{i}"] for i in range(int(meta["n"]))]
    return UpperReply(grads, float(arrays["loss"]), int(meta["correct"]), tuple(meta["compute_s"]),
                      tuple(meta["bytes_up"]), tuple(meta["bytes_down"]))


ROUTE_SEP = "#"  # never part of a zmq endpoint


def route(endpoint: str, server: str) -> str:
    """A link to one logical server behind a shared data-plane endpoint (an edge host's)."""
    return f"{endpoint}{ROUTE_SEP}{server}"


def _routed(link: str, meta: dict) -> tuple[str, dict]:
    """The endpoint to send to, and the message naming the logical server it is for (if any)."""
    endpoint, sep, server = link.partition(ROUTE_SEP)
    return endpoint, ({**meta, "edge": server} if sep else meta)


def step_upper(link, client: DataPlaneClient | None, device_id: str, arrays: list[np.ndarray],
               labels: np.ndarray) -> UpperReply:
    """One step on the tier above: over the pyzmq data plane when ``link`` is an endpoint."""
    if isinstance(link, str):
        return submit_step(link, client, device_id, arrays, labels).wait()
    return call(link, "step", device_id, arrays, labels)


class PendingStep:
    """A step sent up a data-plane link; ``wait`` is its answer."""

    def __init__(self, pending: PendingReply):
        self._pending = pending

    def wait(self) -> UpperReply:
        return _reply_from_wire(*self._pending.wait())


def submit_step(link: str, client: DataPlaneClient, device_id: str, arrays: list[np.ndarray],
                labels: np.ndarray) -> PendingStep:
    """Send one step up a data-plane link and return at once (several may be in flight)."""
    return PendingStep(client.submit(*_routed(link, {"op": "step", "device": device_id, "n": len(arrays)}),
                                     _step_payload(arrays, labels)))


def _step_payload(arrays: list[np.ndarray], labels: np.ndarray) -> dict[str, np.ndarray]:
    """A step's (or a group's stacked) activations and labels, as the edge's handler reads them."""
    payload = {f"a{i}": a for i, a in enumerate(arrays)}
    payload["labels"] = labels
    return payload


@dataclass(frozen=True)
class UpperGroupReply:
    """What the tier above answers to one step of a device group, every array stacked on dim 0 in
    the group's device order: what ``UpperReply`` holds for each device."""

    grads: list[np.ndarray]  # each [K, ...]
    loss: np.ndarray  # [K] float64
    correct: np.ndarray  # [K] int64
    compute_s: np.ndarray  # [K, tiers above the caller]
    bytes_up: np.ndarray  # [K, links above the caller] int64
    bytes_down: np.ndarray


_GROUP_FIELDS = ("loss", "correct", "compute_s", "bytes_up", "bytes_down")


def group_reply_to_wire(reply: UpperGroupReply) -> tuple[dict, dict[str, np.ndarray]]:
    arrays = {f"g{i}": g for i, g in enumerate(reply.grads)}
    arrays.update({f: getattr(reply, f) for f in _GROUP_FIELDS})
    return {"n": len(reply.grads)}, arrays


def _group_reply_from_wire(meta: dict, arrays: dict[str, np.ndarray], k: int) -> UpperGroupReply:
    reply = UpperGroupReply([arrays[f"g{i}"] for i in range(int(meta["n"]))],
                            *(np.asarray(arrays[f]) for f in _GROUP_FIELDS))
    for a in (*reply.grads, *(getattr(reply, f) for f in _GROUP_FIELDS)):
        if a.ndim == 0 or a.shape[0] != k:
            raise ValueError(f"a group reply for {k} devices holds an array of shape {a.shape}")
    return reply


def step_upper_many(link, client: DataPlaneClient | None, device_ids: Sequence[str], arrays: list[np.ndarray],
                    labels: np.ndarray) -> UpperGroupReply:
    """One step of a device group on the tier above, in one message each way (``arrays`` and
    ``labels`` stacked in ``device_ids`` order); a plain object is called directly."""
    if isinstance(link, str):
        meta, out = client.request(*_routed(link, {"op": "step_many", "devices": list(device_ids),
                                                    "n": len(arrays)}), _step_payload(arrays, labels))
        return _group_reply_from_wire(meta, out, len(device_ids))
    return call(link, "step_many", list(device_ids), arrays, labels)
