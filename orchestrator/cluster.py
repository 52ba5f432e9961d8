"""Where a run's Ray lives: the one place tierflow decides it (the fleet's ``connect_ray`` connects).

In order: ``--address``; else ``RAY_ADDRESS`` ("local" means a private instance); else a
``ray start`` cluster on this machine, found the way Ray's own tools find it (the address file
Ray writes under its temp dir); else a private local instance sized to this machine. Joining a
cluster never passes ``num_cpus``: the cluster's nodes say what they have.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from tierflow.orchestrator.errors import TierflowError
from tierflow.orchestrator.ray_auth import Probe, prepare_auth, probe

LOCAL = "local"
ADDRESS_FILE = "ray_current_cluster"
_HOST_PORT = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.\-]+):(?P<port>[0-9]{1,5})$")


@dataclass(frozen=True)
class ClusterTarget:
    """The decision: ``address`` is "local" (a private instance) or host:port / ray://host:port."""

    address: str
    source: str  # why: "--address", "RAY_ADDRESS", the address file's path, "no cluster found"
    note: str = ""  # extra words for the first line (a stale address file, the token used)

    @property
    def joins(self) -> bool:
        return self.address != LOCAL

    def describe(self) -> str:
        if self.joins:
            why = {"--address": "from --address", "RAY_ADDRESS": "from RAY_ADDRESS"}.get(
                self.source, f"found a `ray start` on this machine: {self.source}")
            text = f"joining the Ray cluster at {self.address} ({why})"
        elif self.source == "RAY_ADDRESS":
            text = "starting a private local Ray instance (RAY_ADDRESS=local)"
        else:
            text = "starting a private local Ray instance (no --address, no RAY_ADDRESS, no `ray start` cluster found)"
        return f"tierflow: {text}" + (f"; {self.note}" if self.note else "")


def ray_temp_dir(env: dict[str, str] | None = None) -> Path:
    """Ray's default temp dir, chosen as Ray chooses it on Linux and macOS."""
    env = os.environ if env is None else env
    base = env.get("RAY_TMPDIR") or (env.get("TMPDIR") if sys.platform.startswith("linux") else None) or "/tmp"
    return Path(base) / "ray"


def read_address_file(path: Path) -> str | None:
    """The GCS address the last ``ray start`` on this machine wrote, or None."""
    try:
        with open(path, "rb") as fh:
            text = fh.read(1024).decode("utf-8", errors="replace").strip()
    except OSError:
        return None
    return text if _HOST_PORT.match(text) else None


def check_address(address: str, where: str) -> str:
    """A user-given address, validated before anything starts: host:port, ray://host:port or "local"."""
    text = address.strip()
    if text == LOCAL:
        return text
    bare = text.removeprefix("ray://")
    m = _HOST_PORT.match(bare)
    if m is None or not 1 <= int(m["port"]) <= 65535:
        raise TierflowError(f"{where}: expected HOST:PORT of a Ray head (e.g. 127.0.0.1:6379), ray://HOST:PORT "
                            f"or {LOCAL!r}, got {address!r}")
    return text


def choose_target(address: str | None, env: dict[str, str] | None = None) -> ClusterTarget:
    """The decision without touching the network (a found address is checked by ``ensure_ray``)."""
    env = os.environ if env is None else env
    if address:
        return ClusterTarget(check_address(address, "--address"), "--address")
    if env.get("RAY_ADDRESS", "").strip():
        return ClusterTarget(check_address(env["RAY_ADDRESS"], "RAY_ADDRESS"), "RAY_ADDRESS")
    path = ray_temp_dir(env) / ADDRESS_FILE
    found = read_address_file(path)
    if found is not None:
        return ClusterTarget(found, str(path))
    return ClusterTarget(LOCAL, "no cluster found")


def ensure_ray(address: str | None) -> ClusterTarget:
    """Connect this process to Ray where ``choose_target`` says, print the choice as the first line
    on stderr, and turn every connection failure into a TierflowError. A process already connected
    (an embedding program, the test session) keeps its connection and prints nothing."""
    from tierflow.orchestrator.fleet import connect_ray, connected_address

    existing = connected_address()
    if existing is not None:
        return ClusterTarget(existing, "this process's existing connection")
    target = choose_target(address)
    first = None
    if target.joins and not target.address.startswith("ray://"):
        first = probe(target.address)
        if first is Probe.UNREACHABLE and target.source not in ("--address", "RAY_ADDRESS"):
            # A cluster that was stopped without `ray stop` leaves its address behind.
            target = ClusterTarget(LOCAL, "no cluster found",
                                   f"{target.source} names {target.address}, where nothing answers any more")
    where = _where(target)
    if target.joins and first is not None:
        note = prepare_auth(target.address, where, first)
        if note:
            target = ClusterTarget(target.address, target.source, note)
    print(target.describe(), file=sys.stderr, flush=True)
    try:
        connect_ray(target.address, None if target.joins else os.cpu_count() or 2)
    except ConnectionError as exc:
        doing = f"join the Ray cluster at {target.address}" if target.joins else "start a local Ray instance"
        raise TierflowError(f"{where}: could not {doing}: {_first_line(exc)}") from exc
    return target


def _where(target: ClusterTarget) -> str:
    """What an error message starts with: the flag, the variable or the address file it came from."""
    return target.source if target.joins or target.source == "RAY_ADDRESS" else "Ray"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
