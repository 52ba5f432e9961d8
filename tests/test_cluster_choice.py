"""Which Ray a run uses, and what a token-authenticated cluster needs, without starting Ray.

The token checks talk to a real gRPC server that answers the call Ray's GCS answers and, like a
GCS with token authentication on, refuses it without the right bearer token.
"""

from __future__ import annotations

from concurrent import futures
from pathlib import Path

import grpc
import pytest

from tierflow.orchestrator import cluster, ray_auth
from tierflow.orchestrator.cluster import LOCAL, ClusterTarget, choose_target, ray_temp_dir, read_address_file
from tierflow.orchestrator.errors import TierflowError
from tierflow.orchestrator.ray_auth import Probe, find_token, prepare_auth, probe


def _env_with_cluster(tmp_path: Path, address: str | None) -> dict[str, str]:
    (tmp_path / "ray").mkdir()
    if address is not None:
        (tmp_path / "ray" / "ray_current_cluster").write_text(address)
    return {"RAY_TMPDIR": str(tmp_path)}


def test_explicit_address_wins_over_everything(tmp_path):
    env = {**_env_with_cluster(tmp_path, "10.0.0.9:6379"), "RAY_ADDRESS": "10.0.0.8:6379"}
    assert choose_target("127.0.0.1:7000", env) == ClusterTarget("127.0.0.1:7000", "--address")


def test_ray_address_then_the_address_file_then_a_private_instance(tmp_path):
    env = _env_with_cluster(tmp_path, "10.0.0.9:6379")
    assert choose_target(None, {**env, "RAY_ADDRESS": "10.0.0.8:6379"}).address == "10.0.0.8:6379"
    local = choose_target(None, {**env, "RAY_ADDRESS": "local"})
    assert (local.address, local.source, local.joins) == (LOCAL, "RAY_ADDRESS", False)
    found = choose_target(None, env)
    assert found == ClusterTarget("10.0.0.9:6379", str(tmp_path / "ray" / "ray_current_cluster"))
    assert "found a `ray start` on this machine" in found.describe()
    assert found.describe().startswith("tierflow: joining the Ray cluster at 10.0.0.9:6379")
    (tmp_path / "ray" / "ray_current_cluster").unlink()
    assert choose_target(None, env) == ClusterTarget(LOCAL, "no cluster found")


def test_ray_temp_dir_follows_rays_own_order():
    assert ray_temp_dir({"RAY_TMPDIR": "/a", "TMPDIR": "/b"}) == Path("/a/ray")
    assert ray_temp_dir({}) == Path("/tmp/ray")


@pytest.mark.parametrize("bad", ["127.0.0.1", "127.0.0.1:0", "127.0.0.1:70000", "http://h:1", "h:p", "a b:1", ""])
def test_bad_addresses_name_their_source(bad, tmp_path):
    with pytest.raises(TierflowError, match="--address: expected HOST:PORT"):
        choose_target(bad or " ", {})
    if bad:
        with pytest.raises(TierflowError, match="RAY_ADDRESS: expected HOST:PORT"):
            choose_target(None, {"RAY_ADDRESS": bad})


def test_an_address_file_holding_junk_is_no_cluster(tmp_path):
    path = tmp_path / "ray_current_cluster"
    path.write_bytes(b"\xff\xfe not an address")
    assert read_address_file(path) is None
    assert read_address_file(tmp_path / "missing") is None


# ----- token authentication, against a GCS stand-in -----

class _Gcs:
    def __init__(self, token: str | None):
        self.token = token
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        self.server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
            "ray.rpc.NodeInfoGcsService", {"GetClusterId": grpc.unary_unary_rpc_method_handler(self._answer)})])
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        self.address = f"127.0.0.1:{self.port}"

    def _answer(self, request: bytes, context) -> bytes:
        sent = dict(context.invocation_metadata()).get("authorization")
        if self.token is not None and sent != f"Bearer {self.token}":
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "InvalidAuthToken: Authentication token is missing")
        return b"\n\x00"


@pytest.fixture
def no_token(monkeypatch, tmp_path):
    for var in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ray/auth_token
    enabled = []
    monkeypatch.setattr(ray_auth, "enable_token_mode", lambda: enabled.append(True))
    return enabled


def test_probe_tells_open_needs_token_accepted_refused_unreachable():
    open_gcs, locked = _Gcs(None), _Gcs("s3cret")
    try:
        assert probe(open_gcs.address) is Probe.OPEN
        assert probe(locked.address) is Probe.NEEDS_TOKEN
        assert probe(locked.address, "s3cret") is Probe.TOKEN_ACCEPTED
        assert probe(locked.address, "guess") is Probe.TOKEN_REFUSED
    finally:
        open_gcs.server.stop(None)
        locked.server.stop(None)
    assert probe(open_gcs.address, timeout_s=2) is Probe.UNREACHABLE


def test_a_cluster_needing_a_token_we_lack_says_what_to_do(no_token):
    gcs = _Gcs("s3cret")
    try:
        with pytest.raises(TierflowError, match=r"--address: the Ray cluster at .* requires a token .*"
                                                r"ray get-auth-token.*RAY_AUTH_TOKEN.*RAY_AUTH_MODE=token"):
            prepare_auth(gcs.address, "--address")
        assert no_token == []
    finally:
        gcs.server.stop(None)


