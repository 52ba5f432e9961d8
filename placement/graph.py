"""Layer graph of a PyTorch model: one node per torch.fx node, with measured FLOPs and bytes.

FLOPs are real counts from ``torch.utils.flop_counter.FlopCounterMode``, attributed per node by
replaying each fx node alone on the values it saw in a real forward pass of a batch. A node's
backward FLOPs are counted by running autograd through that node alone, with its inputs marked as
needing a gradient exactly when they did in the whole model (the raw input does not, so the first
layer pays no grad-input convolution), and parameters always needing one. The per-node sums equal
the whole model's forward and backward counts (tested).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

import networkx as nx
import torch
from torch import fx, nn
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils.flop_counter import FlopCounterMode


def _tensors(value: Any) -> list[torch.Tensor]:
    leaves, _ = tree_flatten(value)
    return [t for t in leaves if isinstance(t, torch.Tensor)]


def _nbytes(value: Any) -> int:
    return sum(t.numel() * t.element_size() for t in _tensors(value))


def _count_flops(fn: Callable[[], Any]) -> int:
    mode = FlopCounterMode(display=False)
    with mode:
        fn()
    return int(mode.get_total_flops())


class _NodeRunner:
    """Re-executes single fx nodes of a GraphModule on recorded input values."""

    def __init__(self, gm: fx.GraphModule, sample: torch.Tensor):
        self.gm = gm
        self.env: dict[str, Any] = {}
        interp = fx.Interpreter(gm)
        env = self.env
        original_run_node = interp.run_node

        def run_node(n: fx.Node) -> Any:
            out = original_run_node(n)
            env[n.name] = out
            return out

        interp.run_node = run_node  # type: ignore[method-assign]
        interp.run(sample)

    def _fresh_inputs(self, node: fx.Node) -> tuple[tuple, dict, list[torch.Tensor]]:
        """Detached copies of the node's inputs; grad-requiring exactly where the model's were."""
        leaves: list[torch.Tensor] = []

        def fresh(v: Any) -> Any:
            if isinstance(v, torch.Tensor):
                t = v.detach().clone().requires_grad_(v.requires_grad and v.is_floating_point())
                if t.requires_grad:
                    leaves.append(t)
                return t
            return v

        def lookup(a: Any) -> Any:
            return tree_map(fresh, self.env[a.name]) if isinstance(a, fx.Node) else a

        args = fx.node.map_arg(node.args, lookup)
        kwargs = fx.node.map_arg(node.kwargs, lookup)
        return args, kwargs, leaves

    def _call(self, node: fx.Node, args: tuple, kwargs: dict) -> Any:
        if node.op == "call_module":
            return self.gm.get_submodule(str(node.target))(*args, **kwargs)
        if node.op == "call_function":
            return node.target(*args, **kwargs)  # type: ignore[operator]
        if node.op == "call_method":
            self_obj, *rest = args
            return getattr(self_obj, str(node.target))(*rest, **kwargs)
        if node.op == "get_attr":
            obj: Any = self.gm
            for part in str(node.target).split("."):
                obj = getattr(obj, part)
            return obj
        raise AssertionError(f"unexpected fx op {node.op}")

    def forward_backward(self, node: fx.Node) -> tuple[Callable[[], Any], Callable[[], Any]]:
        """Two thunks: one forward of the node, and one backward through it."""
        args, kwargs, leaves = self._fresh_inputs(node)
        params = (
            [p for p in self.gm.get_submodule(str(node.target)).parameters() if p.requires_grad]
            if node.op == "call_module"
            else []
        )

        def fwd() -> Any:
            # Not under no_grad: FlopCounterMode's module tracker hooks need autograd state.
            return self._call(node, args, kwargs)

        def bwd() -> None:
            out = self._call(node, args, kwargs)
            outs = [t for t in _tensors(out) if t.requires_grad]
            wrt = leaves + params
            if outs and wrt:
                grads = [torch.ones_like(t) for t in outs]
                mode = FlopCounterMode(display=False)
                with mode:
                    torch.autograd.grad(outs, wrt, grads, allow_unused=True)
                bwd.flops = int(mode.get_total_flops())  # type: ignore[attr-defined]
            else:
                bwd.flops = 0  # type: ignore[attr-defined]

        return fwd, bwd


def _output_node(gm: fx.GraphModule) -> fx.Node:
    return next(n for n in gm.graph.nodes if n.op == "output")


def _trace(model: nn.Module) -> fx.GraphModule:
    # A private copy: replaying BatchNorm nodes must not touch the caller's running statistics.
    gm = fx.symbolic_trace(copy.deepcopy(model))
    gm.train()
    return gm


def build_layer_graph(model: nn.Module, sample_shape: tuple[int, ...], batch_size: int = 8) -> nx.DiGraph:
    """The model's layer graph with per-sample ``fwd_flops``, ``bwd_flops``, ``activation_bytes``.

    Nodes are the fx node names (the placeholder is the source, ``graph.graph["source"]``); the
    ``output`` node is dropped. ``param_bytes`` counts parameters and buffers a call_module or
    get_attr node owns; ``order`` is the topological index.
    """
    gm = _trace(model)
    torch.manual_seed(0)
    sample = torch.randn(batch_size, *sample_shape)
    runner = _NodeRunner(gm, sample)
    graph = nx.DiGraph()
    source = None
    order = 0
    for node in gm.graph.nodes:
        if node.op == "output":
            continue
        if node.op == "placeholder":
            assert source is None, "placement supports models with one input"
            source = node.name
            fwd_flops = bwd_flops = 0
        else:
            fwd, bwd = runner.forward_backward(node)
            fwd_flops = _count_flops(fwd)
            bwd()
            bwd_flops = bwd.flops  # type: ignore[attr-defined]
        param_bytes = trainable_bytes = 0
        if node.op == "call_module":
            sub = gm.get_submodule(str(node.target))
            trainable_bytes = sum(_nbytes(t) for t in sub.parameters())
            param_bytes = trainable_bytes + sum(_nbytes(t) for t in sub.buffers())
        elif node.op == "get_attr":
            param_bytes = _nbytes(runner.env[node.name])
        graph.add_node(
            node.name,
            fwd_flops=fwd_flops / batch_size,
            bwd_flops=bwd_flops / batch_size,
            activation_bytes=_nbytes(runner.env[node.name]) / batch_size,
            param_bytes=param_bytes,
            trainable_bytes=trainable_bytes,
            order=order,
            op=node.op,
        )
        order += 1
        for inp in node.all_input_nodes:
            graph.add_edge(inp.name, node.name)
    assert source is not None, "the model has no input"
    graph.graph["source"] = source
    returned = [a for a in _output_node(gm).all_input_nodes]
    if len(returned) == 1:  # the loss is computed where the model's last node runs: labels go there
        graph.graph["sink"] = returned[0].name
    graph.graph["batch_size_traced"] = batch_size
    return graph


def model_flops(model: nn.Module, sample_shape: tuple[int, ...], batch_size: int = 8) -> tuple[float, float]:
    """Whole-model forward and backward FLOPs per sample (the check on the per-node attribution)."""
    model = copy.deepcopy(model).train()
    torch.manual_seed(0)
    x = torch.randn(batch_size, *sample_shape)
    with FlopCounterMode(display=False) as fwd_mode:
        model(x)
    out = model(x)
    with FlopCounterMode(display=False) as bwd_mode:
        out.backward(torch.ones_like(out))
    return fwd_mode.get_total_flops() / batch_size, bwd_mode.get_total_flops() / batch_size


class NodeTimer:
    """Thunks that run each fx node alone, forward and backward, for timing (placement/profile.py).

    The backward thunk runs autograd through the node on a graph built once and kept, so it times
    the backward alone; inputs need a gradient exactly where they did in the whole model.
    """

    def __init__(self, model: nn.Module, sample_shape: tuple[int, ...], batch_size: int):
        self.gm = _trace(model)
        torch.manual_seed(0)
        self.runner = _NodeRunner(self.gm, torch.randn(batch_size, *sample_shape))

    def thunks(self) -> Iterator[tuple[str, Callable[[], Any] | None, Callable[[], Any] | None]]:
        for node in self.gm.graph.nodes:
            if node.op == "output":
                continue
            if node.op == "placeholder":
                yield node.name, None, None
                continue
            runner = self.runner
            args, kwargs, leaves = runner._fresh_inputs(node)
            params = ([p for p in self.gm.get_submodule(str(node.target)).parameters() if p.requires_grad]
                      if node.op == "call_module" else [])

            def forward(node=node, args=args, kwargs=kwargs, runner=runner) -> Any:
                with torch.no_grad():
                    return runner._call(node, args, kwargs)

            outs = [t for t in _tensors(runner._call(node, args, kwargs)) if t.requires_grad]
            wrt = leaves + params
            backward = None
            if outs and wrt:
                grads = [torch.ones_like(t) for t in outs]

                def backward(outs=outs, wrt=wrt, grads=grads) -> Any:
                    return torch.autograd.grad(outs, wrt, grads, retain_graph=True, allow_unused=True)

            yield node.name, forward, backward


def attach_profile(graph: nx.DiGraph, seconds: dict[str, tuple[float, float]], host_flops_per_s: float) -> nx.DiGraph:
    """Copy of ``graph`` whose FLOPs are timed host seconds per sample × ``host_flops_per_s``.

    Measured time becomes "effective FLOPs" at the host's nominal speed, so every tier speed stays
    a FLOP/s figure and the cost model and partitioner need no second code path. Also stores
    ``fwd_s``/``bwd_s``.
    """
    out = graph.copy()
    for name, (fwd_s, bwd_s) in seconds.items():
        out.nodes[name].update(
            fwd_s=fwd_s, bwd_s=bwd_s, fwd_flops=fwd_s * host_flops_per_s, bwd_flops=bwd_s * host_flops_per_s
        )
    return out
