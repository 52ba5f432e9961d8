"""`tierflow run` against a real `ray start` cluster: a head and a worker, with Ray's token authentication.

The cluster lives in its own Ray temp dir (RAY_TMPDIR) on free ports, bound to 127.0.0.1, and is
stopped by killing the process groups this test started: `ray stop` would stop every Ray on the
machine. The head offers `tierflow_cloud`, the worker `tierflow_edge` and `tierflow_device`
(tiers/actors.py asks for them), so the cloud must run on the head and everything else on the worker.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow]

HERE = Path(__file__).parent
TIERFLOW = [sys.executable, "-m", "tierflow.orchestrator.cli"]
RAY = str(Path(sys.executable).parent / "ray")
START_TIMEOUT_S = 120.0


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _node_ports() -> list[str]:
    """Every port a Ray node opens, chosen free: two nodes on one machine must not collide."""
    names = ["--node-manager-port", "--object-manager-port", "--metrics-export-port",
             "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--runtime-env-agent-port"]
    return [f"{name}={port}" for name, port in zip(names, _free_ports(len(names)), strict=True)]


@dataclass
class RayStartCluster:
    temp_dir: Path
    address: str
    token: str
    env: dict[str, str]  # the environment every node was started with
    procs: list[subprocess.Popen]

    def nodes(self) -> list:
        """The GCS's node table, read as protobuf (no ray.init in the test process)."""
        import grpc
        from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

        with grpc.insecure_channel(self.address) as channel:
            reply = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel).GetAllNodeInfo(
                gcs_service_pb2.GetAllNodeInfoRequest(), timeout=10,
                metadata=[("authorization", f"Bearer {self.token}")])
        return [n for n in reply.node_info_list if n.state == 0]  # ALIVE

    def node_with(self, resource: str) -> str:
        (node,) = [n for n in self.nodes() if n.resources_total.get(resource, 0) > 0]
        return node.node_id.hex()


