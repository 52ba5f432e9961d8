"""Edge-to-edge session transfer over pyzmq, authenticated with a per-run key.

A transfer is one multipart message: an auth header (session id, random nonce), its MAC, then the
wire frames (migration/wire.py). The MAC is HMAC-SHA256 over the header and every frame
(length-prefixed), checked before a byte is decoded; a nonce seen before is refused (replay). The
receiver calls ``on_session`` to load and verify the state and answers ACK only if that succeeded;
the answer carries its own MAC, so nobody else can make a source drop its copy.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import zmq

from migration.errors import MigrationError, WireError
from migration.wire import decode_state, encode_state

log = logging.getLogger(__name__)
OnSession = Callable[[str, dict, dict[str, np.ndarray]], None]


def _mac(key: bytes, frames) -> bytes:
    mac = hmac.new(key, digestmod=hashlib.sha256)
    for frame in frames:
        buf = frame.buffer if hasattr(frame, "buffer") else memoryview(frame)
        mac.update(len(buf).to_bytes(8, "little"))
        mac.update(buf)
    return mac.digest()


@dataclass(frozen=True)
class TransferStats:
    bytes_: int
    duration_s: float
    chunks: int


class MigrationReceiver:
    """Listens for sessions on a random port of ``host``; one thread, never crashes on bad input."""

    def __init__(self, key: bytes, on_session: OnSession, host: str = "127.0.0.1"):
        self._key = key
        self._on_session = on_session
        self._sock = zmq.Context.instance().socket(zmq.ROUTER)
        self._sock.linger = 0
        self._sock.rcvtimeo = 100
        self.endpoint = f"tcp://{host}:{self._sock.bind_to_random_port(f'tcp://{host}')}"
        self.rejected = 0
        self.accepted = 0
        self._nonces: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="tierflow-migration", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                frames = self._sock.recv_multipart(copy=False)
            except zmq.Again:
                continue
            identity, body = frames[0], frames[1:]
            try:
                reply = self._handle(body)
            except Exception as exc:  # the thread must survive anything a peer sends
                self.rejected += 1
                log.warning("migration: rejected a message: %s", exc)
                continue  # unauthenticated senders get no answer at all
            self._sock.send_multipart([identity, *reply])

    def _handle(self, body) -> list[bytes]:
        if len(body) < 2:
            raise WireError("not a transfer message")
        head, mac, frames = body[0], bytes(body[1].buffer), body[2:]
        if not hmac.compare_digest(mac, _mac(self._key, [head, *frames])):
            raise WireError("bad MAC: unauthenticated peer or altered message")
        auth = json.loads(bytes(head.buffer))
        session_id, nonce = str(auth["session"]), str(auth["nonce"])
        if nonce in self._nonces:
            raise WireError("replayed nonce")
        self._nonces.add(nonce)
        meta, arrays = decode_state(frames)
        try:
            self._on_session(session_id, meta, arrays)
        except Exception as exc:
            log.warning("migration: session %s refused by the destination: %s", session_id, exc)
            verdict = f"NACK {type(exc).__name__}: {exc}".encode()[:1000]
        else:
            self.accepted += 1
            verdict = b"ACK"
        return [verdict, _mac(self._key, [verdict, nonce.encode()])]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._sock.close(0)


def send_state(endpoint: str, key: bytes, session_id: str, meta: Mapping, arrays: Mapping[str, np.ndarray],
               timeout_s: float = 10.0, chunk_bytes: int = 2**21) -> TransferStats:
    """Stream a session to ``endpoint`` and wait for its authenticated ACK; raise MigrationError otherwise."""
    t0 = time.perf_counter()
    frames = encode_state(meta, arrays, chunk_bytes)
    nonce = secrets.token_hex(16)
    head = json.dumps({"session": session_id, "nonce": nonce}).encode()
    mac = _mac(key, [head, *frames])
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0  # a dead peer must not keep this process waiting at exit
    try:
        sock.connect(endpoint)
        sock.send_multipart([head, mac, *frames], copy=False)
        if not sock.poll(int(timeout_s * 1000), zmq.POLLIN):
            raise MigrationError(f"no answer from {endpoint} within {timeout_s:g} s")
        reply = sock.recv_multipart()
    finally:
        sock.close(0)
    if len(reply) != 2 or not hmac.compare_digest(reply[1], _mac(key, [reply[0], nonce.encode()])):
        raise MigrationError(f"unauthenticated answer from {endpoint}")
    if reply[0] != b"ACK":
        raise MigrationError(f"{endpoint} refused session {session_id}: {reply[0].decode(errors='replace')}")
    nbytes = sum(len(memoryview(f)) for f in frames[1:])
    return TransferStats(nbytes, time.perf_counter() - t0, len(frames) - 1)
