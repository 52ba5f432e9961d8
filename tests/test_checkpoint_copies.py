"""Checkpoints write the global model once: session arrays equal to it are listed, not repeated."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
from checkpoint_samples import valid_state
from test_checkpoint_safety import edit_state, rewrite_manifest

from tierflow.orchestrator.checkpoint import GLOBAL_COPIES, Checkpoint, load_checkpoint, save_checkpoint
from tierflow.orchestrator.errors import TierflowError


def city_checkpoint(n: int = 50) -> Checkpoint:
    w, b = np.arange(12, dtype=np.float32).reshape(3, 4), np.ones(3, np.float32)
    devices = {f"d{i}": ({"step": i}, {"sampler/order": np.arange(i + 1)}) for i in range(n)}
    sessions = {"e0": {f"d{i}": ({"opt": "sgd"}, {"state/w": w.copy(), "state/b": b.copy()}) for i in range(n)},
                "cloud": {}}
    if n > 4:
        sessions["e0"]["d3"][1]["state/w"][0, 0] = 7.5  # trained since the push: its own values
        sessions["e0"]["d4"][1]["state/b"] = b.astype(np.float64)  # same values, other dtype: its own array
    return Checkpoint(valid_state(1), {"w": w, "b": b}, devices, sessions)


def test_copies_of_the_global_model_are_listed_once_and_load_back_equal(tmp_path):
    ckpt = city_checkpoint()
    path = save_checkpoint(tmp_path, ckpt)
    with zipfile.ZipFile(path / "arrays.npz") as zf:
        names = set(zf.namelist())
    assert "session/e0/d3/state/w.npy" in names and "session/e0/d4/state/b.npy" in names
    assert "session/e0/d5/state/w.npy" not in names  # equal to global/w
    copies = json.loads((path / "state.json").read_text())[GLOBAL_COPIES]
    assert len(copies) == 2 * 50 - 2
    back = load_checkpoint(tmp_path)
    for actor, sessions in ckpt.sessions.items():
        assert back.sessions[actor].keys() == sessions.keys()
        for sid, (meta, arrays) in sessions.items():
            got_meta, got = back.sessions[actor][sid]
            assert got_meta == meta and got.keys() == arrays.keys()
            for k, v in arrays.items():
                assert got[k].dtype == v.dtype and np.array_equal(got[k], v)
    for d, (_, arrays) in ckpt.devices.items():
        assert np.array_equal(back.devices[d][1]["sampler/order"], arrays["sampler/order"])


@pytest.mark.parametrize("bad", ["session/e0/nobody/state/w", "session/e0/d5/state/nope", "session/e0/d5/w",
                                 "session/e0/d3/state/w", 3])
def test_a_copy_that_names_no_global_array_is_refused(tmp_path, bad):
    path = save_checkpoint(tmp_path, city_checkpoint())
    edit_state(path, lambda doc: doc[GLOBAL_COPIES].append(bad))
    rewrite_manifest(path)
    with pytest.raises(TierflowError, match=rf"state\.json: {GLOBAL_COPIES}: .* is not a copy of the global model"):
        load_checkpoint(tmp_path)


def test_a_checkpoint_without_the_list_still_loads(tmp_path):
    ckpt = city_checkpoint(3)
    ckpt.sessions["e0"] = {"d0": ({}, {"other": np.zeros(2)})}
    path = save_checkpoint(tmp_path, ckpt)
    edit_state(path, lambda doc: doc.pop(GLOBAL_COPIES))
    rewrite_manifest(path)
    assert np.array_equal(load_checkpoint(tmp_path).sessions["e0"]["d0"][1]["other"], np.zeros(2))
