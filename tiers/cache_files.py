"""Where tierflow keeps what it measured once per user (layer profiles aside: they keep their own
``$TIERFLOW_CACHE_DIR`` layout), and how an entry is written so a concurrent run never reads half."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$TIERFLOW_CACHE_DIR``, else the XDG cache's ``tierflow``: one per user, shared by its runs."""
    explicit = os.environ.get("TIERFLOW_CACHE_DIR")
    return Path(explicit) if explicit else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tierflow"


def write_entry(path: Path, text: str) -> None:
    """Write ``path`` atomically (a reader sees the old file or the new one); an unwritable cache
    costs only the next run's time, so it is not an error."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(text)
        tmp.replace(path)
    except OSError:
        pass
