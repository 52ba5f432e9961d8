"""User code a scenario names (``dataset: {name: mod:fn}``, ``model: {name: mod:fn}``) can raise
anything or return anything: each is a clear error against its field, before anything starts."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest

from tierflow.orchestrator.data import load_user_dataset
from tierflow.orchestrator.errors import TierflowError
from tierflow.orchestrator.scenario import load_scenario
from tierflow.orchestrator.world import build_world

HERE = Path(__file__).parent
GOOD = (HERE / "good_scenario.yaml").read_text()

ARRAYS = """
import numpy as np
def x(n, c=1, h=8, w=8): return np.zeros((n, c, h, w), np.float32)
def y(n): return np.arange(n) % 10
"""

# What the callable does -> what the error must say after "dataset.name: 'mod:make'".
DATASETS = {
    "raise RuntimeError('boom')": "failed: RuntimeError: boom",
    "raise KeyError('k')": "failed: KeyError: 'k'",
    "raise SystemExit(3)": "failed: SystemExit: 3",
    "return None": "expected it to return (x_train, y_train, x_test, y_test), got NoneType",
    "return 1, 2, 3": "got tuple of length 3",
    "return x(50), y(50), x(0), y(0)": "x_test: expected at least one sample (the test set scores the model)",
    "return x(0), y(0), x(5), y(5)": "x_train: expected at least one sample",
    "return x(50), y(49), x(5), y(5)": "y_train: expected one label per sample of x_train (50), got 49 labels",
    "return x(5), y(5), x(5), y(4)": "y_test: expected one label per sample of x_test (5), got 4 labels",
    "return np.zeros((50, 64)), y(50), x(5), y(5)": "x_train: expected an array shaped (N, C, H, W)",
    "return x(50, 0), y(50), x(5, 0), y(5)": "x_train: expected an array shaped (N, C, H, W) with C, H, W >= 1",
    "return x(50), y(50) * 1.0, x(5), y(5)": "y_train: expected a 1-D array of integer class labels",
    "return x(50), -y(50) - 1, x(5), y(5)": "y_train: expected labels from 0 to 99,999",
    "return x(50), y(50), x(5, 1, 4, 4), y(5)": "x_test: expected samples shaped like x_train's (1, 8, 8)",
    "return x(50).astype(str), y(50), x(5), y(5)": "x_train: expected real numbers",
    "return [[1], [1, 2]], y(2), x(5), y(5)": "x_train: expected an array (ValueError",
}


def _module(tmp_path: Path, monkeypatch, body: str) -> str:
    name = f"user_{uuid.uuid4().hex[:10]}"
    (tmp_path / f"{name}.py").write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


@pytest.mark.parametrize("body", sorted(DATASETS))
def test_a_user_dataset_that_raises_or_returns_junk_is_a_clear_error(tmp_path, monkeypatch, body):
    name = _module(tmp_path, monkeypatch, ARRAYS + f"def make():\n    {body}\n")
    with pytest.raises(TierflowError) as info:
        load_user_dataset(f"{name}:make")
    assert str(info.value).startswith(f"dataset.name: '{name}:make'")
    assert DATASETS[body] in str(info.value)
    sys.modules.pop(name, None)


@pytest.mark.parametrize("at", ["import", "call"])
def test_a_user_dataset_module_that_raises_names_the_scenario_and_field(tmp_path, monkeypatch, at):
    body = "raise RuntimeError('broken module')\n" if at == "import" else \
        "def make():\n    raise ZeroDivisionError('broken call')\n"
    name = _module(tmp_path, monkeypatch, body)
    scenario = tmp_path / "s.yaml"
    scenario.write_text(GOOD + f"dataset: {{name: '{name}:make'}}\n")
    with pytest.raises(TierflowError) as info:
        build_world(load_scenario(scenario))
    message = str(info.value)
    assert message.startswith(f"{scenario}: dataset.name: '{name}:make' failed: ")
    assert ("RuntimeError: broken module" if at == "import" else "ZeroDivisionError: broken call") in message


MODELS = {
    "raise RuntimeError('no model')": "RuntimeError: no model",
    "raise SystemExit(1)": "SystemExit: 1",
    "return 42": "did not return a torch.nn.Module",
    "return torch.nn.Linear(3, 3)": "could not build, trace and run",  # cannot take (N, 1, 8, 8)
    "return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 7))": "expected an output of shape (batch, 10)",
}


@pytest.mark.parametrize("body", sorted(MODELS))
def test_a_user_model_that_raises_or_cannot_run_is_a_clear_error(tmp_path, monkeypatch, body):
    name = _module(tmp_path, monkeypatch, f"import torch\ndef make(shape):\n    {body}\n")
    scenario = tmp_path / "s.yaml"
    scenario.write_text(GOOD.replace("model: {name: vgg5}", f"model: {{name: '{name}:make'}}").replace(
        "split: [pool1]", "split: [0]"))
    with pytest.raises(TierflowError) as info:
        load_scenario(scenario)
    assert str(info.value).startswith(f"{scenario}: model.name: ")
    assert MODELS[body] in str(info.value)


def test_a_user_dataset_checks_the_splits_against_its_shape(tmp_path, monkeypatch):
    name = _module(tmp_path, monkeypatch, ARRAYS + "def make():\n    return x(50), y(50), x(5), y(5)\n")
    scenario = tmp_path / "s.yaml"
    scenario.write_text(GOOD.replace("split: [pool1]", "split: [fc9]") + f"dataset: {{name: '{name}:make'}}\n")
    sc = load_scenario(scenario)  # its shape is unknown until loaded: the split is checked by the world
    with pytest.raises(TierflowError, match=rf"^{scenario}: split\[0\]: unknown layer 'fc9'"):
        build_world(sc)
    scenario.write_text(GOOD + f"dataset: {{name: '{name}:make'}}\n")
    assert [len(s) for s in build_world(load_scenario(scenario)).shards] == [25, 25]


@pytest.mark.parametrize(("devices", "message"), [
    ("  - {name: d1, position: [20, 0], flops_per_s: 1.0e+9, bandwidth_mbps: 20, data_share: 1.0e-9}\n",
     "devices: 'd1' would get no training sample (its data_share 1e-09 of 1 in all, of 1438 training samples"),
    ("  - {name: many, count: 1500, position: [20, 0], flops_per_s: 1.0e+9, bandwidth_mbps: 20}\n",
     "would get no training sample (the training set has 1438 samples for 1501 devices); expected fewer devices"),
])
def test_a_device_left_without_a_sample_is_refused_before_start(tmp_path, devices, message):
    text = GOOD.replace("  - {name: d1, position: [20, 0], flops_per_s: 1.0e+9, bandwidth_mbps: 20}\n", devices)
    for partition in ("iid", "dirichlet"):
        scenario = tmp_path / f"{partition}.yaml"
        scenario.write_text(text + f"dataset: {{partition: {partition}}}\n")
        if partition == "dirichlet" and "data_share" in devices:
            build_world(load_scenario(scenario))  # label skew ignores data_share and gives every device a sample
            continue
        with pytest.raises(TierflowError) as info:
            build_world(load_scenario(scenario))
        assert str(info.value).startswith(f"{scenario}: ") and message in str(info.value)
