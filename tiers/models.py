"""Model zoo: the networks a scenario can name, plus user models as ``module:callable``.

Every model here is traceable by ``torch.fx.symbolic_trace`` so any of them splits by graph.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class InputShape:
    """Shape of one sample (channels, height, width) and the number of classes."""

    channels: int
    height: int
    width: int
    num_classes: int


class VGG5(nn.Module):
    """VGG-5 as in FedAdapt/FedFly: conv32, pool, conv64, pool, conv64, FC 128, FC classes."""

    def __init__(self, shape: InputShape):
        super().__init__()
        self.conv1 = nn.Conv2d(shape.channels, 32, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(64, 64, 3, padding=1)
        self.relu3 = nn.ReLU()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(64 * (shape.height // 4) * (shape.width // 4), 128)
        self.relu4 = nn.ReLU()
        self.fc2 = nn.Linear(128, shape.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = self.flatten(self.relu3(self.conv3(x)))
        return self.fc2(self.relu4(self.fc1(x)))


class _ResidualBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.conv_a = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn_a = nn.BatchNorm2d(out_ch)
        self.relu_a = nn.ReLU()
        self.conv_b = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn_b = nn.BatchNorm2d(out_ch)
        self.shortcut = (
            nn.Identity()
            if stride == 1 and in_ch == out_ch
            else nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch))
        )
        self.relu_out = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn_b(self.conv_b(self.relu_a(self.bn_a(self.conv_a(x)))))
        return self.relu_out(y + self.shortcut(x))


class SmallResNet(nn.Module):
    """A small ResNet-style CNN: a stem and three residual blocks, so the layer graph is a DAG."""

    def __init__(self, shape: InputShape, width: int = 16):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(shape.channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.block1 = _ResidualBlock(width, width, 1)
        self.block2 = _ResidualBlock(width, 2 * width, 2)
        self.block3 = _ResidualBlock(2 * width, 2 * width, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(2 * width, shape.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(self.stem(x))))
        return self.fc(self.flatten(self.pool(x)))


class MLP(nn.Module):
    """A tiny multilayer perceptron, for scale runs where the model must be cheap."""

    def __init__(self, shape: InputShape, hidden: int = 64):
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(shape.channels * shape.height * shape.width, hidden)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.relu2 = nn.ReLU()
        self.fc3 = nn.Linear(hidden, shape.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(self.relu2(self.fc2(self.relu1(self.fc1(self.flatten(x))))))


BUILTIN_MODELS: dict[str, Callable[[InputShape], nn.Module]] = {
    "vgg5": VGG5,
    "resnet_small": SmallResNet,
    "mlp": MLP,
}


def load_callable(spec: str) -> Callable:
    """Resolve ``package.module:attribute`` to the object it names."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"expected 'module:callable', got {spec!r}")
    module = importlib.import_module(module_name)
    try:
        return getattr(module, attr)
    except AttributeError as exc:
        raise ValueError(f"module {module_name!r} has no attribute {attr!r}") from exc


def build_model(name: str, shape: InputShape, seed: int = 0) -> nn.Module:
    """Build a model by builtin name or ``module:callable`` (called with the InputShape)."""
    torch.manual_seed(seed)
    factory = BUILTIN_MODELS.get(name) or load_callable(name)
    model = factory(shape)
    if not isinstance(model, nn.Module):
        raise ValueError(f"model {name!r} did not return a torch.nn.Module")
    return model
