"""The session wire format: exact round trips; anything else is a WireError, never another exception."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tierflow.migration.errors import WireError
from tierflow.migration.wire import decode_state, encode_state


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


@pytest.mark.parametrize("dtype", ["bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
                                   "float16", "float32", "float64", "complex64", "complex128"])
@pytest.mark.parametrize("shape", [(), (0,), (3, 0, 2), (1,), (7, 3), (2, 3, 4, 5)])
def test_round_trip_every_dtype_and_shape(dtype, shape):
    a = (np.arange(int(np.prod(shape))) % 3).astype(dtype).reshape(shape)
    meta, out = decode_state(_frames({}, {"a": a}, chunk=5))
    assert out["a"].dtype == a.dtype and out["a"].shape == shape
    np.testing.assert_array_equal(out["a"], a)


def test_big_endian_and_strided_inputs_arrive_as_native_values():
    a = np.arange(12, dtype=">i4").reshape(3, 4)[:, ::2]
    _, out = decode_state(_frames({}, {"a": a}))
    assert out["a"].dtype == np.dtype("<i4")
    np.testing.assert_array_equal(out["a"], a)


def test_single_chunk_arrays_are_views_of_the_received_buffer():
    frames = [bytearray(f) for f in encode_state({}, {"a": np.arange(4, dtype=np.int32)})]
    _, out = decode_state(frames)
    frames[1][0] = 9  # the array is the frame's memory, not a copy
    assert out["a"][0] == 9


def test_checksum_is_optional_only_when_asked():
    frames = _frames({}, {"a": np.ones(3)})
    bare = [bytes(f) for f in encode_state({}, {"a": np.ones(3)}, checksum=False)]
    decode_state(bare, require_checksum=False)
    with pytest.raises(WireError, match="crc32"):
        decode_state(bare)
    damaged = [frames[0], b"\x01" + frames[1][1:]]
    with pytest.raises(WireError, match="checksum"):
        decode_state(damaged, require_checksum=False)  # a CRC that is present is always checked


@pytest.mark.parametrize("edit", [
    {"shape": [2**40, 2**40, 2**40]},  # absurd sizes: refused before any allocation
    {"nbytes": 33}, {"chunks": 2}, {"nbytes": True}, {"shape": [8.0]}, {"dtype": "<M8"}, {"name": ""},
    {"crc32": -1}, {"extra": 1},
])
def test_header_lies_are_refused(edit):
    frames = _frames({}, {"w": np.ones(8, np.float32)})
    header = json.loads(frames[0])
    header["arrays"][0].update(edit)
    with pytest.raises(WireError):
        decode_state([json.dumps(header).encode(), *frames[1:]])


def test_encoder_refuses_what_json_cannot_carry():
    with pytest.raises(WireError):
        encode_state({"x": float("nan")}, {})
    with pytest.raises(WireError):
        encode_state({"x": object()}, {})


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_fuzz_damage_to_a_real_message_is_caught(data):
    frames = [bytearray(f) for f in _frames({"k": 1}, {"w": np.arange(40, dtype=np.float32),
                                                      "b": np.arange(9, dtype=np.int16)}, chunk=32)]
    i = data.draw(st.integers(1, len(frames) - 1))  # damage in array bytes: the CRC must catch it
    j = data.draw(st.integers(0, len(frames[i]) - 1))
    frames[i][j] ^= data.draw(st.integers(1, 255))
    with pytest.raises(WireError):
        decode_state(frames)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=64), st.sampled_from([b"[" * 100000, b'{"v": 1}', b"\xff\xfe"])),
                min_size=1, max_size=6))
def test_fuzz_hostile_frames_only_raise_wire_error(frames):
    with pytest.raises(WireError):
        decode_state(frames)
