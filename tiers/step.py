"""One split-training step, as pure functions over stages: no Ray here.

The tier actors call these, and the oracle tests call them directly, so the maths that the
actors run is the maths the tests check. Values cross a link as numpy arrays (the data plane).
"""

from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from tierflow.tiers.optim import OptimizerSpec, make_optimizer
from tierflow.tiers.split import Stage

# Arrays from Ray's object store are read-only views; stage inputs are never written in place.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")


def to_wire(tensors: Sequence[torch.Tensor]) -> list[np.ndarray]:
    """Detach tensors into numpy arrays for a link (Ray moves numpy zero-copy, not torch)."""
    return [t.detach().numpy() for t in tensors]


def wire_bytes(arrays: Sequence[np.ndarray]) -> int:
    return int(sum(a.nbytes for a in arrays))


def backward_from(outputs: Sequence[torch.Tensor], grads: Sequence[torch.Tensor]) -> None:
    """Backpropagate the gradients that came down a link into ``outputs``.

    This is the backward of sum(output * grad), whose gradient with respect to each output is
    1.0 * grad, that is grad exactly: the same vector-Jacobian product, bit for bit, as
    ``torch.autograd.backward(outputs, grads)``. That call imports sympy on its first use in a
    process (0.25 s of CPU in every device and edge process, inside the first round)."""
    total = None
    for out, g in zip(outputs, grads, strict=True):
        term = (out * g).sum()
        total = term if total is None else total + term
    if total is not None:
        total.backward()


class StageRunner:
    """One tier's stage for one session: its module, its optimizer, and the step in flight."""

    def __init__(self, stage: Stage, optimizer: OptimizerSpec):
        self.stage = stage
        self.module = stage.module
        self.module.train()
        self.optimizer = make_optimizer(self.module.parameters(), optimizer)
        self._inputs: list[torch.Tensor] = []
        self._outputs: list[torch.Tensor] = []

    @functools.cached_property
    def parameters_by_name(self) -> dict[str, torch.nn.Parameter]:
        """The stage's parameters by state-dict name, asked once: walking the module tree was most of
        what a group's step cost per session. Loading values into a stage copies in place, so the
        tensors stay these."""
        return dict(self.module.named_parameters())

    @functools.cached_property
    def buffers_by_name(self) -> dict[str, torch.Tensor]:
        return dict(self.module.named_buffers())

    @functools.cached_property
    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The live tensors behind the stage's state dict, by its names and in its order, detached
        (what a session exports, loads and sums)."""
        live = {**self.parameters_by_name, **self.buffers_by_name}
        return {name: live[name].detach() if name in live else t for name, t in self.module.state_dict().items()}

    def _take_inputs(self, arrays: Sequence[np.ndarray], track_grad: bool) -> list[torch.Tensor]:
        tensors = [torch.from_numpy(np.asarray(a)) for a in arrays]
        if track_grad:
            tensors = [t.requires_grad_(t.is_floating_point()) for t in tensors]
        self._inputs = tensors
        return tensors

    def forward(self, arrays: Sequence[np.ndarray], track_input_grad: bool) -> list[np.ndarray]:
        """Run the stage; keep the graph for :meth:`backward`; return outputs for the next link."""
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)
        inputs = self._take_inputs(arrays, track_input_grad)
        outputs = self.module(*inputs)
        self._outputs = list(outputs)
        return to_wire(self._outputs)

    def backward(self, output_grads: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Apply the gradients that came down the link, step, return gradients for the link below."""
        pairs = [
            (out, torch.from_numpy(np.asarray(g)))
            for out, g in zip(self._outputs, output_grads, strict=True)
            if out.requires_grad
        ]
        backward_from([p[0] for p in pairs], [p[1] for p in pairs])
        return self._finish()

    def forward_loss_backward(
        self, arrays: Sequence[np.ndarray], labels: np.ndarray, track_input_grad: bool
    ) -> tuple[list[np.ndarray], float, int]:
        """Top stage: forward, loss, backward, step. Returns (input grads, loss, correct count)."""
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)
        inputs = self._take_inputs(arrays, track_input_grad)
        logits = self.module(*inputs)
        target = torch.from_numpy(np.asarray(labels))
        loss = F.cross_entropy(logits, target)
        loss.backward()
        correct = int((logits.detach().argmax(dim=1) == target).sum())
        return self._finish(), float(loss.detach()), correct

    def _finish(self) -> list[np.ndarray]:
        if self.optimizer is not None:
            self.optimizer.step()
        grads = [
            (t.grad if t.grad is not None else torch.zeros_like(t)).numpy() if t.requires_grad else
            np.zeros(0, dtype=np.float32)
            for t in self._inputs
        ]
        self._inputs, self._outputs = [], []
        return grads


@dataclass(frozen=True)
class StepStats:
    """What one step cost on each tier and link (for the clock and the metrics)."""

    loss: float
    correct: int
    samples: int
    compute_s: tuple[float, ...]
    bytes_up: tuple[int, ...]
    bytes_down: tuple[int, ...]


def run_local_step(runners: Sequence[StageRunner], x: np.ndarray, y: np.ndarray) -> StepStats:
    """A whole split step in one process: the same calls the actors make, without the network."""
    n = len(runners)
    compute = [0.0] * n
    up = [0] * max(n - 1, 0)
    down = [0] * max(n - 1, 0)
    arrays: list[np.ndarray] = [x]
    for k in range(n - 1):
        t0 = time.perf_counter()
        arrays = runners[k].forward(arrays, track_input_grad=k > 0)
        compute[k] += time.perf_counter() - t0
        up[k] = wire_bytes(arrays)
    t0 = time.perf_counter()
    grads, loss, correct = runners[-1].forward_loss_backward(arrays, y, track_input_grad=n > 1)
    compute[-1] += time.perf_counter() - t0
    for k in range(n - 2, -1, -1):
        down[k] = wire_bytes(grads)
        t0 = time.perf_counter()
        grads = runners[k].backward(grads)
        compute[k] += time.perf_counter() - t0
    return StepStats(loss, correct, len(y), tuple(compute), tuple(up), tuple(down))
