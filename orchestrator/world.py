"""Everything a run needs that does not involve Ray: data shards, the initial model, each device's split."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tierflow.orchestrator.augment import augment_train
from tierflow.orchestrator.checks import check_model_and_splits
from tierflow.orchestrator.data import (
    Dataset,
    load_cifar10,
    load_digits,
    load_user_dataset,
    partition_dirichlet,
    partition_iid,
)
from tierflow.orchestrator.errors import TierflowError
from tierflow.orchestrator.scenario import Scenario
from tierflow.tiers.models import build_model
from tierflow.tiers.session import SplitKey
from tierflow.tiers.split import assignment_from_cuts, trace


def load_dataset(scenario: Scenario) -> Dataset:
    dataset = _load_dataset(scenario)
    spec = scenario.dataset.augment
    if spec is None:
        return dataset
    seed = scenario.training.seed if spec.seed is None else spec.seed
    return augment_train(dataset, spec, seed, where=f"{scenario.source}: dataset.augment")


def _load_dataset(scenario: Scenario) -> Dataset:
    spec = scenario.dataset
    if spec.name == "digits":
        return load_digits(spec.test_fraction, scenario.training.seed)
    try:
        if spec.name == "cifar10":
            return load_cifar10(spec.path)
        dataset = load_user_dataset(spec.name)
    except TierflowError as exc:
        where = "dataset.path: " if spec.name == "cifar10" else ""
        raise TierflowError(f"{scenario.source}: {where}{exc}") from None
    check_model_and_splits(scenario, dataset.shape)  # the splits could not be checked before its shape was known
    return dataset


def shard_indices(scenario: Scenario, dataset: Dataset) -> list[np.ndarray]:
    seed = scenario.training.seed
    if scenario.dataset.partition == "dirichlet":
        shards = partition_dirichlet(dataset.y_train, len(scenario.devices), scenario.dataset.alpha, seed)
    else:
        shards = partition_iid(len(dataset.y_train), [d.data_share for d in scenario.devices], seed)
    _check_every_device_has_data(scenario, shards, len(dataset.y_train))
    return shards


def _check_every_device_has_data(scenario: Scenario, shards: list[np.ndarray], n_train: int) -> None:
    """A device without a sample cannot train: refuse before anything starts, naming it."""
    empty = [d for d, shard in zip(scenario.devices, shards, strict=True) if len(shard) == 0]
    if not empty:
        return
    names = ", ".join(repr(d.name) for d in empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
    if n_train < len(scenario.devices):
        why = f"the training set has {n_train} samples for {len(scenario.devices)} devices"
        fix = "fewer devices or a larger dataset"
    else:
        total = sum(d.data_share for d in scenario.devices)
        why = (f"its data_share {empty[0].data_share:g} of {total:g} in all, of {n_train} training samples, "
               "rounds to none")
        fix = f"shares that leave each device a sample (about {total / n_train:g} or more each)"
    raise TierflowError(f"{scenario.source}: devices: {names} would get no training sample ({why}); expected {fix}")


def model_state(model) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


@dataclass
class World:
    scenario: Scenario
    dataset: Dataset
    shards: list[np.ndarray]
    initial_state: dict[str, np.ndarray]
    splits: dict[str, SplitKey]

    def batch_sizes(self) -> dict[str, int]:
        """Each device's batch: its sampler draws min(batch_size, its shard) samples every step."""
        b = self.scenario.training.batch_size
        return {d.name: min(b, len(idx)) for d, idx in zip(self.scenario.devices, self.shards, strict=True)}


def fixed_splits(scenario: Scenario, gm) -> dict[str, SplitKey]:
    out = {}
    for d in scenario.devices:
        cuts = scenario.device_split(d)
        out[d.name] = SplitKey.of(assignment_from_cuts(gm, cuts), len(cuts) + 1)
    return out


def build_world(scenario: Scenario) -> World:
    dataset = load_dataset(scenario)
    model = build_model(scenario.model.name, dataset.shape, seed=scenario.training.seed)
    gm = trace(model)
    return World(scenario, dataset, shard_indices(scenario, dataset), model_state(model), fixed_splits(scenario, gm))
