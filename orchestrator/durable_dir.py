"""A directory replaced as a whole, so that a crash at any step leaves a complete version to read.

Writing ``NAME``: every file of the new version goes into ``NAME.tmp`` and is fsynced; then a
manifest (each file's size and SHA-256) is written and fsynced, last, so a ``.tmp`` whose
manifest matches its files is complete. The current ``NAME`` is renamed to ``NAME.old``,
``NAME.tmp`` to ``NAME``, and ``NAME.old`` is removed; the parent directory is fsynced after
each rename, so the renames reach the disk in order.

After a crash at any of those steps the newest complete version is: a complete ``.tmp`` (it was
written after ``NAME``); else ``NAME`` (only ever a renamed complete ``.tmp``); else a complete
``.old`` (only if ``NAME`` is gone). :func:`read_version` picks it without changing anything;
:func:`settle`, run before each write, finishes the interrupted swap the same way.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from tierflow.orchestrator.errors import TierflowError
from tierflow.orchestrator.files import MiB, read_bytes, read_text

MANIFEST = "manifest.json"
MANIFEST_LIMIT_BYTES = 1 * MiB  # a name, a size and a digest per file
MANIFEST_FORMAT = 1

FileWriter = Callable[[BinaryIO], None]  # writes one file's content to an open binary file


@dataclass(frozen=True)
class Version:
    """A verified version: where it was read from, and each listed file's bytes."""

    path: Path
    files: dict[str, bytes]


def _paths(parent: Path, name: str) -> tuple[Path, Path, Path]:
    return parent / (name + ".tmp"), parent / name, parent / (name + ".old")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def _write_file(path: Path, write: FileWriter) -> None:
    with open(path, "wb") as fh:
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())


def _manifest_entry(path: Path) -> dict:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(MiB), b""):
            digest.update(chunk)
    return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def _check_manifest(doc: object, where: Path) -> dict[str, dict]:
    """The manifest's file table, or an error saying what shape was expected."""
    files = doc.get("files") if isinstance(doc, dict) else None
    ok = isinstance(files, dict) and files and all(
        isinstance(n, str) and n and "/" not in n and n != MANIFEST and isinstance(e, dict)
        and isinstance(e.get("bytes"), int) and not isinstance(e.get("bytes"), bool) and e["bytes"] >= 0
        and isinstance(e.get("sha256"), str) and len(e["sha256"]) == 64 for n, e in files.items())
    if not ok:
        raise TierflowError(f"{where}: expected {{\"files\": {{NAME: {{\"bytes\": SIZE, \"sha256\": HEX}}}}}} "
                            f"listing each file of the version, got {json.dumps(doc)[:200]}")
    return files


def _verify(path: Path, what: str) -> Version:
    """Read the version at ``path``; every listed file must have its recorded size and digest."""
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise TierflowError(f"{manifest_path}: missing; expected the manifest every {what} is written with "
                            "(each file's size and SHA-256, written last): the write never finished, or "
                            "an older tierflow wrote it")
    text = read_text(manifest_path, f"{what} manifest", MANIFEST_LIMIT_BYTES)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TierflowError(f"{manifest_path}: expected JSON, got an error at line {exc.lineno}: {exc.msg}") from None
    files: dict[str, bytes] = {}
    for name, entry in _check_manifest(doc, manifest_path).items():
        file = path / name
        if not file.is_file():
            raise TierflowError(f"{file}: missing; {manifest_path} lists it")
        size = file.stat().st_size
        data = read_bytes(file, what, max(size, 1))
        digest = hashlib.sha256(data).hexdigest()
        if len(data) != entry["bytes"] or digest != entry["sha256"]:
            raise TierflowError(
                f"{file}: expected {entry['bytes']} bytes with SHA-256 {entry['sha256'][:16]}... as "
                f"{manifest_path} records, got {len(data)} bytes with SHA-256 {digest[:16]}...: the file was "
                "damaged or edited after it was written")
        files[name] = data
    return Version(path, files)


def _complete(path: Path, what: str) -> Version | None:
    """The version at ``path`` if it is complete; None if its write never finished (or it is damaged)."""
    try:
        return _verify(path, what)
    except TierflowError:
        return None


def read_version(parent: Path, name: str, what: str) -> Version | None:
    """The newest complete version of ``parent/name`` (see the module docstring), verified against its
    manifest; None if there is none. A damaged ``NAME`` is an error naming the file, never skipped."""
    tmp, final, old = _paths(parent, name)
    if tmp.is_dir():
        version = _complete(tmp, what)
        if version is not None:
            return version
    if final.exists():
        return _verify(final, what)
    if old.is_dir():
        return _verify(old, what)
    return None


def _swap_in(parent: Path, tmp: Path, final: Path, old: Path) -> None:
    """``tmp`` is complete and ``old`` absent: make ``tmp`` the version, keeping one at every step."""
    if final.exists():
        os.replace(final, old)
        _fsync_dir(parent)
    os.replace(tmp, final)
    _fsync_dir(parent)
    _remove(old)


def settle(parent: Path, name: str, what: str) -> None:
    """Finish a swap a crash interrupted, so that only ``NAME`` (the newest complete version) is left."""
    tmp, final, old = _paths(parent, name)
    if tmp.is_dir() and _complete(tmp, what) is not None:
        if final.exists():
            _remove(old)
        _swap_in(parent, tmp, final, old)
        return
    _remove(tmp)  # a write that never finished
    if not final.exists() and old.is_dir() and _complete(old, what) is not None:
        os.replace(old, final)
        _fsync_dir(parent)
    elif final.exists():
        _remove(old)


def write_version(parent: Path, name: str, what: str, files: Mapping[str, FileWriter]) -> Path:
    """Write ``files`` as the new version of ``parent/name``, crash-safe at every step."""
    parent.mkdir(parents=True, exist_ok=True)
    settle(parent, name, what)
    tmp, final, old = _paths(parent, name)
    os.mkdir(tmp)
    entries = {}
    for file_name, write in files.items():
        _write_file(tmp / file_name, write)
        entries[file_name] = _manifest_entry(tmp / file_name)
    manifest = json.dumps({"format": MANIFEST_FORMAT, "files": entries}, indent=1, sort_keys=True).encode()
    _write_file(tmp / MANIFEST, lambda fh: fh.write(manifest))
    _fsync_dir(tmp)
    _swap_in(parent, tmp, final, old)
    return final