def test_a_wrong_token_is_named_with_its_source(no_token, monkeypatch, tmp_path):
    gcs = _Gcs("s3cret")
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("stale\n")
    try:
        with pytest.raises(TierflowError, match=r"refuses the token from .*\.ray/auth_token"):
            prepare_auth(gcs.address, "--address")
        monkeypatch.setenv("RAY_AUTH_TOKEN", "s3cret")  # Ray's order: the variable before the file
        assert prepare_auth(gcs.address, "--address") == "token authentication on, with the token from RAY_AUTH_TOKEN"
        assert no_token == [True]  # this process now presents the token
    finally:
        gcs.server.stop(None)


def test_auth_mode_disabled_against_a_token_cluster_is_refused(no_token, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "s3cret")
    gcs = _Gcs("s3cret")
    try:
        with pytest.raises(TierflowError, match="RAY_AUTH_MODE=disabled"):
            prepare_auth(gcs.address, "RAY_ADDRESS")
    finally:
        gcs.server.stop(None)


def test_an_open_cluster_needs_nothing(no_token):
    gcs = _Gcs(None)
    try:
        assert prepare_auth(gcs.address, "--address") is None
        assert no_token == []
    finally:
        gcs.server.stop(None)


def test_token_file_path_variable(tmp_path):
    named = tmp_path / "tok"
    named.write_text("  abc \n")
    assert find_token({"RAY_AUTH_TOKEN_PATH": str(named)}, home=tmp_path) == ray_auth.Token("abc", str(named))
    assert find_token({}, home=tmp_path) is None


def test_unreachable_explicit_address_fails_before_ray_starts(monkeypatch, tmp_path):
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: pytest.fail("ray.init must not be reached"))
    gcs = _Gcs(None)
    gcs.server.stop(None)  # a port where nothing answers any more
    with pytest.raises(TierflowError, match=r"--address: nothing answers at 127\.0\.0\.1:\d+"):
        cluster.ensure_ray(gcs.address)


def test_a_stale_address_file_starts_a_private_instance(monkeypatch, tmp_path, capsys):
    import ray

    gcs = _Gcs(None)
    gcs.server.stop(None)
    env = _env_with_cluster(tmp_path, gcs.address)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", env["RAY_TMPDIR"])
    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    target = cluster.ensure_ray(None)
    assert not target.joins and calls[0]["address"] == LOCAL and "num_cpus" in calls[0]
    first = capsys.readouterr().err.splitlines()[0]
    assert first.startswith("tierflow: starting a private local Ray instance") and "nothing answers" in first


def test_joining_never_passes_num_cpus(monkeypatch, tmp_path, capsys):
    import ray

    gcs = _Gcs(None)
    try:
        monkeypatch.setattr(ray, "is_initialized", lambda: False)
        calls = []
        monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
        monkeypatch.setenv("RAY_ADDRESS", gcs.address)
        assert cluster.ensure_ray(None).joins
        assert calls == [{"address": gcs.address, "logging_level": "WARNING", "log_to_driver": True}]
        assert capsys.readouterr().err.splitlines()[0] == (
            f"tierflow: joining the Ray cluster at {gcs.address} (from RAY_ADDRESS)")
    finally:
        gcs.server.stop(None)


def test_a_failed_ray_init_is_a_tierflow_error(monkeypatch):
    import ray

    gcs = _Gcs(None)

    def refuse(**kw):
        raise ConnectionError("Failed to connect to Ray cluster at x\nmore")

    try:
        monkeypatch.setattr(ray, "is_initialized", lambda: False)
        monkeypatch.setattr(ray, "init", refuse)
        with pytest.raises(TierflowError, match=r"^--address: could not join the Ray cluster at .*: Failed to "
                                                r"connect to Ray cluster at x$"):
            cluster.ensure_ray(gcs.address)
    finally:
        gcs.server.stop(None)


def test_cli_bad_address_exits_2_before_the_run_directory_exists(tmp_path, capsys):
    from tierflow.orchestrator.cli import main

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "run"
    assert main(["run", str(root / "examples" / "quickstart.yaml"), "--address", "127.0.0.1", "--out", str(out)]) == 2
    assert "--address: expected HOST:PORT" in capsys.readouterr().err
    assert not out.exists()


def test_a_found_cluster_needing_a_token_names_the_address_file(no_token, monkeypatch, tmp_path):
    import ray

    gcs = _Gcs("s3cret")
    try:
        env = _env_with_cluster(tmp_path, gcs.address)
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
        monkeypatch.setenv("RAY_TMPDIR", env["RAY_TMPDIR"])
        monkeypatch.setattr(ray, "is_initialized", lambda: False)
        monkeypatch.setattr(ray, "init", lambda **kw: pytest.fail("ray.init must not be reached"))
        path = tmp_path / "ray" / "ray_current_cluster"
        with pytest.raises(TierflowError, match=rf"^{path}: the Ray cluster at {gcs.address} requires a token"):
            cluster.ensure_ray(None)
    finally:
        gcs.server.stop(None)
