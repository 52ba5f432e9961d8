"""The serialization boundary for session state on the network: a JSON header plus raw array chunks.

Never pickle: the receiver only ever builds numpy arrays of whitelisted numeric dtypes from bytes
whose sizes the header declares. Integrity and origin come from the channel's MAC over every
frame (migration/channel.py), so no per-array hash is computed here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import numpy as np

from migration.errors import WireError

VERSION = 1
MAX_HEADER_BYTES = 1 << 20
ALLOWED_DTYPES = {"<f2", "<f4", "<f8", "|i1", "<i2", "<i4", "<i8", "|u1", "<u2", "<u4", "<u8", "|b1"}


def encode_state(meta: Mapping, arrays: Mapping[str, np.ndarray], chunk_bytes: int = 2**21) -> list:
    """Header frame, then each array's bytes in chunks of at most ``chunk_bytes`` (zero-copy views)."""
    specs, frames = [], []
    for name, arr in arrays.items():
        arr = np.ascontiguousarray(arr).reshape(np.shape(arr))  # ascontiguousarray makes 0-d arrays 1-d
        if arr.dtype.str not in ALLOWED_DTYPES:
            raise WireError(f"array {name!r}: dtype {arr.dtype.str} is not sent")
        view = memoryview(arr.reshape(-1)).cast("B") if arr.nbytes else memoryview(b"")
        chunks = [view[i:i + chunk_bytes] for i in range(0, arr.nbytes, chunk_bytes)]
        specs.append({"name": name, "dtype": arr.dtype.str, "shape": list(arr.shape), "nbytes": arr.nbytes,
                      "chunks": len(chunks)})
        frames.extend(chunks)
    header = json.dumps({"v": VERSION, "meta": dict(meta), "arrays": specs}).encode()
    return [header, *frames]


def _buffer(frame) -> memoryview:
    return frame.buffer if hasattr(frame, "buffer") else memoryview(frame)


def decode_state(frames: Sequence) -> tuple[dict, dict[str, np.ndarray]]:
    """Strictly the inverse of :func:`encode_state`; anything else raises WireError."""
    if not frames:
        raise WireError("no frames")
    head = _buffer(frames[0])
    if len(head) > MAX_HEADER_BYTES:
        raise WireError("header too large")
    try:
        header = json.loads(bytes(head))
        version, meta, specs = header["v"], header["meta"], header["arrays"]
    except (ValueError, KeyError, TypeError) as exc:
        raise WireError(f"malformed header: {exc}") from exc
    if version != VERSION or not isinstance(meta, dict) or not isinstance(specs, list):
        raise WireError("unsupported header")
    arrays: dict[str, np.ndarray] = {}
    pos = 1
    for spec in specs:
        try:
            name, dtype = str(spec["name"]), str(spec["dtype"])
            shape = tuple(int(s) for s in spec["shape"])
            nbytes, n_chunks = int(spec["nbytes"]), int(spec["chunks"])
        except (KeyError, TypeError, ValueError) as exc:
            raise WireError(f"malformed array entry: {exc}") from exc
        if dtype not in ALLOWED_DTYPES or any(s < 0 for s in shape) or n_chunks < 0 or name in arrays:
            raise WireError(f"array {name!r}: refused dtype, shape or duplicate name")
        if nbytes != int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize:
            raise WireError(f"array {name!r}: {nbytes} bytes do not fit shape {shape}")
        if pos + n_chunks > len(frames):
            raise WireError(f"array {name!r}: truncated message")
        parts = [_buffer(f) for f in frames[pos:pos + n_chunks]]
        pos += n_chunks
        if sum(len(p) for p in parts) != nbytes:
            raise WireError(f"array {name!r}: chunk sizes do not add up to {nbytes}")
        raw = parts[0] if len(parts) == 1 else b"".join(parts)
        arrays[name] = np.frombuffer(raw, dtype=dtype).reshape(shape) if nbytes else np.zeros(shape, dtype)
    if pos != len(frames):
        raise WireError(f"{len(frames) - pos} unexpected extra frames")
    return meta, arrays
