"""A private copy of a stage's module that shares its compiled code.

Every session on a tier needs its own parameters, buffers and optimizer, but not its own program:
``copy.deepcopy`` of a torch.fx GraphModule regenerates and re-``exec``s the module's Python code
for each copy, which was most of an edge's work when a metro opened or migrated thousands of
sessions (about 2 ms a session). A clone made here is an instance of the template's own
(generated) class with fresh tensors; the graph and the code are shared, read-only.
"""

from __future__ import annotations

from torch import nn


def clone_module(module: nn.Module) -> nn.Module:
    """A module equal to ``module`` in structure and values whose parameters and buffers are its
    own tensors (a step on the clone leaves the template untouched). Containers in the module's
    ``__dict__`` (hook registries, ``meta``) are copied one level deep, so registering a hook on a
    clone does not reach the template; everything else (the class, graph, code) is shared."""
    cls = type(module)
    new = object.__new__(cls)  # not cls.__new__: a GraphModule's makes a new class (and code) per instance
    state = {name: type(v)(v) if isinstance(v, dict | set | list) else v for name, v in module.__dict__.items()}
    state["_parameters"] = {name: None if p is None else nn.Parameter(p.detach().clone(), p.requires_grad)
                            for name, p in module._parameters.items()}
    state["_buffers"] = {name: None if b is None else b.detach().clone() for name, b in module._buffers.items()}
    state["_modules"] = {name: None if m is None else clone_module(m) for name, m in module._modules.items()}
    new.__dict__.update(state)
    return new
