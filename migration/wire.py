"""The serialization boundary for state on the network: a small JSON header plus raw array chunks.

Never pickle: the receiver only ever builds numpy arrays of whitelisted numeric dtypes from bytes
whose count, chunking and checksum the header declares, and refuses anything else with WireError.

Frames: ``[header, *chunks]``. The header is JSON
``{"v": 1, "chunk_bytes": C, "meta": {...}, "arrays": [{"name", "dtype", "shape", "nbytes", "chunks",
"crc32"?}, ...]}``; each array's bytes follow in order as ceil(nbytes / C) frames, all of exactly C
bytes except the last. Chunks are memoryviews of the caller's arrays (zero copy on the way out;
don't touch the arrays until the send is done) and single-chunk arrays decode as views of the
received buffers (zero copy on the way in; such arrays are read-only).

The per-array CRC-32 guards against accidental damage (a buffer changed while a zero-copy send was
still reading it, a broken transport). It is no defence against an attacker: the migration channel
authenticates every frame with a keyed MAC and so sends without it (``checksum=False``).
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Mapping, Sequence

import numpy as np

from tierflow.migration.errors import WireError

VERSION = 1
MAX_HEADER_BYTES = 1 << 20
MAX_NDIM = 32
# Numeric dtypes only, little-endian (the byte order of every host we run on); never object.
ALLOWED_DTYPES = frozenset({
    "|b1", "|i1", "|u1", "<i2", "<u2", "<i4", "<u4", "<i8", "<u8", "<f2", "<f4", "<f8", "<c8", "<c16",
})
_ARRAY_KEYS = {"name", "dtype", "shape", "nbytes", "chunks"}
_HEADER_KEYS = {"v", "chunk_bytes", "meta", "arrays"}


def _crc32(chunks: Sequence) -> int:
    crc = 0
    for c in chunks:
        crc = zlib.crc32(c, crc)
    return crc


def encode_state(meta: Mapping, arrays: Mapping[str, np.ndarray], chunk_bytes: int = 2**20,
                 checksum: bool = True) -> list:
    """``[header bytes, *chunks]``; chunks are zero-copy memoryviews of at most ``chunk_bytes`` each."""
    if not isinstance(chunk_bytes, int) or chunk_bytes < 1:
        raise WireError(f"chunk_bytes: expected a positive integer, got {chunk_bytes!r}")
    specs, frames = [], []
    for name, arr in arrays.items():
        if not isinstance(name, str) or not name:
            raise WireError(f"array name {name!r}: expected a non-empty string")
        arr = np.asarray(arr)
        dtype = arr.dtype
        if dtype.kind in "biufc" and dtype.byteorder == ">":
            dtype = dtype.newbyteorder("<")
        if dtype.str not in ALLOWED_DTYPES:
            raise WireError(f"array {name!r}: dtype {arr.dtype.str} is not sent (numeric dtypes only)")
        # asarray+reshape keeps 0-d arrays 0-d (ascontiguousarray alone would make them 1-d).
        arr = np.ascontiguousarray(arr, dtype=dtype).reshape(arr.shape)
        view = memoryview(arr.reshape(-1)).cast("B") if arr.nbytes else memoryview(b"")
        chunks = [view[i:i + chunk_bytes] for i in range(0, arr.nbytes, chunk_bytes)]
        spec = {"name": name, "dtype": dtype.str, "shape": list(arr.shape), "nbytes": int(arr.nbytes),
                "chunks": len(chunks)}
        if checksum:
            spec["crc32"] = _crc32(chunks)
        specs.append(spec)
        frames.extend(chunks)
    try:
        header = json.dumps({"v": VERSION, "chunk_bytes": chunk_bytes, "meta": dict(meta), "arrays": specs},
                            allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise WireError(f"meta: expected plain JSON data (no NaN or infinity): {exc}") from exc
    if len(header) > MAX_HEADER_BYTES:
        raise WireError(f"header of {len(header)} bytes exceeds {MAX_HEADER_BYTES}")
    return [header, *frames]


def _buffer(frame) -> memoryview:
    """A byte view of a frame: bytes, bytearray, memoryview, numpy array or zmq.Frame."""
    buf = getattr(frame, "buffer", frame)  # zmq.Frame exposes its bytes as .buffer
    try:
        view = memoryview(buf)
        return view if view.format == "B" and view.ndim == 1 else view.cast("B")
    except (TypeError, ValueError) as exc:
        raise WireError(f"frame of type {type(frame).__name__} is not a contiguous byte buffer") from exc


def _int(value, what: str, low: int = 0) -> int:
    if type(value) is not int or value < low:  # bool and float are refused too
        raise WireError(f"{what}: expected an integer >= {low}, got {value!r}")
    return value


def _parse_header(raw: memoryview) -> tuple[int, dict, list]:
    if len(raw) > MAX_HEADER_BYTES:
        raise WireError(f"header of {len(raw)} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        header = json.loads(bytes(raw).decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise WireError(f"header is not JSON: {exc}") from exc
    if not isinstance(header, dict) or set(header) != _HEADER_KEYS:
        raise WireError(f"header: expected an object with exactly the keys {sorted(_HEADER_KEYS)}")
    if type(header["v"]) is not int or header["v"] != VERSION:
        raise WireError(f"header.v: expected format version {VERSION}, got {header['v']!r}")
    if not isinstance(header["meta"], dict):
        raise WireError("header.meta: expected an object")
    if not isinstance(header["arrays"], list):
        raise WireError("header.arrays: expected a list")
    return _int(header["chunk_bytes"], "header.chunk_bytes", 1), header["meta"], header["arrays"]


class WireDecoder:
    """Incremental :func:`decode_state`: validate the header, then take the chunk frames one by one.

    Sizes and order are checked as frames arrive, so a streaming receiver can fill arrays while the
    rest is still on the wire. Multi-chunk arrays are allocated at their first chunk.
    """

    def __init__(self, header, require_checksum: bool = True):
        chunk_bytes, self.meta, specs = _parse_header(_buffer(header))
        self._plan: list[tuple[str, str, tuple[int, ...], int, int, int | None]] = []
        names: set[str] = set()
        for i, spec in enumerate(specs):
            where = f"header.arrays[{i}]"
            if not isinstance(spec, dict) or not _ARRAY_KEYS <= set(spec) <= _ARRAY_KEYS | {"crc32"}:
                raise WireError(f"{where}: expected an object with keys {sorted(_ARRAY_KEYS)} and optionally crc32")
            name, dtype, shape = spec["name"], spec["dtype"], spec["shape"]
            if not isinstance(name, str) or not name or name in names:
                raise WireError(f"{where}.name: expected a new non-empty string, got {name!r}")
            names.add(name)
            where = f"array {name!r}"
            if not isinstance(dtype, str) or dtype not in ALLOWED_DTYPES:
                raise WireError(f"{where}: dtype {dtype!r} is refused (allowed: {sorted(ALLOWED_DTYPES)})")
            if not isinstance(shape, list) or len(shape) > MAX_NDIM:
                raise WireError(f"{where}: shape: expected a list of at most {MAX_NDIM} sizes")
            shape = tuple(_int(s, f"{where}: shape", 0) for s in shape)
            nbytes = _int(spec["nbytes"], f"{where}: nbytes")
            n_chunks = _int(spec["chunks"], f"{where}: chunks")
            if nbytes != math.prod(shape) * np.dtype(dtype).itemsize:  # Python ints: no overflow
                raise WireError(f"{where}: {nbytes} bytes do not fit shape {shape} of {dtype}")
            if n_chunks != -(-nbytes // chunk_bytes):
                raise WireError(f"{where}: {n_chunks} chunks for {nbytes} bytes in chunks of {chunk_bytes}")
            crc = spec.get("crc32")
            if crc is None and require_checksum:
                raise WireError(f"{where}: no crc32 checksum")
            if crc is not None and (type(crc) is not int or not 0 <= crc < 2**32):
                raise WireError(f"{where}: crc32: expected an unsigned 32-bit integer, got {crc!r}")
            self._plan.append((name, dtype, shape, nbytes, n_chunks, crc))
        self._chunk_bytes = chunk_bytes
        self.expected_frames = sum(p[4] for p in self._plan)
        self.arrays: dict[str, np.ndarray] = {}
        self._i = 0  # array being filled
        self._k = 0  # its next chunk
        self._crc = 0
        self._out: np.ndarray | None = None
        self._skip_empty()

    def _skip_empty(self) -> None:
        while self._i < len(self._plan) and self._plan[self._i][4] == 0:
            self._store(np.empty(0, self._plan[self._i][1]))

    def _store(self, flat: np.ndarray) -> None:
        name, _, shape, _, _, _ = self._plan[self._i]
        try:
            self.arrays[name] = flat.reshape(shape)
        except ValueError as exc:  # numpy's own limits (e.g. its maximum number of dimensions)
            raise WireError(f"array {name!r}: shape {shape}: {exc}") from exc
        self._i, self._k, self._crc, self._out = self._i + 1, 0, 0, None

    @property
    def next_array(self) -> str | None:
        """The name of the array the next frame belongs to (None once every array is complete)."""
        return self._plan[self._i][0] if self._i < len(self._plan) else None

    def feed(self, frame) -> None:
        if self._i >= len(self._plan):
            raise WireError("unexpected extra frame")
        name, dtype, _, nbytes, n_chunks, crc = self._plan[self._i]
        part = _buffer(frame)
        k = self._k
        expected = self._chunk_bytes if k < n_chunks - 1 else nbytes - self._chunk_bytes * (n_chunks - 1)
        if len(part) != expected:
            raise WireError(f"array {name!r}: chunk {k} has {len(part)} bytes, expected {expected}")
        if crc is not None:
            self._crc = zlib.crc32(part, self._crc)
        if n_chunks > 1:  # one copy into fresh memory: a contiguous array cannot span several frames
            if self._out is None:
                try:
                    self._out = np.empty(nbytes, np.uint8)
                except (MemoryError, ValueError) as exc:
                    raise WireError(f"array {name!r}: cannot hold {nbytes} bytes: {exc}") from exc
            offset = k * self._chunk_bytes
            self._out[offset:offset + len(part)] = np.frombuffer(part, np.uint8)
        self._k += 1
        if self._k < n_chunks:
            return
        if crc is not None and self._crc != crc:
            raise WireError(f"array {name!r}: checksum mismatch (damaged in transit)")
        self._store(np.frombuffer(part, dtype) if n_chunks == 1 else self._out.view(dtype))
        self._skip_empty()

    def finish(self) -> tuple[dict, dict[str, np.ndarray]]:
        if self._i < len(self._plan):
            raise WireError(f"truncated message: array {self._plan[self._i][0]!r} is incomplete")
        return self.meta, self.arrays


def decode_state(frames: Sequence, require_checksum: bool = True) -> tuple[dict, dict[str, np.ndarray]]:
    """Strictly the inverse of :func:`encode_state`; anything else raises WireError.

    ``require_checksum=False`` accepts arrays sent without a CRC (the channel's MAC covers them);
    a CRC that is present is always checked.
    """
    if isinstance(frames, (bytes, bytearray, memoryview)) or not isinstance(frames, Sequence):
        raise WireError("expected a sequence of frames")
    if not frames:
        raise WireError("no frames")
    decoder = WireDecoder(frames[0], require_checksum)
    if len(frames) - 1 != decoder.expected_frames:  # before any allocation
        raise WireError(f"{len(frames) - 1} array frames, the header declares {decoder.expected_frames}")
    for frame in frames[1:]:
        decoder.feed(frame)
    return decoder.finish()
