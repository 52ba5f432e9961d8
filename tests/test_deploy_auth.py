"""The cluster files start every node with Ray's token authentication and one shared token."""

from __future__ import annotations

from pathlib import Path

import yaml

DEPLOY = Path(__file__).parent.parent / "deploy"


def test_cluster_launcher_starts_every_node_with_token_auth_and_copies_the_token():
    cfg = yaml.safe_load((DEPLOY / "ray" / "cluster.yaml").read_text())
    starts = [c for c in cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"] if "ray start" in c]
    assert len(starts) == 2 and all(c.startswith("RAY_AUTH_MODE=token ray start") for c in starts)
    home = "/home/" + cfg["auth"]["ssh_user"]
    assert cfg["file_mounts"][f"{home}/.ray/auth_token"] == "~/.ray/auth_token"


def test_kuberay_gives_every_container_the_same_secret_token():
    rc = yaml.safe_load((DEPLOY / "kuberay" / "raycluster.yaml").read_text())
    pods = [rc["spec"]["headGroupSpec"]] + rc["spec"]["workerGroupSpecs"]
    containers = [c for pod in pods for c in pod["template"]["spec"]["containers"]]
    secrets = set()
    for c in containers:
        env = {e["name"]: e for e in c["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token", c["name"]
        ref = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
        secrets.add((ref["name"], ref["key"]))
    assert len(containers) == 4 and secrets == {("tierflow-ray-token", "auth_token")}


def test_the_readme_names_the_secret_and_the_token_steps():
    text = (DEPLOY / "README.md").read_text()
    assert "kubectl create secret generic tierflow-ray-token --from-literal=auth_token=" in text
    assert "ray get-auth-token --generate" in text
    assert text.count("RAY_AUTH_MODE=token ray start") == 3
