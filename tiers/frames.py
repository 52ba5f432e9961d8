"""Authenticated data-plane messages: only a holder of the run's key can step a session, each step once.

The construction is the migration channel's (migration/channel.py): every message carries a
Poly1305 tag under a one-time key ``HMAC-SHA256(key, label || head)``, over its frames tagged and
length-prefixed, then their count. Poly1305 runs at ~12 GB/s here, so a step pays microseconds
(benchmarks/dataplane_auth.py measures it against the unauthenticated protocol in the same run).

    request  [MAGIC, head, tag, wire header, *chunks]
    reply    [MAGIC, head, tag, wire header, *chunks]   the request's head, under the reply label
    refusal  [wire header]                              unauthenticated: the request did not authenticate

``head`` is the sender's random id (16 bytes), its message counter (u64) and its send time (f64).
A receiver refuses a counter not above the last it accepted from that sender (replay) and a send
time outside ``max_age_s`` (a replay to a receiver that has forgotten the sender). A reply is
bound to its request's head, so no third party can answer a step with gradients of its choosing.

Frames are bounded: arrays travel in chunks of at most ``CHUNK_BYTES``, so no legitimate frame is
larger; sockets set ``ZMQ_MAXMSGSIZE`` to ``FRAME_LIMIT_BYTES`` (twice that, a margin) and libzmq
drops a peer that sends a bigger frame before buffering it. Frames between the two are refused here.
"""

from __future__ import annotations

import hmac
import secrets
import struct
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from tierflow.migration.mac import as_bytes, items_tag
from tierflow.migration.wire import MAX_HEADER_BYTES

MAGIC = b"tfd1"
CHUNK_BYTES = 1 << 22  # 4 MiB: activations above this are sent in chunks (one copy on arrival)
FRAME_LIMIT_BYTES = 2 * max(CHUNK_BYTES, MAX_HEADER_BYTES)
HEAD = struct.Struct("<16sQd")  # sender id, counter, send time (s since the epoch)
TAG_BYTES = 16
MAX_SENDERS = 4096  # a run has one sender per device host and edge; only authentic senders are remembered
_LABEL_REQUEST = b"tierflow-dataplane-v1 request\x00"
_LABEL_REPLY = b"tierflow-dataplane-v1 reply\x00"


class FrameError(Exception):
    """A message that is not an authentic, fresh data-plane message; ``reason`` is a metric label."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


def run_key(token: str | bytes) -> bytes:
    """The MAC key from the run's token (at least 16 bytes: the runner draws 32 random hex digits)."""
    key = token.encode() if isinstance(token, str) else bytes(token)
    if len(key) < 16:
        raise ValueError("data-plane token: expected at least 16 random bytes")
    return key


def _tag(key: bytes, label: bytes, head: bytes, frames) -> bytes:
    return items_tag(key, label, head, frames)


def check_sizes(frames) -> None:
    """Refuse frames no tierflow peer sends (a larger one never gets this far: libzmq drops its peer)."""
    for i, frame in enumerate(frames):
        n = len(as_bytes(frame))
        if n > CHUNK_BYTES:
            raise FrameError(f"frame {i} of {n} bytes exceeds the {CHUNK_BYTES}-byte chunk size", "oversize")


@dataclass(frozen=True)
class Head:
    sender: bytes
    counter: int
    sent_s: float

    def pack(self) -> bytes:
        return HEAD.pack(self.sender, self.counter, self.sent_s)


class Sealer:
    """The sending side: one random id, a counter that only grows."""

    def __init__(self, key: bytes):
        self._key = key
        self._sender = secrets.token_bytes(16)
        self._counter = 0
        self._lock = threading.Lock()

    def seal_request(self, wire_frames: list) -> tuple[bytes, list]:
        with self._lock:
            self._counter += 1
            head = Head(self._sender, self._counter, time.time()).pack()
        return head, [MAGIC, head, _tag(self._key, _LABEL_REQUEST, head, wire_frames), *wire_frames]

    def open_reply(self, head: bytes, frames: list) -> list:
        """The reply's wire frames if it answers ``head`` under the key; FrameError otherwise."""
        if len(frames) < 4 or as_bytes(frames[0]) != MAGIC:
            raise FrameError("not an authenticated answer", "unauthenticated")
        check_sizes(frames[3:])
        tag = bytes(as_bytes(frames[2]))
        if bytes(as_bytes(frames[1])) != head or not hmac.compare_digest(
                tag, _tag(self._key, _LABEL_REPLY, head, frames[3:])):
            raise FrameError("bad MAC on the answer: not from a holder of this run's token", "unauthenticated")
        return frames[3:]


class Opener:
    """The receiving side: authenticates requests, refuses replays, seals replies."""

    def __init__(self, key: bytes, max_age_s: float = 600.0):
        self._key = key
        self._max_age_s = float(max_age_s)
        self._last: OrderedDict[bytes, int] = OrderedDict()  # sender -> last accepted counter, oldest first

    def open_request(self, frames: list) -> tuple[bytes, list]:
        """(head, wire frames) of an authentic, fresh request; FrameError otherwise."""
        if len(frames) < 4 or as_bytes(frames[0]) != MAGIC:
            raise FrameError(f"{len(frames)} frames: not a data-plane request", "malformed")
        head = bytes(as_bytes(frames[1]))
        if len(head) != HEAD.size or len(as_bytes(frames[2])) != TAG_BYTES:
            raise FrameError("malformed head or tag", "malformed")
        check_sizes(frames[3:])
        if not hmac.compare_digest(bytes(as_bytes(frames[2])), _tag(self._key, _LABEL_REQUEST, head, frames[3:])):
            raise FrameError("bad MAC: not this run's token, or an altered message", "unauthenticated")
        sender, counter, sent_s = HEAD.unpack(head)
        age = time.time() - sent_s
        if not abs(age) <= self._max_age_s:
            raise FrameError(f"sent {age:.0f} s ago, outside the {self._max_age_s:g} s replay window", "replayed")
        last = self._last.get(sender)
        if last is not None and counter <= last:
            raise FrameError(f"replayed message (counter {counter}, last accepted {last})", "replayed")
        self._last[sender] = counter
        self._last.move_to_end(sender)
        if len(self._last) > MAX_SENDERS:
            self._last.popitem(last=False)
        return head, frames[3:]

    def seal_reply(self, head: bytes, wire_frames: list) -> list:
        return [MAGIC, head, _tag(self._key, _LABEL_REPLY, head, wire_frames), *wire_frames]
