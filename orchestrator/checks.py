"""Checks that need the model: it is built and traced (cheap, no Ray) so splits fail early."""

from __future__ import annotations

import torch

from tierflow.orchestrator.errors import TierflowError
from tierflow.tiers.models import BUILTIN_MODELS, InputShape, build_model
from tierflow.tiers.split import SplitError, assignment_from_cuts, trace

_DATASET_SHAPES = {"digits": InputShape(1, 8, 8, 10), "cifar10": InputShape(3, 32, 32, 10)}


def check_model_and_splits(scenario, shape: InputShape | None = None) -> None:
    """``shape``: the input of a user dataset, known only once it is loaded (the world passes it)."""
    shape = shape or _DATASET_SHAPES.get(scenario.dataset.name)
    name = scenario.model.name
    if name not in BUILTIN_MODELS and ":" not in name:
        raise TierflowError(
            f"{scenario.source}: model.name: expected one of {', '.join(BUILTIN_MODELS)} or "
            f"'module:callable', got {name!r}"
        )
    if shape is None:  # a user dataset: checked again with its shape once it is loaded
        return
    try:
        model = build_model(name, shape)
        gm = trace(model)
        _check_forward(model, shape)
    except (Exception, SystemExit) as exc:  # a user model can fail in any way, even exit; report it against the field
        raise TierflowError(f"{scenario.source}: model.name: could not build, trace and run {name!r}: "
                            f"{type(exc).__name__}: {str(exc)[:300]}") from None
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


def _check_forward(model, shape: InputShape) -> None:
    """One forward pass on zeros: a model that cannot run on this input fails here, not in an actor."""
    model.eval()
    with torch.no_grad():
        out = model(torch.zeros(2, shape.channels, shape.height, shape.width))
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, shape.num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"expected an output of shape (batch, {shape.num_classes}) for {shape.num_classes} classes, "
                         f"got {got}")
