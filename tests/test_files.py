"""The one bounded file reader: regular files only, a size bound, UTF-8 text, errors naming the file."""

from __future__ import annotations

import os

import pytest

from tierflow.orchestrator.errors import TierflowError
from tierflow.orchestrator.files import read_bytes, read_text


def test_reads_a_regular_file_and_drops_a_byte_order_mark(tmp_path):
    f = tmp_path / "a.csv"
    f.write_bytes(b"\xef\xbb\xbftime_s,device\n")
    assert read_text(f, "trace") == "time_s,device\n"


@pytest.mark.parametrize("target", ["/dev/zero", "fifo", "dir"])
def test_refuses_what_is_not_a_regular_file(tmp_path, target):
    if target == "fifo":
        path = tmp_path / "pipe"
        os.mkfifo(path)  # nobody writes: a plain open() would block forever
    elif target == "dir":
        path = tmp_path
    else:
        path = target
    with pytest.raises(TierflowError, match=r"expected a regular file for the trace"):
        read_bytes(path, "trace")


def test_size_bound_and_non_text(tmp_path):
    big = tmp_path / "big"
    big.write_bytes(b"x" * 2049)
    with pytest.raises(TierflowError, match=rf"{big}: the profile is larger than"):
        read_bytes(big, "profile", max_bytes=2048)
    assert len(read_bytes(big, "profile", max_bytes=2049)) == 2049
    junk = tmp_path / "junk"
    junk.write_bytes(b"ab\xff\xfe")
    with pytest.raises(TierflowError, match=r"expected UTF-8 text for the trace, got byte 0xff at offset 2"):
        read_text(junk, "trace")


def test_missing_file_and_nul_in_path(tmp_path):
    with pytest.raises(TierflowError, match=r"cannot read the scenario file \(No such file"):
        read_text(tmp_path / "nope.yaml", "scenario file")
    with pytest.raises(TierflowError, match=r"cannot read the scenario file"):
        read_text("bad\0name", "scenario file")
