"""One run per run directory: a fresh run never mixes with an old one, a resume only ever cuts its own log.

A fresh run into a directory that holds a run (a checkpoint or an event log) is refused unless
asked to start over (``--fresh``), which deletes that run's files first: otherwise a fresh run
killed before its first checkpoint would, resumed, continue the old run over the new log.

A checkpoint records how long ``events.jsonl`` was and the SHA-256 of those bytes. A resume cuts
the log back to that length only if the log still begins with exactly those bytes, so it never
truncates another run's log, or pads a shorter one with NUL bytes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from tierflow.orchestrator.checkpoint import CHECKPOINT
from tierflow.orchestrator.errors import TierflowError
from tierflow.orchestrator.files import MiB
from tierflow.orchestrator.model_files import MODEL_PT, MODEL_SAFETENSORS
from tierflow.orchestrator.profiles import PROFILE_FILE
from tierflow.orchestrator.trajectories import TRAJECTORIES

EVENTS = "events.jsonl"
# What a run leaves behind (besides the checkpoint): all of it belongs to that run.
RUN_FILES = (EVENTS, "summary.json", MODEL_PT, MODEL_SAFETENSORS, PROFILE_FILE, TRAJECTORIES)
CHECKPOINT_DIRS = (CHECKPOINT, CHECKPOINT + ".tmp", CHECKPOINT + ".old")


def run_traces(out: Path) -> list[str]:
    """The names in ``out`` that show a run was started there (a checkpoint, an event log)."""
    return [name for name in (*CHECKPOINT_DIRS, EVENTS) if (out / name).exists() or (out / name).is_symlink()]


def refuse_used_run_dir(out: Path, fresh: bool) -> None:
    """A fresh run into a used run directory is an error unless ``fresh`` (start over) is asked for."""
    found = run_traces(out)
    if found and not fresh:
        raise TierflowError(f"--out {out}: the directory already holds a run ({', '.join(found)}); resume it "
                            f"with `tierflow run --resume {out}`, choose another --out, or pass --fresh to "
                            "delete that run and start over")


def clear_run(out: Path) -> None:
    """Delete what an earlier run left in ``out`` (its checkpoints and RUN_FILES), nothing else."""
    for name in CHECKPOINT_DIRS:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)


def claim_run_dir(out: Path, resume: bool, fresh: bool) -> None:
    """Before a run writes anything: refuse a used directory for a fresh run; with ``fresh``, clear it."""
    if resume and fresh:
        raise TierflowError("--fresh: starts a run over, --resume continues it; give one of them")
    if resume:
        return
    refuse_used_run_dir(out, fresh)
    if fresh:
        clear_run(out)


class EventsDigest:
    """The length and SHA-256 of ``events.jsonl`` so far, extended by what was written since."""

    def __init__(self, path: Path, size: int = 0, digest=None):
        self.path = path
        self.size = size
        self._digest = digest if digest is not None else hashlib.sha256()

    def advance(self) -> tuple[int, str]:
        """Hash what the log gained since the last call; (bytes, hex digest) of the whole log."""
        with open(self.path, "rb") as fh:
            fh.seek(self.size)
            for chunk in iter(lambda: fh.read(MiB), b""):
                self._digest.update(chunk)
                self.size += len(chunk)
        return self.size, self._digest.hexdigest()

    @classmethod
    def continuing(cls, path: Path, size: int, sha256: str) -> EventsDigest:
        """Check that ``path`` begins with the ``size`` bytes a checkpoint recorded (digest ``sha256``),
        then cut it back to them: the events after the checkpoint belong to a round that runs again."""
        digest = hashlib.sha256()
        try:
            have = os.stat(path).st_size
            with open(path, "rb") as fh:
                left = size
                while left > 0:
                    chunk = fh.read(min(MiB, left))
                    if not chunk:
                        break
                    digest.update(chunk)
                    left -= len(chunk)
        except OSError as exc:
            raise TierflowError(f"{path}: cannot read the run's event log ({exc.strerror}); the checkpoint "
                                f"expects its first {size} bytes") from None
        if have < size or digest.hexdigest() != sha256:
            raise TierflowError(f"{path}: expected the event log the checkpoint was taken with (its first {size} "
                                f"bytes, SHA-256 {sha256[:16]}...), got {have} bytes that "
                                f"{'are fewer' if have < size else 'differ'}: the log belongs to another run or "
                                "was edited; nothing was changed (start over with --fresh)")
        with open(path, "r+b") as fh:
            fh.truncate(size)
            fh.flush()
            os.fsync(fh.fileno())
        return cls(path, size, digest)
