"""Optimizers from the scenario's training settings.

Per-parameter optimizers (SGD with momentum, Adam) are separable, so one optimizer per tier's
stage takes exactly the steps one optimizer over the whole model would.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class OptimizerSpec:
    name: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.0
    weight_decay: float = 0.0


OPTIMIZERS = ("sgd", "adam")


def make_optimizer(params: Iterable[torch.nn.Parameter], spec: OptimizerSpec) -> torch.optim.Optimizer | None:
    """An optimizer for ``params``, or None when the stage has no parameters."""
    params = list(params)
    if not params:
        return None
    if spec.name == "sgd":
        return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)
    if spec.name == "adam":
        return torch.optim.Adam(params, lr=spec.lr, weight_decay=spec.weight_decay)
    raise ValueError(f"unknown optimizer {spec.name!r}; expected one of {OPTIMIZERS}")
