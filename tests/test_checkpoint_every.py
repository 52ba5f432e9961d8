"""checkpoints.every_rounds: a checkpoint after every N-th round and after the last."""

from __future__ import annotations

import pytest
import yaml

from tierflow.orchestrator.checkpoint import load_checkpoint
from tierflow.orchestrator.errors import TierflowError
from tierflow.orchestrator.runner import Orchestrator, RunOptions
from tierflow.orchestrator.scenario import load_scenario

pytestmark = pytest.mark.ray

DOC = {
    "name": "every",
    "cloud": {"flops_per_s": 1e12},
    "edges": [{"name": "e0", "position": [0, 0], "radius_m": 500, "flops_per_s": 1e11}],
    "devices": [{"name": "d0", "position": [10, 0], "flops_per_s": 1e9, "bandwidth_mbps": 20}],
    "model": {"name": "mlp"},
    "training": {"rounds": 5, "local_steps": 1, "batch_size": 16, "seed": 1},
    "split": [1],
    "execution": {"device_hosts": 1, "compute": "flops"},
    "checkpoints": {"every_rounds": 2},
}


class Recording(Orchestrator):
    saved: list[int] = []

    def save_checkpoint(self, log, wall_s):
        Recording.saved.append(self.state.round)
        super().save_checkpoint(log, wall_s)


def test_checkpoints_every_n_rounds_and_after_the_last(ray_session, tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(DOC))
    Recording(load_scenario(path), RunOptions(out_dir=tmp_path / "run", progress=False)).run()
    assert Recording.saved == [2, 4, 5]
    assert load_checkpoint(tmp_path / "run").round == 5


def test_every_rounds_must_be_a_whole_number_of_rounds(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({**DOC, "checkpoints": {"every_rounds": 0}}))
    with pytest.raises(TierflowError, match=r"s\.yaml: checkpoints\.every_rounds: expected an integer >= 1, got 0"):
        load_scenario(path)
    path.write_text(yaml.safe_dump({**DOC, "checkpoints": {"often": True}}))
    with pytest.raises(TierflowError, match=r"checkpoints\.often: unknown field"):
        load_scenario(path)
