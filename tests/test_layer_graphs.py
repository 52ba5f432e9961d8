"""The layer-graph cache: what it reads back is what counting gives, and it never serves another model."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from tierflow.orchestrator import layer_graphs
from tierflow.orchestrator.layer_graphs import graph_key, layer_graph
from tierflow.placement.graph import build_layer_graph
from tierflow.tiers.models import InputShape, build_model

SHAPE = InputShape(1, 8, 8, 10)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TIERFLOW_CACHE_DIR", str(tmp_path))
    return tmp_path / "layer_graphs"


def _same(got, want) -> None:
    assert list(got.nodes) == list(want.nodes)
    for n in want.nodes:
        assert got.nodes[n] == want.nodes[n]
        assert {k: type(v) for k, v in got.nodes[n].items()} == {k: type(v) for k, v in want.nodes[n].items()}
    assert list(got.edges) == list(want.edges)
    assert got.graph == want.graph


@pytest.mark.parametrize("model_name", ["mlp", "vgg5", "resnet_small"])
def test_a_cached_graph_equals_a_counted_one_and_is_not_counted_again(cache, monkeypatch, model_name):
    model = build_model(model_name, SHAPE)
    want = build_layer_graph(model, (1, 8, 8))
    _same(layer_graph(model, (1, 8, 8)), want)
    assert len(list(cache.glob("*.json"))) == 1

    def no_counting(*args, **kwargs):
        raise AssertionError("counted again")

    monkeypatch.setattr(layer_graphs, "build_layer_graph", no_counting)
    _same(layer_graph(build_model(model_name, SHAPE, seed=5), (1, 8, 8)), want)  # other weights, same graph


def test_a_damaged_entry_is_counted_again_and_replaced(cache):
    model = build_model("vgg5", SHAPE)
    want = layer_graph(model, (1, 8, 8))
    (entry,) = cache.glob("*.json")
    entry.write_text(entry.read_text()[:100])
    _same(layer_graph(model, (1, 8, 8)), want)
    _same(layer_graphs.graph_from_json(entry.read_text()), want)


class _Twice(nn.Module):
    def __init__(self, twice: bool):
        super().__init__()
        self.fc, self.twice = nn.Linear(64, 10), twice

    def forward(self, x):
        y = self.fc(torch.flatten(x, 1))
        return self.fc(torch.flatten(x, 1)) + y if self.twice else y


def test_a_model_with_other_code_or_shapes_gets_its_own_entry():
    keys = {graph_key(_Twice(False), (1, 8, 8), 8), graph_key(_Twice(True), (1, 8, 8), 8),
            graph_key(_Twice(False), (1, 8, 8), 4), graph_key(build_model("mlp", SHAPE), (1, 8, 8), 8),
            graph_key(build_model("mlp", InputShape(1, 8, 8, 3)), (1, 8, 8), 8)}
    assert len(keys) == 5


def test_a_warm_start_does_not_import_torch_dynamo(cache):
    code = ("import sys\n"
            "from tierflow.orchestrator.layer_graphs import layer_graph\n"
            "from tierflow.tiers.models import InputShape, build_model\n"
            "layer_graph(build_model('vgg5', InputShape(1, 8, 8, 10)), (1, 8, 8))\n"
            "print('torch._dynamo' in sys.modules)\n")
    first = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    second = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert (first.stdout.strip(), second.stdout.strip()) == ("True", "False")
