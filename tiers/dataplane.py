"""The per-step data plane: activations up, gradients down, over pyzmq instead of Ray calls.

A Ray actor call costs ~2.8 ms round trip on this machine; one training step of a small model
costs less than that, so steps travel as pyzmq messages between the device hosts and the edge
servers (and edge to cloud), in the project's one wire format (migration/wire.py: a JSON header
plus raw array frames, never pickle). Control (sessions, aggregation, migration) stays on Ray.
Each message carries the run's token; a message without it, or one that does not decode, is
answered with an error and touches no session.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping

import numpy as np
import zmq

from tierflow.migration.errors import WireError
from tierflow.migration.wire import decode_state, encode_state

log = logging.getLogger(__name__)

Handler = Callable[[dict, dict[str, np.ndarray]], tuple[dict, dict[str, np.ndarray]]]
_ONE_FRAME = 1 << 62  # activations are small: one frame per array, no chunking


class DataPlaneError(RuntimeError):
    """A data-plane message was refused, or its peer did not answer in time."""


def encode(meta: Mapping, arrays: Mapping[str, np.ndarray]) -> list:
    """The project's one wire format (migration/wire.py), one frame per array."""
    return encode_state(meta, arrays, chunk_bytes=_ONE_FRAME)


def decode(frames: list) -> tuple[dict, dict[str, np.ndarray]]:
    try:
        return decode_state(frames)
    except WireError as exc:
        raise DataPlaneError(str(exc)) from exc


class DataPlaneServer:
    """A ROUTER socket served by a thread of the actor that owns ``handler``."""

    def __init__(self, handler: Handler, token: str, host: str = "127.0.0.1"):
        self._handler = handler
        self._token = token
        self._ctx = zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.linger = 0
        port = self._sock.bind_to_random_port(f"tcp://{host}")
        self.endpoint = f"tcp://{host}:{port}"
        self.rejected = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="tierflow-dataplane", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self._sock.rcvtimeo = 100  # wake up to notice close(); a blocking recv is cheaper than a poller
        while not self._stop.is_set():
            try:
                frames = self._sock.recv_multipart(copy=False)
            except zmq.Again:
                continue
            if len(frames) < 3:
                self.rejected += 1
                continue  # not a REQ envelope: nothing to answer
            envelope, payload = frames[:2], frames[2:]
            try:
                meta, arrays = decode(payload)
                if meta.get("token") != self._token:
                    raise DataPlaneError("missing or wrong run token")
                reply_meta, reply_arrays = self._handler(meta, arrays)
                reply = encode(reply_meta, reply_arrays)
            except Exception as exc:  # answer every request; a bad one must not kill the server
                self.rejected += isinstance(exc, DataPlaneError)
                log.warning("data plane: refused a message: %s", exc)
                reply = encode({"error": f"{type(exc).__name__}: {exc}"}, {})
            self._sock.send_multipart([*envelope, *reply], copy=False)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._sock.close(0)


class DataPlaneClient:
    """One REQ socket per peer endpoint; a timed-out socket is thrown away so it cannot wedge."""

    def __init__(self, token: str, timeout_s: float = 60.0):
        self._token = token
        self._timeout_ms = int(timeout_s * 1000)
        self._ctx = zmq.Context.instance()
        self._socks: dict[str, zmq.Socket] = {}

    def _socket(self, endpoint: str) -> zmq.Socket:
        sock = self._socks.get(endpoint)
        if sock is None:
            sock = self._ctx.socket(zmq.REQ)
            sock.linger = 0
            sock.connect(endpoint)
            self._socks[endpoint] = sock
        return sock

    def request(self, endpoint: str, meta: dict, arrays: Mapping[str, np.ndarray]) -> tuple[dict, dict]:
        sock = self._socket(endpoint)
        sock.send_multipart(encode({**meta, "token": self._token}, arrays), copy=False)
        if not sock.poll(self._timeout_ms, zmq.POLLIN):
            sock.close(0)
            del self._socks[endpoint]
            raise DataPlaneError(f"no answer from {endpoint} within {self._timeout_ms / 1000:.0f} s")
        reply_meta, reply_arrays = decode(sock.recv_multipart(copy=False))
        if "error" in reply_meta:
            raise DataPlaneError(f"{endpoint}: {reply_meta['error']}")
        return reply_meta, reply_arrays

    def close(self) -> None:
        for sock in self._socks.values():
            sock.close(0)
        self._socks.clear()
