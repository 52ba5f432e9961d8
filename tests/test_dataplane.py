"""The per-step data plane: exact round trips, and a message without the run's token touches nothing."""

from __future__ import annotations

import numpy as np
import pytest
import zmq

from tierflow.tiers.dataplane import DataPlaneClient, DataPlaneError, DataPlaneServer, decode, encode


def test_encode_decode_round_trip():
    arrays = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "labels": np.array([1, 2], np.int64),
              "empty": np.zeros((0, 3), np.float32)}
    frames = [bytes(f) for f in encode({"k": 1}, arrays)]
    meta, out = decode(frames)
    assert meta == {"k": 1}
    for name, value in arrays.items():
        np.testing.assert_array_equal(out[name], value)
        assert out[name].dtype == value.dtype


@pytest.mark.parametrize("frames", [
    [],
    [b"not json"],
    [b'{"meta": {}, "arrays": [{"name": "a", "dtype": "|O", "shape": [1]}]}', b"x" * 8],
    [b'{"meta": {}, "arrays": [{"name": "a", "dtype": "<f4", "shape": [4]}]}', b"x" * 8],
    [b'{"meta": {}, "arrays": []}', b"extra"],
])
def test_decode_refuses_bad_messages(frames):
    with pytest.raises(DataPlaneError):
        decode(frames)


def test_server_answers_with_the_token_and_refuses_without():
    seen = []

    def handler(meta, arrays):
        seen.append(meta["op"])
        return {"n": 1}, {"g0": arrays["x"] * 2}

    server = DataPlaneServer(handler, token="secret-0123456789abcdef")
    try:
        good = DataPlaneClient("secret-0123456789abcdef", timeout_s=5)
        meta, out = good.request(server.endpoint, {"op": "step"}, {"x": np.ones(3, np.float32)})
        np.testing.assert_array_equal(out["g0"], np.full(3, 2, np.float32))
        bad = DataPlaneClient("wrong-0123456789abcdefgh", timeout_s=5)
        with pytest.raises(DataPlaneError, match="token"):
            bad.request(server.endpoint, {"op": "step"}, {"x": np.ones(3, np.float32)})
        raw = zmq.Context.instance().socket(zmq.REQ)
        raw.linger = 0
        raw.connect(server.endpoint)
        raw.send_multipart([b"\xff garbage", b"more"])
        assert raw.poll(5000)
        assert b"error" in raw.recv_multipart()[0]
        raw.close(0)
        assert seen == ["step"] and server.rejected == 2
        good.request(server.endpoint, {"op": "step"}, {"x": np.ones(3, np.float32)})  # still serving
        good.close()
        bad.close()
    finally:
        server.close()


def test_several_requests_in_flight_to_one_endpoint_each_get_their_own_answer():
    """submit puts requests on separate sockets, each its own sender: the server's fair queueing
    may read them in any order, and none is refused as a replay."""
    def handler(meta, arrays):
        return {"i": meta["i"]}, {"g0": arrays["x"] + meta["i"]}

    server = DataPlaneServer(handler, token="secret-0123456789abcdef")
    client = DataPlaneClient("secret-0123456789abcdef", timeout_s=5)
    try:
        for _ in range(3):  # sockets are reused once answered
            pending = [client.submit(server.endpoint, {"i": i}, {"x": np.zeros(2, np.float32)}) for i in range(6)]
            for i in reversed(range(6)):
                meta, out = pending[i].wait()
                assert meta == {"i": i}
                np.testing.assert_array_equal(out["g0"], np.full(2, i, np.float32))
        assert server.rejected == 0
        assert len(client._open) == 6
        with pytest.raises(RuntimeError, match="already"):
            pending[0].wait()
    finally:
        client.close()
        server.close()
