"""The session wire format: exact round trips; anything else is a WireError, never another exception."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from migration.errors import WireError
from migration.wire import decode_state, encode_state


def _frames(meta, arrays, chunk=2**21):
    return [bytes(f) for f in encode_state(meta, arrays, chunk)]


def test_round_trip_many_dtypes_shapes_and_chunks():
    rng = np.random.default_rng(0)
    arrays = {
        "f32": rng.standard_normal((3, 5)).astype(np.float32),
        "f64": np.array(3.5),
        "i64": np.arange(10, dtype=np.int64),
        "u8": rng.integers(0, 255, 1000).astype(np.uint8),
        "empty": np.zeros((0, 4), np.float32),
        "bool": np.array([True, False]),
    }
    meta, out = decode_state(_frames({"round": 3, "name": "s"}, arrays, chunk=64))
    assert meta == {"round": 3, "name": "s"}
    for k, v in arrays.items():
        assert out[k].dtype == v.dtype and out[k].shape == v.shape
        np.testing.assert_array_equal(out[k], v)


def test_object_dtype_is_never_sent():
    with pytest.raises(WireError):
        encode_state({}, {"x": np.array([object()], dtype=object)})


@pytest.mark.parametrize("mutate", [
    lambda f: f[:-1],  # truncated
    lambda f: [*f, b"extra"],  # extra frame
    lambda f: [f[0], f[1][:-3], *f[2:]],  # short chunk
    lambda f: [f[0].replace(b"<f4", b"|O8"), *f[1:]],  # refused dtype
    lambda f: [b"{not json", *f[1:]],
    lambda f: [json.dumps({"v": 99, "meta": {}, "arrays": []}).encode()],
])
def test_damaged_messages_are_refused(mutate):
    frames = _frames({"a": 1}, {"w": np.ones((4, 4), np.float32), "b": np.ones(3, np.float32)}, chunk=16)
    with pytest.raises(WireError):
        decode_state(mutate(frames))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=200), max_size=6))
def test_fuzz_random_frames_only_raise_wire_error(frames):
    try:
        decode_state(frames)
    except WireError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=5), st.one_of(st.integers(), st.text(max_size=5), st.lists(st.integers())),
                       max_size=4),
       st.integers(0, 3))
def test_fuzz_header_mutations(meta_extra, which):
    frames = _frames({"x": 1}, {"w": np.ones(8, np.float32)})
    header = json.loads(frames[0])
    if which == 0:
        header["meta"] = meta_extra
    elif which == 1:
        header["arrays"][0].update(meta_extra)
    elif which == 2:
        header.update(meta_extra)
    else:
        header["arrays"] = [meta_extra]
    try:
        meta, arrays = decode_state([json.dumps(header).encode(), *frames[1:]])
    except WireError:
        return
    for a in arrays.values():  # whatever was accepted is consistent with its bytes
        assert a.nbytes == sum(len(f) for f in frames[1:])
