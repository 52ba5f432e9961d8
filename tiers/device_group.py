"""Devices that share a split and a batch shape, trained as one batched computation.

A thousand tiny steps cost a thousand rounds of Python and kernel launches; stacked along a new
first dimension and run under ``torch.func.vmap``, they cost a few large kernels. Nothing is shared
between the devices: each keeps its own parameters, batch-norm statistics, optimizer state, data
and sampler, so device k's slice of every step is exactly the step it would take alone, and a
device can leave one group and join another as if it had never moved.

The optimizers here are elementwise copies of torch's single-tensor SGD and Adam (the path torch
takes on CPU), applied to the stacked tensors: that is what keeps each slice its own update.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from tierflow.tiers.optim import OPTIMIZERS, OptimizerSpec
from tierflow.tiers.session import ParameterState, SplitKey, StageFactory
from tierflow.tiers.step import StageRunner, backward_from

# torch's defaults for what OptimizerSpec does not set (tiers/optim.py leaves them at the default).
_SGD_DAMPENING = 0.0
_ADAM_BETAS = (0.9, 0.999)
_ADAM_EPS = 1e-8


@dataclass(frozen=True)
class DeviceState:
    """One device's stage as plain data: what it brings into a group and takes out of it (numpy
    arrays, or a live stage's own tensors as ``live_state`` gives them: a group copies either)."""

    weights: Mapping[str, np.ndarray | torch.Tensor]  # the stage's state dict: parameters and buffers
    optimizer: ParameterState  # by parameter name, as tiers.session.optimizer_state gives it


def live_state(runner: StageRunner) -> DeviceState:
    """A live stage's tensors and optimizer state as they are (no copy): joining a group from them
    skips the numpy round trip of ``partition_state``, a per-step cost when an edge steps its
    sessions as a group."""
    params = runner.parameters_by_name
    weights: dict = {**params, **runner.buffers_by_name}
    optimizer: dict = {}
    if runner.optimizer is not None and runner.optimizer.state:
        for name, p in params.items():
            entry = runner.optimizer.state.get(p)
            if entry:
                optimizer[name] = dict(entry)
    return DeviceState(weights, optimizer)


@dataclass(frozen=True)
class GroupStep:
    """One step of every device in the group, in the group's device order."""

    loss: np.ndarray  # [K] float: each device's mean batch loss
    correct: np.ndarray  # [K] int


def _stacked(arrays: Sequence[np.ndarray | torch.Tensor]) -> torch.Tensor:
    """The arrays stacked on a new dim 0, always a copy: the group's tensors are its own (and a numpy
    source may be a read-only view from Ray's object store)."""
    return torch.stack([a.detach() if torch.is_tensor(a) else torch.from_numpy(np.array(a)) for a in arrays])


