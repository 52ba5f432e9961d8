"""The authenticated migration channel: bytes arrive exactly; unauthenticated or garbage input is refused."""

from __future__ import annotations

import time

import numpy as np
import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from migration.channel import MigrationReceiver, send_state
from migration.errors import MigrationError

KEY = b"k" * 32


@pytest.fixture
def receiver():
    got = {}

    def on_session(session_id, meta, arrays):
        if meta.get("refuse"):
            raise ValueError("does not fit")
        got[session_id] = (meta, {k: v.copy() for k, v in arrays.items()})

    r = MigrationReceiver(KEY, on_session)
    r.got = got
    yield r
    r.close()


def test_round_trip_is_exact(receiver):
    arrays = {"w": np.random.default_rng(0).standard_normal((700, 900)).astype(np.float32), "n": np.array(5)}
    stats = send_state(receiver.endpoint, KEY, "d0", {"step": 3}, arrays, chunk_bytes=2**20)
    meta, out = receiver.got["d0"]
    assert meta == {"step": 3} and stats.bytes_ == arrays["w"].nbytes + arrays["n"].nbytes and stats.chunks == 4
    np.testing.assert_array_equal(out["w"], arrays["w"])


def test_wrong_key_is_rejected_and_receiver_keeps_working(receiver):
    with pytest.raises(MigrationError, match="no answer"):
        send_state(receiver.endpoint, b"x" * 32, "d0", {}, {"w": np.ones(3)}, timeout_s=0.5)
    assert receiver.rejected >= 1 and receiver.accepted == 0 and "d0" not in receiver.got
    send_state(receiver.endpoint, KEY, "d1", {}, {"w": np.ones(3)})
    assert "d1" in receiver.got


def test_garbage_and_truncated_messages_are_counted(receiver):
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 2000  # closing right away must not drop what was queued before the connection was up
    sock.connect(receiver.endpoint)
    for frames in ([b"x"], [b"{}", b"short mac"], [b'{"session": "d"}', b"\x00" * 32, b"chunk"]):
        sock.send_multipart(frames)
    deadline = time.monotonic() + 10
    while receiver.rejected < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    sock.close(0)
    assert receiver.rejected == 3 and not receiver.got
    send_state(receiver.endpoint, KEY, "ok", {}, {"w": np.ones(2)})


def test_refusal_by_the_destination_reaches_the_sender(receiver):
    with pytest.raises(MigrationError, match="does not fit"):
        send_state(receiver.endpoint, KEY, "d0", {"refuse": True}, {})


def test_timeout_when_nobody_listens():
    with pytest.raises(MigrationError, match="no answer"):
        send_state("tcp://127.0.0.1:9", KEY, "d0", {}, {}, timeout_s=0.3)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.binary(max_size=64), min_size=1, max_size=5))
def test_fuzz_random_frames_never_accepted(frames):
    r = MigrationReceiver(KEY, lambda *a: (_ for _ in ()).throw(AssertionError("accepted garbage")))
    try:
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.linger = 0
        sock.connect(r.endpoint)
        sock.send_multipart(frames)
        deadline = time.monotonic() + 2
        while r.rejected < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        sock.close(0)
        assert r.rejected == 1 and r.accepted == 0
    finally:
        r.close()
