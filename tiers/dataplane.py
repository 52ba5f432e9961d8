"""The per-step data plane: activations up, gradients down, over pyzmq instead of Ray calls.

A Ray actor call costs ~2.8 ms round trip on this machine; one training step of a small model
costs less than that, so steps travel as pyzmq messages between the device hosts and the edge
servers (and edge to cloud), in the project's one wire format (migration/wire.py: a JSON header
plus raw array frames, never pickle). Control (sessions, aggregation, migration) stays on Ray.
Every message is authenticated under a key from the run's token and refused if replayed
(tiers/frames.py); frames are size-bounded, a bigger one ends its peer's connection inside
libzmq. A refused request is answered with an unauthenticated error, touches no session, is
counted by reason (``refusals``) and logged at a bounded rate.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import zmq

from tierflow.migration.errors import WireError
from tierflow.migration.refusals import RefusalCounter
from tierflow.migration.wire import decode_state, encode_state
from tierflow.tiers.frames import CHUNK_BYTES, FRAME_LIMIT_BYTES, FrameError, Opener, Sealer, run_key

log = logging.getLogger(__name__)

Handler = Callable[[dict, dict[str, np.ndarray]], tuple[dict, dict[str, np.ndarray]]]


class DataPlaneError(RuntimeError):
    """A data-plane message was refused, or its peer did not answer in time."""


class DataPlaneTimeout(DataPlaneError):
    """The peer did not answer in time (it may be dead): asking again would wait again."""


def encode(meta: Mapping, arrays: Mapping[str, np.ndarray]) -> list:
    """The project's one wire format (migration/wire.py), in chunks no frame limit refuses; no CRC:
    the MAC covers every byte (as on the migration channel)."""
    return encode_state(meta, arrays, chunk_bytes=CHUNK_BYTES, checksum=False)


def decode(frames: list) -> tuple[dict, dict[str, np.ndarray]]:
    try:
        return decode_state(frames, require_checksum=False)
    except WireError as exc:
        raise DataPlaneError(str(exc)) from exc


class DataPlaneServer:
    """A ROUTER socket served by a thread of the actor that owns ``handler``."""

    def __init__(self, handler: Handler, token: str, host: str = "127.0.0.1", max_age_s: float = 600.0):
        self._handler = handler
        self._opener = Opener(run_key(token), max_age_s)
        self._ctx = zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.linger = 0
        self._sock.maxmsgsize = FRAME_LIMIT_BYTES  # libzmq drops a peer sending a bigger frame, unbuffered
        port = self._sock.bind_to_random_port(f"tcp://{host}")
        self.endpoint = f"tcp://{host}:{port}"
        self.refusals = RefusalCounter(log)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="tierflow-dataplane", daemon=True)
        self._thread.start()

    @property
    def rejected(self) -> int:
        return self.refusals.total

    def _serve(self) -> None:
        self._sock.rcvtimeo = 100  # wake up to notice close(); a blocking recv is cheaper than a poller
        while not self._stop.is_set():
            try:
                frames = self._sock.recv_multipart(copy=False)
            except zmq.Again:
                self.refusals.log.tick()
                continue
            if len(frames) < 3:
                self.refusals.refuse("malformed", "data plane %s: refused a message: not a REQ envelope",
                                     self.endpoint)
                continue  # nothing to answer
            envelope, payload = frames[:2], frames[2:]
            try:
                head, wire = self._opener.open_request(payload)
            except FrameError as exc:
                self.refusals.refuse(exc.reason, "data plane %s: refused a message (%s): %s", self.endpoint,
                                     exc.reason, exc)
                self._send(envelope, encode({"error": f"refused ({exc.reason}): {exc}"}, {}))
                continue
            try:  # authentic from here on: a holder of the run's token
                meta, arrays = decode(wire)
            except DataPlaneError as exc:
                self.refusals.refuse("malformed", "data plane %s: refused a message (malformed): %s",
                                     self.endpoint, exc)
                self._send(envelope, self._opener.seal_reply(head, encode({"error": f"DataPlaneError: {exc}"}, {})))
                continue
            try:
                reply = encode(*self._handler(meta, arrays))
            except Exception as exc:  # answer every request; a failed step must not kill the server
                log.warning("data plane %s: a step failed: %s: %s", self.endpoint, type(exc).__name__, exc)
                reply = encode({"error": f"{type(exc).__name__}: {exc}"}, {})
            self._send(envelope, self._opener.seal_reply(head, reply))
        self.refusals.log.flush()

    def _send(self, envelope: list, frames: list) -> None:
        try:
            self._sock.send_multipart([*envelope, *frames], copy=False)
        except zmq.ZMQError as exc:
            log.warning("data plane %s: could not answer: %s", self.endpoint, exc)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._sock.close(0)


class DataPlaneClient:
    """REQ sockets to peer endpoints, each with its own sender id (tiers/frames.py): requests on
    different sockets may arrive out of order, and a receiver refuses a sender's counter that goes
    back. ``submit`` takes an idle socket, so several requests can be in flight to one endpoint;
    a timed-out socket is thrown away so it cannot wedge."""

    def __init__(self, token: str, timeout_s: float = 60.0):
        self._key = run_key(token)
        self._timeout_ms = int(timeout_s * 1000)
        self._ctx = zmq.Context.instance()
        self._idle: dict[str, list[_Peer]] = {}
        self._open: set[_Peer] = set()

    def _take(self, endpoint: str) -> _Peer:
        idle = self._idle.setdefault(endpoint, [])
        if idle:
            return idle.pop()
        sock = self._ctx.socket(zmq.REQ)
        sock.linger = 0
        sock.maxmsgsize = FRAME_LIMIT_BYTES
        sock.connect(endpoint)
        peer = _Peer(endpoint, sock, Sealer(self._key))
        self._open.add(peer)
        return peer

    def submit(self, endpoint: str, meta: dict, arrays: Mapping[str, np.ndarray]) -> PendingReply:
        """Send a request and return at once; the answer is ``PendingReply.wait()``."""
        peer = self._take(endpoint)
        head, frames = peer.sealer.seal_request(encode(meta, arrays))
        try:
            peer.sock.send_multipart(frames, copy=False)
        except zmq.ZMQError:
            self._discard(peer)
            raise
        return PendingReply(self, peer, head)

    def request(self, endpoint: str, meta: dict, arrays: Mapping[str, np.ndarray]) -> tuple[dict, dict]:
        return self.submit(endpoint, meta, arrays).wait()

    def _receive(self, peer: _Peer, head: bytes) -> tuple[dict, dict]:
        if not peer.sock.poll(self._timeout_ms, zmq.POLLIN):
            self._discard(peer)
            raise DataPlaneTimeout(f"no answer from {peer.endpoint} within {self._timeout_ms / 1000:.0f} s")
        reply = peer.sock.recv_multipart(copy=False)
        self._idle[peer.endpoint].append(peer)  # answered: ready for the next request
        try:
            wire = peer.sealer.open_reply(head, reply)
        except FrameError as exc:
            raise DataPlaneError(f"{peer.endpoint}: {_refusal_text(reply, exc)}") from exc
        reply_meta, reply_arrays = decode(wire)
        if "error" in reply_meta:
            raise DataPlaneError(f"{peer.endpoint}: {reply_meta['error']}")
        return reply_meta, reply_arrays

    def _discard(self, peer: _Peer) -> None:
        peer.sock.close(0)
        self._open.discard(peer)

    def close(self) -> None:
        for peer in self._open:
            peer.sock.close(0)
        self._open.clear()
        self._idle.clear()


@dataclass(eq=False)
class _Peer:
    endpoint: str
    sock: zmq.Socket
    sealer: Sealer


class PendingReply:
    """A request on the wire: ``wait`` returns its answer once (or raises, as ``request`` does)."""

    def __init__(self, client: DataPlaneClient, peer: _Peer, head: bytes):
        self._client, self._peer, self._head = client, peer, head

    def wait(self) -> tuple[dict, dict]:
        if self._peer is None:
            raise RuntimeError("this reply was already waited for")
        peer, self._peer = self._peer, None
        return self._client._receive(peer, self._head)


def _refusal_text(reply: list, exc: FrameError) -> str:
    """What an unauthenticated answer says (a server refusing us), marked as unauthenticated."""
    try:
        meta, _ = decode(reply)
        return f"unauthenticated answer: {str(meta.get('error', '?'))[:500]} (a token mismatch?)"
    except DataPlaneError:
        return str(exc)
