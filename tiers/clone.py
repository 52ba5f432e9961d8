"""A private copy of a stage's module that shares its compiled code.

Every session on a tier needs its own parameters, buffers and optimizer, but not its own program:
``copy.deepcopy`` of a torch.fx GraphModule regenerates and re-``exec``s the module's Python code
for each copy, which was most of an edge's work when a metro opened or migrated thousands of
sessions (about 2 ms a session). A clone made here is an instance of the template's own
(generated) class with fresh tensors; the graph and the code are shared, read-only.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn


def clone_module(module: nn.Module, values: Mapping[str, np.ndarray] | None = None, prefix: str = "") -> nn.Module:
    """A module equal to ``module`` in structure and values whose parameters and buffers are its
    own tensors (a step on the clone leaves the template untouched). Containers in the module's
    ``__dict__`` (hook registries, ``meta``) are copied one level deep, so registering a hook on a
    clone does not reach the template; everything else (the class, graph, code) is shared.

    ``values`` (state-dict names to arrays, every parameter and buffer named): the clone's tensors
    hold those instead of the template's, cast to the template's dtypes, as ``load_partition``
    would leave them, with one copy instead of two (a migrated session arrives as arrays)."""
    cls = type(module)
    new = object.__new__(cls)  # not cls.__new__: a GraphModule's makes a new class (and code) per instance
    state = {name: type(v)(v) if isinstance(v, dict | set | list) else v for name, v in module.__dict__.items()}
    state["_parameters"] = {name: None if p is None else nn.Parameter(_copy(p, values, prefix + name), p.requires_grad)
                            for name, p in module._parameters.items()}
    state["_buffers"] = {name: None if b is None else _copy(b, values, prefix + name)
                         for name, b in module._buffers.items()}
    state["_modules"] = {name: None if m is None else clone_module(m, values, f"{prefix}{name}.")
                         for name, m in module._modules.items()}
    new.__dict__.update(state)
    return new


def _copy(template: torch.Tensor, values: Mapping[str, np.ndarray] | None, name: str) -> torch.Tensor:
    if values is None or name not in values:  # a non-persistent buffer is in no state dict
        return template.detach().clone()
    out = torch.empty_like(template, requires_grad=False)
    out.numpy()[...] = np.asarray(values[name])  # through numpy: the source may be a read-only view
    return out
