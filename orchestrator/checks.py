"""Checks that need the model: it is built and traced (cheap, no Ray) so splits fail early."""

from __future__ import annotations

from tierflow.orchestrator.errors import TierflowError
from tierflow.tiers.models import BUILTIN_MODELS, InputShape, build_model
from tierflow.tiers.split import SplitError, assignment_from_cuts, trace

_DATASET_SHAPES = {"digits": InputShape(1, 8, 8, 10), "cifar10": InputShape(3, 32, 32, 10)}


def check_model_and_splits(scenario) -> None:
    shape = _DATASET_SHAPES.get(scenario.dataset.name)
    name = scenario.model.name
    if name not in BUILTIN_MODELS and ":" not in name:
        raise TierflowError(
            f"{scenario.source}: model.name: expected one of {', '.join(BUILTIN_MODELS)} or "
            f"'module:callable', got {name!r}"
        )
    if shape is None:  # a user dataset: its shape is known only once it is loaded
        return
    try:
        gm = trace(build_model(name, shape))
    except Exception as exc:  # a user model can fail in any way; report it against the field
        raise TierflowError(f"{scenario.source}: model.name: could not build and trace {name!r}: {exc}") from exc
    _check_cuts(scenario, gm, "split", scenario.split)
    for i, device in enumerate(scenario.devices):
        if device.split is not None:
            _check_cuts(scenario, gm, f"devices[{i}].split", device.split)


def _check_cuts(scenario, gm, where: str, cuts) -> None:
    try:
        assignment_from_cuts(gm, cuts)
    except SplitError as exc:
        message = str(exc).removeprefix("split")
        raise TierflowError(f"{scenario.source}: {where}{message}") from exc