def _start_node(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    # Its own session, so the whole node (raylet, GCS, workers) is one process group to stop.
    with open(log, "wb") as fh:
        return subprocess.Popen([RAY, "start", "--block", "--node-ip-address=127.0.0.1", "--disable-usage-stats",
                                 *_node_ports(), *args], env=env, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _wait(cond, what: str, procs: list[subprocess.Popen], logs: list[Path]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            break
        try:
            if cond():
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.5)
    tails = "\n".join(f"--- {log}\n{log.read_text(errors='replace')[-2000:]}" for log in logs if log.exists())
    raise AssertionError(f"{what} did not come up\n{tails}")


def _stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM each node's process group (a blocking `ray start` then stops its node), SIGKILL what is left."""
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
    for p in procs:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
    time.sleep(1)
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _leftovers(temp_dir: Path) -> list[int]:
    """Processes whose command line names our temp dir: ours by construction."""
    mine = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and str(temp_dir).encode() in (entry / "cmdline").read_bytes():
                mine.append(int(entry.name))
        except OSError:  # gone meanwhile
            pass
    return mine


@pytest.fixture(scope="module")
def ray_start_cluster():
    temp_dir = Path(tempfile.mkdtemp(prefix="tfrs-", dir="/tmp"))  # short: Ray's socket paths are bounded
    token = secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH")}
    # Token authentication on, with a token of our own, so the test neither depends on nor
    # touches ~/.ray/auth_token: every node is given the same RAY_AUTH_MODE and RAY_AUTH_TOKEN.
    env.update(RAY_TMPDIR=str(temp_dir), RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, PYTHONPATH=str(HERE.parent))
    (port,) = _free_ports(1)
    logs = [temp_dir / "head.log", temp_dir / "worker.log"]
    procs = [_start_node(["--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false",
                          '--resources={"tierflow_cloud": 1}'], env, logs[0])]
    # The worker starts at once and waits for the head's GCS: the two start-ups overlap.
    procs.append(_start_node([f"--address=127.0.0.1:{port}", "--num-cpus=1",
                              '--resources={"tierflow_edge": 4, "tierflow_device": 4}'], env, logs[1]))
    address_file = temp_dir / "ray" / "ray_current_cluster"
    cluster = RayStartCluster(temp_dir, "", token, env, procs)
    try:
        _wait(address_file.exists, "the head's address file", procs, logs)
        # Ray advertises the machine's own address even when told 127.0.0.1: use what it wrote.
        cluster.address = address_file.read_text().strip()
        assert cluster.address.endswith(f":{port}")
        _wait(lambda: len(cluster.nodes()) == 2, "the head and the worker", procs, logs)
        yield cluster
    finally:
        _stop(procs)
        # Ray starts some of a node's processes in sessions of their own, and a loaded machine may
        # take a while to end the rest: end what still names our temp dir (ours by construction),
        # then check that nothing of ours is left.
        left = _leftovers(temp_dir)
        deadline = time.monotonic() + 20
        while left and time.monotonic() < deadline:
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.5)
            left = _leftovers(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not left, f"processes of the test's cluster survived SIGKILL: {left}"


def _tiny(tmp_path: Path) -> Path:
    scenario = tmp_path / "tiny.yaml"
    scenario.write_text((HERE / "good_scenario.yaml").read_text())
    return scenario


def _run_tierflow(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([*TIERFLOW, *args], env=env, capture_output=True, text=True, timeout=300)


def _check_placement(cluster: RayStartCluster, out: Path) -> None:
    placed = json.loads((out / "summary.json").read_text())["actor_nodes"]
    head, worker = cluster.node_with("tierflow_cloud"), cluster.node_with("tierflow_edge")
    assert head != worker
    assert placed["cloud"] == head
    assert placed["edge:e0"] == worker
    hosts = [v for k, v in placed.items() if k.startswith("devices:")]
    assert hosts and all(v == worker for v in hosts)


def test_run_with_address_joins_and_finds_the_token(ray_start_cluster, tmp_path):
    """RAY_AUTH_MODE unset in the run's environment: tierflow sees the cluster needs a token and
    presents the one it has, instead of Ray's 20 s of retries and a ConnectionError."""
    cluster = ray_start_cluster
    env = {k: v for k, v in cluster.env.items() if k != "RAY_AUTH_MODE"}
    out = tmp_path / "out"
    proc = _run_tierflow(["run", str(_tiny(tmp_path)), "--address", cluster.address, "--out", str(out)], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.splitlines()[0] == (f"tierflow: joining the Ray cluster at {cluster.address} (from --address); "
                                           "token authentication on, with the token from RAY_AUTH_TOKEN")
    _check_placement(cluster, out)


def test_run_without_address_finds_the_ray_start_cluster(ray_start_cluster, tmp_path):
    cluster = ray_start_cluster
    out = tmp_path / "out"
    proc = _run_tierflow(["run", str(_tiny(tmp_path)), "--out", str(out)], cluster.env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    address_file = cluster.temp_dir / "ray" / "ray_current_cluster"
    assert proc.stderr.splitlines()[0] == (f"tierflow: joining the Ray cluster at {cluster.address} "
                                           f"(found a `ray start` on this machine: {address_file}); "
                                           "token authentication on, with the token from RAY_AUTH_TOKEN")
    _check_placement(cluster, out)


def test_no_token_is_one_clear_error_before_anything_starts(ray_start_cluster, tmp_path):
    cluster = ray_start_cluster
    env = {k: v for k, v in cluster.env.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    env["HOME"] = str(tmp_path)  # no ~/.ray/auth_token either
    out = tmp_path / "out"
    proc = _run_tierflow(["run", str(_tiny(tmp_path)), "--address", cluster.address, "--out", str(out)], env)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert f"--address: the Ray cluster at {cluster.address} requires a token" in proc.stderr
    assert "ray get-auth-token" in proc.stderr
    assert not out.exists()
