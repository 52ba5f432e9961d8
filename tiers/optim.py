"""Optimizers from the scenario's training settings.

Per-parameter optimizers (SGD with momentum, Adam) are separable, so one optimizer per tier's
stage takes exactly the steps one optimizer over the whole model would.

They are our own, not ``torch.optim``'s: constructing any ``torch.optim`` optimizer imports
``torch._dynamo``, about a second of CPU in every actor process (several on a loaded host), and an
actor needs nothing of it. The updates are torch's single-tensor CPU path (``_single_tensor_sgd``,
``_single_tensor_adam``) operation for operation, so the results are bit-identical (tests/test_optim.py
checks against torch.optim), and ``state`` / ``state_dict()`` / ``load_state_dict()`` have torch's
layout (``momentum_buffer``; ``step`` as a float32 scalar tensor, ``exp_avg``, ``exp_avg_sq``), so
sessions, checkpoints and tiers/device_group.py's StackedOptimizer read and write the same state.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class OptimizerSpec:
    name: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.0
    weight_decay: float = 0.0


OPTIMIZERS = ("sgd", "adam")

# What torch.optim's state_dict records for settings a spec cannot change; a loaded state dict that
# asks for anything else (nesterov, amsgrad, ...) is refused rather than silently trained otherwise.
_SGD_FIXED = {"dampening": 0.0, "nesterov": False, "maximize": False}
_ADAM_FIXED = {"amsgrad": False, "maximize": False, "capturable": False, "differentiable": False,
               "decoupled_weight_decay": False}
_ADAM_BETAS = (0.9, 0.999)
_ADAM_EPS = 1e-8


class ElementwiseOptimizer:
    """Common to SGD and Adam: one group of parameters, per-parameter state, torch's state-dict layout."""

    def __init__(self, params: Iterable[torch.nn.Parameter], hyper: dict[str, Any]):
        self.params: list[torch.nn.Parameter] = list(params)
        self.hyper = dict(hyper)
        self.state: dict[torch.nn.Parameter, dict[str, Any]] = {}

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [{**self.hyper, "params": self.params}]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                p.grad.detach_().zero_()

    @torch.no_grad()
    def step(self) -> None:
        for p in self.params:
            if p.grad is not None:
                self._update(p, p.grad, self.state.setdefault(p, {}))

    def _update(self, p: torch.Tensor, grad: torch.Tensor, state: dict[str, Any]) -> None:
        raise NotImplementedError

    # ----- torch.optim's state-dict layout: state by parameter index, one param group -----
    def state_dict(self) -> dict[str, Any]:
        index = {p: i for i, p in enumerate(self.params)}
        return {"state": {index[p]: dict(s) for p, s in self.state.items() if s},
                "param_groups": [{**self.hyper, "params": list(range(len(self.params)))}]}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        groups = list(state_dict["param_groups"])
        if len(groups) != 1 or len(groups[0]["params"]) != len(self.params):
            raise ValueError(f"optimizer state has {[len(g['params']) for g in groups]} parameters in its groups; "
                             f"this stage has one group of {len(self.params)}")
        self._load_hyper(groups[0])
        by_index = dict(zip(groups[0]["params"], self.params, strict=True))
        self.state = {}
        for idx, entry in state_dict["state"].items():
            p = by_index[int(idx)]
            # Copies: the source (another optimizer, a checkpoint's arrays) must not step with this one.
            self.state[p] = {k: (v.to(p.dtype if k != "step" else v.dtype, copy=True) if torch.is_tensor(v) else v)
                             for k, v in entry.items()}

    def _load_hyper(self, group: Mapping[str, Any]) -> None:
        for key, fixed in self._fixed().items():
            if key in group and group[key] != fixed:
                raise ValueError(f"optimizer state asks for {key}={group[key]!r}; only {fixed!r} is supported")
        for key in self.hyper:
            if key in group:
                value = group[key]
                self.hyper[key] = tuple(value) if isinstance(self.hyper[key], tuple) else value

    def _fixed(self) -> dict[str, Any]:
        return {}


class SGD(ElementwiseOptimizer):
    """torch.optim.SGD (dampening 0, no Nesterov) on CPU, bit for bit."""

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float, momentum: float = 0.0,
                 weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, **_SGD_FIXED})

    def _fixed(self) -> dict[str, Any]:
        return _SGD_FIXED

    def _update(self, p: torch.Tensor, grad: torch.Tensor, state: dict[str, Any]) -> None:
        h = self.hyper
        if h["weight_decay"] != 0:
            grad = grad.add(p, alpha=h["weight_decay"])
        if h["momentum"] != 0:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = grad.detach().clone()
            else:
                buf.mul_(h["momentum"]).add_(grad, alpha=1 - h["dampening"])
            grad = buf
        p.add_(grad, alpha=-h["lr"])


class Adam(ElementwiseOptimizer):
    """torch.optim.Adam (no AMSGrad, coupled weight decay) on CPU, bit for bit."""

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "betas": _ADAM_BETAS, "eps": _ADAM_EPS, "weight_decay": weight_decay,
                                  **_ADAM_FIXED})

    def _fixed(self) -> dict[str, Any]:
        return _ADAM_FIXED

    def _update(self, p: torch.Tensor, grad: torch.Tensor, state: dict[str, Any]) -> None:
        h = self.hyper
        beta1, beta2 = h["betas"]
        if not state:
            # torch keeps the step on the CPU as a float32 scalar tensor (float64 under a float64 default).
            dtype = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
            state["step"] = torch.tensor(0.0, dtype=dtype)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        step_t, exp_avg, exp_avg_sq = state["step"], state["exp_avg"], state["exp_avg_sq"]
        step_t += 1
        if h["weight_decay"] != 0:
            grad = grad.add(p, alpha=h["weight_decay"])
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        step = step_t.item()  # the bias corrections in Python floats (double), as torch computes them
        step_size = h["lr"] / (1 - beta1**step)
        bias_correction2_sqrt = (1 - beta2**step) ** 0.5
        denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(h["eps"])
        p.addcdiv_(exp_avg, denom, value=-step_size)


def make_optimizer(params: Iterable[torch.nn.Parameter], spec: OptimizerSpec) -> ElementwiseOptimizer | None:
    """An optimizer for ``params``, or None when the stage has no parameters."""
    params = list(params)
    if not params:
        return None
    if spec.name == "sgd":
        return SGD(params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)
    if spec.name == "adam":
        return Adam(params, lr=spec.lr, weight_decay=spec.weight_decay)
    raise ValueError(f"unknown optimizer {spec.name!r}; expected one of {OPTIMIZERS}")
