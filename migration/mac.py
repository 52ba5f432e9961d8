"""One message authentication code for every tierflow port (the migration channel, the data plane).

A Poly1305 tag under a one-time key ``HMAC-SHA256(key, label || nonce)``, over the message's items
tagged and length-prefixed, then their count: a one-time key per (label, nonce) is what Poly1305
needs, and framing each item stops bytes moving between items without changing the tag.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from cryptography.hazmat.primitives.poly1305 import Poly1305


def as_bytes(frame) -> memoryview:
    """A byte view of a zmq frame, a buffer or bytes, without copying."""
    return memoryview(getattr(frame, "buffer", frame)).cast("B")


class ItemMac:
    """The tag over items fed one by one (``update``), finished by ``tag``."""

    def __init__(self, key: bytes, label: bytes, nonce: bytes):
        self._mac = Poly1305(hmac.digest(key, label + nonce, "sha256"))
        self._n = 0

    def update(self, item) -> None:
        buf = as_bytes(item)
        self._mac.update(b"\x01" + len(buf).to_bytes(8, "little"))
        self._mac.update(buf)
        self._n += 1

    def tag(self) -> bytes:
        self._mac.update(b"\x00" + self._n.to_bytes(8, "little"))
        return self._mac.finalize()


def items_tag(key: bytes, label: bytes, nonce: bytes, items: Iterable) -> bytes:
    mac = ItemMac(key, label, nonce)
    for item in items:
        mac.update(item)
    return mac.tag()
