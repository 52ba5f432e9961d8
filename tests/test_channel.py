"""The authenticated migration channel: bytes arrive exactly; unauthenticated or garbage input is refused."""

from __future__ import annotations

import time

import numpy as np
import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from tierflow.migration import channel
from tierflow.migration.channel import MigrationReceiver, send_state
from tierflow.migration.errors import MigrationError

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


def _capture(arrays, chunk_bytes=2**20):
    """The messages send_state emits, caught by a raw ROUTER that never answers."""
    trap = zmq.Context.instance().socket(zmq.ROUTER)
    trap.linger = 0
    endpoint = f"tcp://127.0.0.1:{trap.bind_to_random_port('tcp://127.0.0.1')}"
    with pytest.raises(MigrationError, match="no answer"):
        send_state(endpoint, KEY, "cap", {"step": 1}, arrays, timeout_s=0.5, chunk_bytes=chunk_bytes)
    messages = []
    while trap.poll(200):
        messages.append(trap.recv_multipart()[1:])
    trap.close(0)
    return messages


def _replay(endpoint, messages, wait_s=3.0):
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(endpoint)
    for m in messages:
        sock.send_multipart(m)
    reply = sock.recv_multipart() if sock.poll(int(wait_s * 1000)) else None
    sock.close(0)
    return reply


def test_multi_chunk_state_arrives_exactly(receiver):
    w = np.random.default_rng(1).integers(0, 2**31, (1000, 1100), dtype=np.int64)  # ~8.4 MiB, 9 chunks
    stats = send_state(receiver.endpoint, KEY, "big", {}, {"w": w, "e": np.zeros((0, 3))}, chunk_bytes=2**20)
    assert stats.chunks == 9 and stats.bytes_ == w.nbytes
    np.testing.assert_array_equal(receiver.got["big"][1]["w"], w)


def test_replayed_transfer_is_refused(receiver):
    messages = _capture({"w": np.arange(300_000, dtype=np.float32)})
    assert [m[0] for m in messages] == [b"B", b"D", b"E"] and len(messages[1]) == 4  # 2 chunks per DATA
    assert _replay(receiver.endpoint, messages)[1] == b"ACK"
    receiver.got.clear()
    before = receiver.rejected
    assert _replay(receiver.endpoint, messages, wait_s=0.5) is None
    assert receiver.rejected > before and not receiver.got


def test_altered_chunk_is_caught_by_the_mac(receiver):
    messages = _capture({"w": np.arange(300_000, dtype=np.float32)})
    chunk = bytearray(messages[1][2])
    chunk[100] ^= 1
    messages[1][2] = bytes(chunk)
    assert _replay(receiver.endpoint, messages, wait_s=0.5) is None
    assert receiver.rejected == 1 and not receiver.got and receiver.accepted == 0


def test_a_transfer_whose_sender_dies_halfway_is_dropped():
    r = MigrationReceiver(KEY, lambda *a: None, stale_s=0.2)
    try:
        messages = _capture({"w": np.arange(300_000, dtype=np.float32)})
        assert _replay(r.endpoint, messages[:2], wait_s=0.1) is None  # BEGIN and one DATA, then silence
        deadline = time.monotonic() + 5
        while r._inbound and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not r._inbound
    finally:
        r.close()


def test_the_receiver_binds_where_asked():
    with MigrationReceiver(KEY, lambda *a: None, bind="tcp://127.0.0.1:*") as r:
        assert r.endpoint.startswith("tcp://127.0.0.1:")
        send_state(r.endpoint, KEY, "s", {}, {"a": np.ones(2)})
        assert r.accepted == 1


@settings(max_examples=40, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=64), st.sampled_from([b"B", b"D", b"E", b"\x00" * 16])),
                min_size=1, max_size=6))
def test_fuzz_envelopes_with_real_kinds_are_never_accepted(frames):
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
        assert r.rejected == 1 and r.accepted == 0 and not r._inbound
    finally:
        r.close()


def test_small_chunks_share_data_messages_in_order_and_a_large_one_goes_alone():
    """Many small arrays (a batch of MLP sessions) go as a few DATA messages, not one each."""
    from tierflow.migration.channel import BATCH_BYTES, _data_groups

    chunks = [bytes([i % 251]) * n for i, n in enumerate([10, 20, BATCH_BYTES - 40, 30, BATCH_BYTES + 5, 1, 2])]
    groups = _data_groups(chunks)
    assert [c for g in groups for c in g] == chunks  # nothing lost or reordered
    assert [len(g) for g in groups] == [3, 1, 1, 2]
    assert all(sum(map(len, g)) <= BATCH_BYTES or len(g) == 1 for g in groups)
    assert _data_groups([]) == []
    batch = channel.encode_batch(b"k" * 32, [channel.BatchItem(f"s{i}", {}, {"w": np.ones(100, np.float32),
                                                                           "b": np.ones(3, np.float32)})
                                             for i in range(50)])
    assert len(batch.messages) == 3  # BEGIN, one DATA holding all 100 arrays, END
