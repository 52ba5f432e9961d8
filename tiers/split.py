"""Split a traced model into per-tier stages by cutting its torch.fx graph.

A split is an assignment of every graph node to a tier (0 device, 1 edge, 2 cloud). Data only flows
upward, so each stage takes as inputs the values produced below it and needed at or above it, and
returns the values needed above it. A skip connection that crosses a cut simply becomes one more
tensor on the link. The loss is computed by the top stage, which is why the model's output value
belongs to it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from torch import fx, nn


class SplitError(ValueError):
    """A split that cannot be applied to this model (bad node names, non-monotone, past the end)."""


@dataclass(frozen=True)
class Stage:
    """One tier's part of the model: its GraphModule and the value names on its two links."""

    tier: int
    module: fx.GraphModule
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]


def trace(model: nn.Module) -> fx.GraphModule:
    return fx.symbolic_trace(model)


def compute_nodes(gm: fx.GraphModule) -> list[str]:
    """Node names a split places, in topological order: everything but the input and the output."""
    return [n.name for n in gm.graph.nodes if n.op not in ("placeholder", "output")]


def assignment_from_cuts(gm: fx.GraphModule, cuts: Sequence[str | int]) -> dict[str, int]:
    """Turn prefix cuts into a full assignment.

    ``cuts[k]`` names the last node (or the count of leading compute nodes) of tiers 0..k; the
    number of tiers is ``len(cuts) + 1``. A topological prefix is always a valid (monotone) split.
    """
    names = compute_nodes(gm)
    bounds: list[int] = []
    for k, cut in enumerate(cuts):
        if isinstance(cut, bool) or not isinstance(cut, (int, str)):
            raise SplitError(f"split[{k}]: expected a node name or a layer count, got {cut!r}")
        if isinstance(cut, int):
            if not 0 <= cut <= len(names):
                raise SplitError(
                    f"split[{k}]: expected a layer count between 0 and {len(names)} "
                    f"(the model has {len(names)} layers), got {cut}"
                )
            bound = cut
        else:
            if cut not in names:
                raise SplitError(f"split[{k}]: unknown layer {cut!r}; layers are: {', '.join(names)}")
            bound = names.index(cut) + 1
        if bounds and bound < bounds[-1]:
            raise SplitError(f"split[{k}]: cut {cut!r} comes before the previous cut {cuts[k - 1]!r}")
        bounds.append(bound)
    assignment = {n.name: 0 for n in gm.graph.nodes if n.op == "placeholder"}
    for i, name in enumerate(names):
        assignment[name] = sum(1 for b in bounds if i >= b)
    return assignment


def _output_node(gm: fx.GraphModule) -> fx.Node:
    return next(n for n in gm.graph.nodes if n.op == "output")


def split_graph(gm: fx.GraphModule, assignment: Mapping[str, int], n_tiers: int) -> list[Stage]:
    """Cut ``gm`` into ``n_tiers`` stages; stage k holds the nodes assigned to tier k."""
    nodes = [n for n in gm.graph.nodes if n.op != "output"]
    missing = [n.name for n in nodes if n.name not in assignment]
    if missing:
        raise SplitError(f"split: no tier given for layers {missing}")
    tier = {n: int(assignment[n.name]) for n in nodes}
    for n, t in tier.items():
        if not 0 <= t < n_tiers:
            raise SplitError(f"split: layer {n.name!r} on tier {t}, expected 0..{n_tiers - 1}")
        if n.op == "placeholder" and t != 0:
            raise SplitError(f"split: the input {n.name!r} must stay on the device (tier 0)")
    output = _output_node(gm)
    top = n_tiers - 1
    # The highest tier that needs each value; the model output is consumed by the top stage.
    needed_at: dict[fx.Node, int] = {}
    for n in nodes:
        for user in n.users:
            consumer_tier = top if user is output else tier[user]
            if consumer_tier < tier[n]:
                raise SplitError(
                    f"split: layer {user.name!r} (tier {consumer_tier}) consumes {n.name!r} "
                    f"(tier {tier[n]}); data may only flow upward"
                )
            needed_at[n] = max(needed_at.get(n, -1), consumer_tier)
    modules_by_tier: dict[str, int] = {}
    for n in nodes:
        if n.op == "call_module":
            owner = modules_by_tier.setdefault(n.target, tier[n])
            if owner != tier[n]:
                raise SplitError(f"split: module {n.target!r} is used on tiers {owner} and {tier[n]}")

    def crossing(k: int) -> list[fx.Node]:
        """Values produced below tier k and needed at tier k or above."""
        return [n for n in nodes if tier[n] < k and needed_at.get(n, -1) >= k]

    stages: list[Stage] = []
    for k in range(n_tiers):
        graph = fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        inputs = [n for n in nodes if n.op == "placeholder"] if k == 0 else crossing(k)
        for n in inputs:
            env[n] = graph.placeholder(n.name)
        for n in nodes:
            if tier[n] == k and n.op != "placeholder":
                env[n] = graph.node_copy(n, env.__getitem__)
        if k == top:
            result = output.args[0]
            graph.output(fx.graph.map_arg(result, env.__getitem__))
            outputs: list[fx.Node] = []
        else:
            outputs = crossing(k + 1)
            graph.output(tuple(env[n] for n in outputs))
        graph.lint()
        module = fx.GraphModule(gm, graph, class_name=f"Tier{k}Stage")
        stages.append(Stage(k, module, tuple(n.name for n in inputs), tuple(n.name for n in outputs)))
    return stages


def split_model(model: nn.Module, cuts: Sequence[str | int]) -> list[Stage]:
    """Split ``model`` by prefix cuts (see :func:`assignment_from_cuts`)."""
    gm = trace(model)
    return split_graph(gm, assignment_from_cuts(gm, cuts), len(cuts) + 1)

