"""Sessions: the per-device state a tier holds, as data that can be exported and imported.

An edge (or the cloud) keeps one session per device it serves: that device's part of the model,
its optimizer state and its counters. Exporting a session gives a JSON-able header and a dict of
numpy arrays, which is what migration moves between edge servers.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from tierflow.tiers.clone import clone_module
from tierflow.tiers.models import InputShape, build_model
from tierflow.tiers.optim import OptimizerSpec
from tierflow.tiers.split import Stage, split_graph, trace
from tierflow.tiers.step import StageRunner

Assignment = Mapping[str, int]


@dataclass(frozen=True)
class SplitKey:
    """A hashable split: the tier of every node, and how many tiers there are."""

    tiers: tuple[tuple[str, int], ...]
    n_tiers: int

    @classmethod
    def of(cls, assignment: Assignment, n_tiers: int) -> SplitKey:
        return cls(tuple(sorted((k, int(v)) for k, v in assignment.items())), int(n_tiers))

    def assignment(self) -> dict[str, int]:
        return dict(self.tiers)

    def counts(self) -> list[int]:
        """Compute nodes per tier (the input placeholder is not a layer)."""
        out = [0] * self.n_tiers
        for _, tier in self.tiers:
            out[tier] += 1
        out[0] -= 1
        return out


@dataclass(frozen=True)
class GroupTemplate:
    module: torch.nn.Module
    param_names: list[str]
    buffer_names: list[str]
    state_names: list[str]  # what a stage exports, in its order


class StageFactory:
    """Builds (and caches) the stages of a model for each split; hands out private copies (their
    own tensors, the template's compiled code: tiers/clone.py)."""

    def __init__(self, model_name: str, shape: InputShape):
        self.model_name = model_name
        self.shape = shape
        self._gm = trace(build_model(model_name, shape))
        self._cache: dict[SplitKey, list[Stage]] = {}
        self._names: dict[SplitKey, list[list[str]]] = {}
        self._groups: dict[tuple[SplitKey, int, int], GroupTemplate] = {}

    def _template(self, key: SplitKey, tier: int) -> Stage:
        if key not in self._cache:
            self._cache[key] = split_graph(self._gm, key.assignment(), key.n_tiers)
            self._names[key] = [list(s.module.state_dict()) for s in self._cache[key]]
        return self._cache[key][tier]

    def stage(self, key: SplitKey, tier: int, state: Mapping[str, np.ndarray] | None = None) -> Stage:
        """A private copy of the stage; with ``state`` (a model state holding at least the stage's
        names), holding those values, as ``load_partition`` of a copy would."""
        template = self._template(key, tier)
        return Stage(template.tier, clone_module(template.module, state), template.input_names, template.output_names)

    def group_template(self, key: SplitKey, tier: int) -> GroupTemplate:
        """The stage as a device group calls it (tiers/device_group.py): a copy in training mode,
        never trained itself, kept per thread (``functional_call`` swaps a group's tensors into it
        for the call), with its names. One per group was a clone per edge message."""
        at = (key, tier, threading.get_ident())
        template = self._groups.get(at)
        if template is None:
            module = self.stage(key, tier).module
            module.train()
            template = self._groups[at] = GroupTemplate(
                module, [n for n, _ in module.named_parameters()], [n for n, _ in module.named_buffers()],
                self.state_names(key, tier))
        return template

    def state_names(self, key: SplitKey, tier: int) -> list[str]:
        """The stage's state-dict names, in order (cached: asking a module is a walk of it)."""
        self._template(key, tier)
        return self._names[key][tier]

    def runner(self, key: SplitKey, tier: int, optimizer: OptimizerSpec,
               state: Mapping[str, np.ndarray] | None = None) -> StageRunner:
        return StageRunner(self.stage(key, tier, state), optimizer)


def load_partition(runner: StageRunner, state: Mapping[str, np.ndarray]) -> None:
    """Copy the entries of a full model state that this stage owns into it."""
    with torch.no_grad():
        for name, tensor in runner.state_tensors.items():
            # Assign through numpy: the source may be a read-only buffer straight from Ray's store.
            tensor.numpy()[...] = np.asarray(state[name])


def partition_state(runner: StageRunner) -> dict[str, np.ndarray]:
    return {name: t.numpy().copy() for name, t in runner.state_tensors.items()}


def state_views(runner: StageRunner) -> dict[str, np.ndarray]:
    """The stage's state as numpy views of its live tensors: for reading right away (a sum), not
    for keeping (the next step changes them)."""
    return {name: t.numpy() for name, t in runner.state_tensors.items()}


ParameterState = dict[str, dict[str, np.ndarray]]  # parameter name -> its optimizer state tensors


def optimizer_state(runner: StageRunner) -> ParameterState:
    """Each parameter's optimizer state (momentum, Adam's moments and step) by parameter name: what
    travels with a layer when a re-split moves it to another tier."""
    if runner.optimizer is None:
        return {}
    out: ParameterState = {}
    for name, param in runner.module.named_parameters():
        entry = runner.optimizer.state.get(param)
        if entry:
            out[name] = {k: (v.detach().numpy().copy() if torch.is_tensor(v) else np.asarray(v))
                         for k, v in entry.items()}
    return out


def load_optimizer_state(runner: StageRunner, states: Mapping[str, Mapping[str, np.ndarray]]) -> None:
    """Give this stage's parameters the optimizer state they had on another tier (by name)."""
    if runner.optimizer is None:
        return
    for name, param in runner.module.named_parameters():
        if name in states:
            runner.optimizer.state[param] = {k: torch.from_numpy(np.array(v)) for k, v in states[name].items()}


@dataclass
class Session:
    """One device's part of the model on one tier, with its optimizer and progress."""

    device_id: str
    tier: int
    key: SplitKey
    runner: StageRunner
    weight: float  # samples the device holds: its FedAvg weight
    steps_done: int = 0

    def export(self) -> tuple[dict, dict[str, np.ndarray]]:
        """Header and arrays: everything needed to continue this session elsewhere, no pickle."""
        arrays = {f"state/{k}": v for k, v in partition_state(self.runner).items()}
        optim_meta: dict = {"groups": [], "scalars": {}}
        if self.runner.optimizer is not None:
            sd = self.runner.optimizer.state_dict()
            optim_meta["groups"] = [{k: v for k, v in g.items()} for g in sd["param_groups"]]
            for idx, entry in sd["state"].items():
                for name, value in entry.items():
                    if torch.is_tensor(value):
                        arrays[f"optim/{idx}/{name}"] = value.detach().numpy().copy()
                    else:
                        optim_meta["scalars"][f"{idx}/{name}"] = value
        meta = {
            "device_id": self.device_id,
            "tier": self.tier,
            "tiers": [list(t) for t in self.key.tiers],
            "n_tiers": self.key.n_tiers,
            "weight": self.weight,
            "steps_done": self.steps_done,
            "optimizer": optim_meta,
        }
        return meta, arrays

    @classmethod
    def from_export(cls, meta: dict, arrays: Mapping[str, np.ndarray], factory: StageFactory,
                    optimizer: OptimizerSpec) -> Session:
        key = SplitKey(tuple((str(k), int(v)) for k, v in meta["tiers"]), int(meta["n_tiers"]))
        state = {k.removeprefix("state/"): v for k, v in arrays.items() if k.startswith("state/")}
        expected = set(factory.state_names(key, int(meta["tier"])))
        if set(state) != expected:
            raise ValueError(f"session state names do not match the stage: {sorted(set(state) ^ expected)[:5]}")
        runner = factory.runner(key, int(meta["tier"]), optimizer, state)
        if runner.optimizer is not None:
            entries: dict[int, dict] = {}
            for name, value in arrays.items():
                if name.startswith("optim/"):
                    _, idx, field_name = name.split("/", 2)
                    entries.setdefault(int(idx), {})[field_name] = torch.from_numpy(np.array(value))
            for name, value in meta["optimizer"]["scalars"].items():
                idx, field_name = name.split("/", 1)
                entries.setdefault(int(idx), {})[field_name] = value
            groups = meta["optimizer"]["groups"]
            runner.optimizer.load_state_dict({"state": entries, "param_groups": groups})
        return cls(str(meta["device_id"]), int(meta["tier"]), key, runner, float(meta["weight"]),
                   int(meta["steps_done"]))
