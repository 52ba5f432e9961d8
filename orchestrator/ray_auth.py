"""Ray's token authentication, checked before ``ray.init`` so a refusal is one clear sentence.

Since Ray 2.5x a ``ray start`` head turns token authentication on when a token already exists on
its machine (``~/.ray/auth_token``, which any earlier local ``ray.init()`` writes). A client that
joins by explicit address does not turn it on by itself, and without a token Ray retries for about
20 s, logs one warning per second and raises a bare ConnectionError. One unauthenticated gRPC call
to the head's GCS tells in milliseconds whether a token is needed and whether ours is accepted.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from pathlib import Path

from tierflow.orchestrator.errors import TierflowError

AUTH_MODE_VAR = "RAY_AUTH_MODE"
_PROBE_METHOD = "/ray.rpc.NodeInfoGcsService/GetClusterId"  # cheap, and every GCS serves it
PROBE_TIMEOUT_S = 10.0
_TOKEN_BYTES_MAX = 64 * 1024
HOW_TO_GET_A_TOKEN = (
    "copy the head's token to this machine (run `ray get-auth-token` on the head node, then either "
    "save it as ~/.ray/auth_token or export RAY_AUTH_TOKEN=<token>) and set RAY_AUTH_MODE=token")


class Probe(enum.Enum):
    OPEN = "answers without a token"
    NEEDS_TOKEN = "refuses a call without a token"
    TOKEN_ACCEPTED = "accepts our token"
    TOKEN_REFUSED = "refuses our token"
    UNREACHABLE = "does not answer"
    UNKNOWN = "cannot be probed"  # no grpc module, or a reply we do not recognise: let ray.init decide


@dataclass(frozen=True)
class Token:
    value: str
    source: str  # where it was found, for messages: "RAY_AUTH_TOKEN", a file path


def find_token(env: dict[str, str] | None = None, home: Path | None = None) -> Token | None:
    """The token Ray's own loader would use, in its documented order: RAY_AUTH_TOKEN,
    the file RAY_AUTH_TOKEN_PATH names, then ~/.ray/auth_token."""
    env = os.environ if env is None else env
    if env.get("RAY_AUTH_TOKEN", "").strip():
        return Token(env["RAY_AUTH_TOKEN"].strip(), "RAY_AUTH_TOKEN")
    named = env.get("RAY_AUTH_TOKEN_PATH")
    candidates = [Path(named)] if named else []
    candidates.append((home or Path.home()) / ".ray" / "auth_token")
    for path in candidates:
        try:
            if path.is_file():
                with open(path, "rb") as fh:
                    text = fh.read(_TOKEN_BYTES_MAX).decode("utf-8", errors="replace").strip()
                if text:
                    return Token(text, str(path))
        except OSError:
            continue
    return None


def probe(address: str, token: str | None = None, timeout_s: float = PROBE_TIMEOUT_S) -> Probe:
    """One GCS call to ``address`` (host:port), with ``token`` as Ray sends it or without one.
    The reply is protobuf bytes we never decode: only the status code matters."""
    try:
        import grpc
    except ImportError:
        return Probe.UNKNOWN
    metadata = [("authorization", f"Bearer {token}")] if token is not None else None
    with grpc.insecure_channel(address) as channel:
        try:
            channel.unary_unary(_PROBE_METHOD)(b"", timeout=timeout_s, metadata=metadata)
        except grpc.RpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.UNAUTHENTICATED:
                return Probe.NEEDS_TOKEN if token is None else Probe.TOKEN_REFUSED
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                return Probe.UNREACHABLE
            return Probe.UNKNOWN
    return Probe.OPEN if token is None else Probe.TOKEN_ACCEPTED


def prepare_auth(address: str, where: str, first: Probe | None = None) -> str | None:
    """Make this process present a token iff the cluster at ``address`` needs one; return a note for
    the user (which token is used) or None. ``first`` is a probe without a token already made.
    Raises TierflowError saying exactly what to do when the cluster needs a token we lack."""
    first = probe(address) if first is None else first
    if first in (Probe.OPEN, Probe.UNKNOWN):
        return None
    if first is Probe.UNREACHABLE:
        raise TierflowError(f"{where}: nothing answers at {address}; is the Ray head running there "
                            f"(`ray status --address {address}`)?")
    mode = os.environ.get(AUTH_MODE_VAR, "").strip().lower()
    if mode == "disabled":
        raise TierflowError(f"{where}: the Ray cluster at {address} requires a token (Ray token authentication) "
                            f"but {AUTH_MODE_VAR}=disabled here; unset it or set {AUTH_MODE_VAR}=token")
    token = find_token()
    if token is None:
        raise TierflowError(f"{where}: the Ray cluster at {address} requires a token (Ray token authentication) "
                            f"and this machine has none: {HOW_TO_GET_A_TOKEN}")
    if probe(address, token.value) is Probe.TOKEN_REFUSED:
        raise TierflowError(f"{where}: the Ray cluster at {address} refuses the token from {token.source}: it was "
                            f"started with another one; {HOW_TO_GET_A_TOKEN}")
    if mode != "token":
        enable_token_mode()
    return f"token authentication on, with the token from {token.source}"


def enable_token_mode() -> None:
    """Present the token for the rest of this process, as Ray does for a cluster it finds itself
    (Ray reads the mode from its config, which must be re-read after the variable changes)."""
    from tierflow.orchestrator.fleet import reload_ray_config

    os.environ[AUTH_MODE_VAR] = "token"
    reload_ray_config()