class StackedOptimizer:
    """SGD (momentum, weight decay) or Adam over tensors stacked on dim 0, one slice per device.

    A device without optimizer state yet starts at zeros, which gives exactly torch's first step
    (momentum: 0 * m + g = g with no dampening; Adam initialises its moments to zeros); ``fresh``
    remembers which slices had none, so a device leaving before its first step leaves without.
    """

    def __init__(self, spec: OptimizerSpec, params: Mapping[str, torch.Tensor], states: Sequence[ParameterState]):
        if spec.name not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {spec.name!r}; expected one of {OPTIMIZERS}")
        self.spec = spec
        self.fields = self._fields(spec)
        self.state: dict[str, dict[str, torch.Tensor]] = {}
        self.fresh: dict[str, torch.Tensor] = {}  # [K] bool: no state yet
        for name, p in params.items():
            self.fresh[name] = torch.tensor([name not in s for s in states], dtype=torch.bool)
            self.state[name] = {
                f: _stacked([s[name][f] if name in s else self._zero(f, p[0]) for s in states])
                for f in self.fields
            }

    @staticmethod
    def _fields(spec: OptimizerSpec) -> tuple[str, ...]:
        if spec.name == "adam":
            return ("step", "exp_avg", "exp_avg_sq")
        return ("momentum_buffer",) if spec.momentum != 0 else ()

    @staticmethod
    def _zero(field_name: str, like: torch.Tensor) -> np.ndarray:
        if field_name == "step":
            return np.zeros((), dtype=np.float32)  # torch keeps Adam's step as a float32 scalar tensor
        return np.zeros(tuple(like.shape), dtype=like.detach().numpy().dtype)

    @torch.no_grad()
    def step(self, params: Mapping[str, torch.Tensor], grads: Mapping[str, torch.Tensor | None]) -> None:
        """One update of every slice; ``grads`` are consumed (weight decay is added to them in place)."""
        for name, p in params.items():
            g = grads.get(name)
            if g is None:  # torch skips a parameter without a gradient
                continue
            if self.spec.name == "adam":
                self._adam(name, p, g)
            else:
                self._sgd(name, p, g)
            self.fresh[name][:] = False

    def _sgd(self, name: str, p: torch.Tensor, g: torch.Tensor) -> None:
        spec = self.spec
        if spec.weight_decay != 0:
            g.add_(p, alpha=spec.weight_decay)  # the gradient is ours to overwrite: no new tensor per step
        if spec.momentum != 0:
            buf = self.state[name]["momentum_buffer"]
            buf.mul_(spec.momentum).add_(g, alpha=1 - _SGD_DAMPENING)
            g = buf
        p.add_(g, alpha=-spec.lr)

    def _adam(self, name: str, p: torch.Tensor, g: torch.Tensor) -> None:
        spec, state = self.spec, self.state[name]
        beta1, beta2 = _ADAM_BETAS
        step = state["step"]
        step += 1
        if spec.weight_decay != 0:
            g.add_(p, alpha=spec.weight_decay)
        state["exp_avg"].lerp_(g, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(g, g, value=1 - beta2)
        # Steps may differ between devices (one joined later): the bias corrections are per slice,
        # in float64 as torch computes them from the step's Python value.
        steps = step.double()
        step_size = (spec.lr / (1 - beta1**steps)).float()
        bias_correction2_sqrt = ((1 - beta2**steps) ** 0.5).float()
        view = (-1,) + (1,) * (p.dim() - 1)
        denom = (state["exp_avg_sq"].sqrt() / bias_correction2_sqrt.view(view)).add_(_ADAM_EPS)
        p.sub_(step_size.view(view) * state["exp_avg"] / denom)

    def state_of(self, k: int) -> ParameterState:
        out: ParameterState = {}
        for name, fields in self.state.items():
            if self.fields and not bool(self.fresh[name][k]):
                out[name] = {f: t[k].numpy().copy() for f, t in fields.items()}
        return out

    def select(self, index: torch.Tensor) -> None:
        for name in self.state:
            self.fresh[name] = self.fresh[name][index]
            self.state[name] = {f: t[index] for f, t in self.state[name].items()}

    def extend(self, other: StackedOptimizer) -> None:
        for name in self.state:
            self.fresh[name] = torch.cat([self.fresh[name], other.fresh[name]])
            self.state[name] = {f: torch.cat([t, other.state[name][f]]) for f, t in self.state[name].items()}


def unsupported(module: nn.Module) -> str:
    """Why a stage cannot train as a group ("" if it can): what vmap cannot give each device alone."""
    for name, m in module.named_modules():
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats and m.momentum is None:
            # The cumulative average reads its step count as a Python number: one for the whole group.
            return f"{name}: batch norm with momentum=None (a cumulative average) is not batched per device"
        if isinstance(m, nn.modules.dropout._DropoutNd):
            return f"{name}: dropout draws from torch's global RNG, in another order in a loop than in a batch"
    return ""


class DeviceGroup:
    """The stage of one tier for many devices with the same split and batch shape, stacked.

    Mirrors tiers.step.StageRunner with a leading device dimension on every array: ``forward`` /
    ``backward`` for a stage below the top, ``forward_loss_backward`` for the top stage (device-only
    training is the 1-tier case of it). Tier 0 by default; an edge can hold the same group's
    sessions as a group of tier 1.
    """

    def __init__(self, factory: StageFactory, key: SplitKey, optimizer: OptimizerSpec,
                 states: Mapping[str, DeviceState], tier: int = 0):
        if not states:
            raise ValueError("a device group needs at least one device")
        self.factory, self.key, self.spec, self.tier = factory, key, optimizer, tier
        template = factory.group_template(key, tier)
        reason = unsupported(template.module)
        if reason:
            raise ValueError(f"this stage cannot train as a device group: {reason}")
        self.module = template.module  # functional_call swaps in each device's tensors
        self.device_ids: list[str] = list(states)
        self.param_names, self.buffer_names = template.param_names, template.buffer_names
        self.state_names = template.state_names  # what a device's stage exports, in its order
        ordered = [states[d] for d in self.device_ids]
        self.params = {n: _stacked([s.weights[n] for s in ordered]).requires_grad_(True) for n in self.param_names}
        self.buffers = {n: _stacked([s.weights[n] for s in ordered]) for n in self.buffer_names}
        self.optimizer = StackedOptimizer(optimizer, self.params, [s.optimizer for s in ordered])
        self._inputs: list[torch.Tensor] = []
        self._outputs: list[torch.Tensor] = []

    def __len__(self) -> int:
        return len(self.device_ids)

    # ----- one device's functional stage; vmap adds the device dimension -----
    def _call(self, params, buffers, inputs):
        # Batch norm's running statistics update the (batched) buffers in place: each device its own.
        return functional_call(self.module, (params, buffers), tuple(inputs))

    def _loss(self, params, buffers, inputs, labels):
        logits = self._call(params, buffers, inputs)
        loss = F.cross_entropy(logits, labels)
        return loss, (logits.argmax(dim=1) == labels).sum()

    def _take(self, arrays: Sequence[np.ndarray], track_grad: bool) -> list[torch.Tensor]:
        tensors = [torch.from_numpy(np.asarray(a)) for a in arrays]
        for t in tensors:
            if t.shape[0] != len(self):
                raise ValueError(f"expected a leading device dimension of {len(self)}, got shape {tuple(t.shape)}")
        if track_grad:
            tensors = [t.requires_grad_(t.is_floating_point()) for t in tensors]
        return tensors

    # ----- the steps -----
    def forward_loss_backward(self, arrays: Sequence[np.ndarray], labels: np.ndarray,
                              track_input_grad: bool) -> tuple[list[np.ndarray], GroupStep]:
        """Top stage: every device's forward, loss, backward and step in one batched call."""
        inputs = self._take(arrays, False)
        target = torch.from_numpy(np.asarray(labels))
        argnums = (0, 2) if track_input_grad else 0
        fn = vmap(grad_and_value(self._loss, argnums=argnums, has_aux=True))
        with torch.no_grad():  # torch.func computes the gradients; no graph outside it
            grads, (loss, correct) = fn(self.params, self.buffers, inputs, target)
        param_grads, input_grads = (grads if track_input_grad else (grads, None))
        self.optimizer.step(self.params, param_grads)
        if input_grads is None:
            out = [np.zeros((len(self), 0), dtype=np.float32) for _ in inputs]
        else:
            out = [g.numpy() if t.is_floating_point() else np.zeros((len(self), 0), dtype=np.float32)
                   for g, t in zip(input_grads, inputs, strict=True)]
        return out, GroupStep(loss.numpy().astype(np.float64), correct.numpy().astype(np.int64))

    def step(self, batches: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[GroupStep]:
        """Device-only (1-tier) training: one step per stacked batch ``(x [K, B, ...], y [K, B])``."""
        if self.key.n_tiers != 1:
            raise ValueError(f"step trains device-only splits; this group's split has {self.key.n_tiers} tiers")
        return [self.forward_loss_backward([x], y, track_input_grad=False)[1] for x, y in batches]

    def forward(self, arrays: Sequence[np.ndarray], track_input_grad: bool = False) -> list[np.ndarray]:
        """A stage below the top: the stacked activations for the link; keeps the graph for backward."""
        for p in self.params.values():
            p.grad = None
        inputs = self._take(arrays, track_input_grad)
        outputs = vmap(self._call)(self.params, self.buffers, inputs)
        self._inputs, self._outputs = inputs, list(outputs)
        return [o.detach().numpy() for o in self._outputs]

    def backward(self, output_grads: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Apply the stacked gradients that came down the link, step every device, return input grads."""
        pairs = [(out, torch.from_numpy(np.asarray(g)))
                 for out, g in zip(self._outputs, output_grads, strict=True) if out.requires_grad]
        backward_from([p[0] for p in pairs], [p[1] for p in pairs])
        self.optimizer.step(self.params, {n: p.grad for n, p in self.params.items()})
        grads = [(t.grad if t.grad is not None else torch.zeros_like(t)).numpy() if t.requires_grad else
                 np.zeros((len(self), 0), dtype=np.float32) for t in self._inputs]
        for p in self.params.values():
            p.grad = None
        self._inputs, self._outputs = [], []
        return grads

    # ----- membership: devices leave and join as plain data -----
    def state_of(self, device_id: str) -> DeviceState:
        return self._state_at(self.device_ids.index(device_id))

    def unstack(self) -> dict[str, DeviceState]:
        """Every device's stage and optimizer state, as it would hold them alone."""
        return {d: self._state_at(k) for k, d in enumerate(self.device_ids)}

    def _state_at(self, k: int) -> DeviceState:
        tensors = {**self.params, **self.buffers}
        weights = {n: tensors[n][k].detach().numpy().copy() for n in self.state_names}
        return DeviceState(weights, self.optimizer.state_of(k))

    @torch.no_grad()
    def store_into(self, runners: Sequence[StageRunner]) -> None:
        """Every device's tensors and optimizer state back into its own live stage (``runners`` in
        the group's order): what ``load_partition`` and ``load_optimizer_state`` of ``unstack()``
        give, without the numpy round trip."""
        if len(runners) != len(self):
            raise ValueError(f"expected {len(self)} stages, got {len(runners)}")
        fresh = {n: f.tolist() for n, f in self.optimizer.fresh.items()}
        rows = {n: t.detach().unbind(0) for n, t in (*self.params.items(), *self.buffers.items())}
        for k, runner in enumerate(runners):
            for name, t in runner.parameters_by_name.items():
                t.copy_(rows[name][k])
                if runner.optimizer is not None and self.optimizer.fields and not fresh[name][k]:
                    runner.optimizer.state[t] = {f: v[k].clone() for f, v in self.optimizer.state[name].items()}
            for name, t in runner.buffers_by_name.items():
                t.copy_(rows[name][k])

    def finite(self) -> np.ndarray:
        """[K] bool: every parameter and buffer of the device is finite."""
        ok = torch.ones(len(self), dtype=torch.bool)
        for t in (*self.params.values(), *self.buffers.values()):
            ok &= torch.isfinite(t.detach()).reshape(len(self), -1).all(dim=1)
        return ok.numpy()

    def leave(self, device_id: str) -> DeviceState:
        """Take one device out (it migrates); the others keep training as before."""
        if len(self) == 1:
            raise ValueError("the last device cannot leave its group; drop the group instead")
        state = self.state_of(device_id)
        k = self.device_ids.index(device_id)
        keep = torch.tensor([i for i in range(len(self)) if i != k])
        self._select(keep)
        del self.device_ids[k]
        return state

    def join(self, states: Mapping[str, DeviceState]) -> None:
        """Add devices that continue from ``states`` (e.g. what they left another group with)."""
        clash = set(states) & set(self.device_ids)
        if clash:
            raise ValueError(f"devices already in the group: {sorted(clash)}")
        other = DeviceGroup(self.factory, self.key, self.spec, states, self.tier)
        with torch.no_grad():
            self.params = {n: torch.cat([p.detach(), other.params[n].detach()]).requires_grad_(True)
                           for n, p in self.params.items()}
            self.buffers = {n: torch.cat([b, other.buffers[n]]) for n, b in self.buffers.items()}
        self.optimizer.extend(other.optimizer)
        self.device_ids.extend(other.device_ids)

    def _select(self, index: torch.Tensor) -> None:
        with torch.no_grad():
            self.params = {n: p.detach()[index].requires_grad_(True) for n, p in self.params.items()}
            self.buffers = {n: b[index] for n, b in self.buffers.items()}
        self.optimizer.select(index)


class _Device(Protocol):
    """What a device needs to draw its own batches (tiers.hosts.LogicalDevice has it)."""

    sampler: object  # tiers.hosts.BatchSampler
    setup: object  # tiers.hosts.DeviceSetup: x, y


def draw_batch(devices: Sequence[_Device]) -> tuple[np.ndarray, np.ndarray]:
    """Each device's next batch from its own sampler, exactly as it draws one training alone, stacked."""
    x = y = None
    for k, device in enumerate(devices):
        idx = device.sampler.next_indices()
        if x is None:
            first = device.setup.x[idx]
            x = np.empty((len(devices),) + first.shape, first.dtype)
            y = np.empty((len(devices), len(idx)), device.setup.y.dtype)
        if len(idx) != y.shape[1]:
            raise ValueError(f"a device group needs one batch shape; device {k} draws {len(idx)}, "
                             f"the first {y.shape[1]}")
        np.take(device.setup.x, idx, axis=0, out=x[k])  # straight into the stack: no copy per device
        np.take(device.setup.y, idx, axis=0, out=y[k])
    return x, y


# ----- choosing the engine: vmapped convolutions can be slower than a loop on CPU -----
_TIMING_BYTES = 256 * 2**20


# Timed repetitions stop once the engines are this far apart: the choice is clear, and on a
# conv-heavy stage each repetition of the group is seconds (VGG-5 at 32x32 for 25 devices: 1.1 s).
CLEAR_RATIO = 1.5


@dataclass(frozen=True)
class EngineTiming:
    vectorized_s: float  # CPU seconds per device-step
    looped_s: float
    repetitions: int = 1  # timed ones, after the warm-up

    @property
    def engine(self) -> str:
        return "vectorized" if self.vectorized_s < self.looped_s else "looped"


def _stage_inputs(factory: StageFactory, key: SplitKey, tier: int, x: np.ndarray) -> list[np.ndarray]:
    """What ``tier``'s stage receives for the stacked raw inputs ``x``: the stages below it, run on
    each device's slice."""
    arrays = [x]
    for t in range(tier):
        module = factory.stage(key, t).module
        with torch.no_grad():
            outs = [module(*(torch.from_numpy(a[k]) for a in arrays)) for k in range(x.shape[0])]
        arrays = [np.stack([o[j].numpy() for o in outs]) for j in range(len(outs[0]))]
    return arrays


def time_engines(factory: StageFactory, key: SplitKey, optimizer: OptimizerSpec, batch_size: int,
                 n_devices: int, repeats: int = 3, seed: int = 0, tier: int = 0) -> EngineTiming:
    """CPU seconds per device-step of one training step of ``tier``'s stage (the device's by
    default), both ways (the best of ``repeats``, after a warm-up; fewer once one engine is
    ``CLEAR_RATIO`` times faster than the other). The loop's cost per device does
    not depend on the group's size, so it is timed on a few devices; the group is timed at its real
    size (capped)."""
    shape = factory.shape
    rng = np.random.default_rng(seed)
    weights = {n: t.detach().numpy().copy() for n, t in factory.stage(key, tier).module.state_dict().items()}
    state_bytes = max(1, sum(w.nbytes for w in weights.values()))
    # Past a few hundred devices the group's cost per device barely moves; the cap also bounds the
    # memory the timing takes (a stacked copy of parameters, gradients and optimizer state).
    k_vec = max(1, min(n_devices, 256, _TIMING_BYTES // state_bytes))
    k_loop = max(1, min(n_devices, 8))
    group = DeviceGroup(factory, key, optimizer, {str(i): DeviceState(weights, {}) for i in range(k_vec)}, tier)
    runners = [factory.runner(key, tier, optimizer) for _ in range(k_loop)]  # what the looped hosts step
    x = rng.standard_normal((k_vec, batch_size, shape.channels, shape.height, shape.width)).astype(np.float32)
    y = rng.integers(0, shape.num_classes, (k_vec, batch_size)).astype(np.int64)
    inputs = _stage_inputs(factory, key, tier, x)
    top, below = tier == key.n_tiers - 1, tier > 0  # a stage above the device returns input gradients

    def vectorized(g: DeviceGroup = group, k: int = k_vec) -> None:
        if top:
            g.forward_loss_backward([a[:k] for a in inputs], y[:k], track_input_grad=below)
        else:
            outs = g.forward([a[:k] for a in inputs], track_input_grad=below)
            g.backward([np.ones_like(o) for o in outs])

    def looped() -> None:
        for k, r in enumerate(runners):
            if top:
                r.forward_loss_backward([a[k] for a in inputs], y[k], track_input_grad=below)
            else:
                outs = r.forward([a[k] for a in inputs], track_input_grad=below)
                r.backward([np.ones_like(o) for o in outs])

    # Warm-up (first calls pay for allocations and vmap's set-up) on two devices: a conv-heavy
    # group of the real size costs as much as a timed repetition.
    k_warm = min(k_vec, 2)
    vectorized(DeviceGroup(factory, key, optimizer, {str(i): DeviceState(weights, {}) for i in range(k_warm)}, tier),
               k_warm)
    looped()
    vec, loop = [], []
    for _ in range(repeats):  # interleaved, so a burst of load elsewhere hits both
        vec.append(_cpu_seconds(vectorized) / k_vec)
        loop.append(_cpu_seconds(looped) / k_loop)
        if max(min(vec), min(loop)) >= CLEAR_RATIO * min(min(vec), min(loop)):
            break
    return EngineTiming(min(vec), min(loop), len(vec))


def _cpu_seconds(fn) -> float:
    # CPU time, not wall time: on a shared host the wall clock charges other processes' work too.
    # A device host trains on one thread, so the two agree when the machine is quiet.
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def choose_engine(factory: StageFactory, key: SplitKey, optimizer: OptimizerSpec, batch_size: int,
                  n_devices: int, tier: int = 0) -> str:
    """"vectorized" or "looped": whichever trained this stage and batch shape faster when timed here;
    "looped" for a stage that cannot be vectorized (see :func:`unsupported`, or a user model whose
    operations vmap has no batching rule for)."""
    if unsupported(factory.stage(key, tier).module):
        return "looped"
    try:
        return time_engines(factory, key, optimizer, batch_size, n_devices, tier=tier).engine
    except RuntimeError:  # vmap refused an operation of the model: the loop is the engine that runs it
        return "looped"
