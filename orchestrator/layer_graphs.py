"""The model's layer graph (placement/graph.py), cached per user.

Counting FLOPs replays every layer under torch's FlopCounterMode, whose first use imports
torch._dynamo: about 0.75 s of every run's start-up. The counts depend only on the traced model
(its code and its tensors' shapes), the input shape, the traced batch and torch's version, so they
are keyed by exactly those and read back on later runs. A damaged or foreign entry is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import networkx as nx
import torch
from torch import fx, nn

from tierflow.placement.graph import build_layer_graph
from tierflow.tiers.cache_files import cache_root, write_entry

FORMAT = 1  # bump when build_layer_graph's attributes change
_NODE_FIELDS = {"fwd_flops": float, "bwd_flops": float, "activation_bytes": float, "param_bytes": int,
                "trainable_bytes": int, "order": int, "op": str}


def graph_cache_dir() -> Path:
    return cache_root() / "layer_graphs"


def graph_key(model: nn.Module, sample_shape: tuple[int, ...], batch_size: int) -> str:
    """A user's model may change under the same name: its traced code and tensor shapes are the key."""
    code = fx.symbolic_trace(model).code
    tensors = [(n, tuple(t.shape), str(t.dtype)) for n, t in model.state_dict().items()]
    text = repr((FORMAT, code, tensors, tuple(sample_shape), batch_size, torch.__version__))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def layer_graph(model: nn.Module, sample_shape: tuple[int, ...], batch_size: int = 8) -> nx.DiGraph:
    """``build_layer_graph``, read from the cache when this model was counted before."""
    path = graph_cache_dir() / f"{graph_key(model, sample_shape, batch_size)}.json"
    try:
        return graph_from_json(path.read_text())
    except (OSError, ValueError, KeyError, TypeError):
        pass  # missing, damaged or foreign: count again and replace it
    graph = build_layer_graph(model, sample_shape, batch_size)
    write_entry(path, graph_to_json(graph))
    return graph


def graph_to_json(graph: nx.DiGraph) -> str:
    return json.dumps({"format": FORMAT, "graph": dict(graph.graph),
                       "nodes": [[n, {f: d[f] for f in _NODE_FIELDS}] for n, d in graph.nodes(data=True)],
                       "edges": [[u, v] for u, v in graph.edges()]})


def graph_from_json(text: str) -> nx.DiGraph:
    doc = json.loads(text)
    if doc.get("format") != FORMAT:
        raise ValueError(f"layer graph format {doc.get('format')!r}, expected {FORMAT}")
    graph = nx.DiGraph()
    graph.graph.update(doc["graph"])
    for name, attrs in doc["nodes"]:
        graph.add_node(str(name), **{f: kind(attrs[f]) for f, kind in _NODE_FIELDS.items()})
    for u, v in doc["edges"]:
        if u not in graph or v not in graph:
            raise ValueError(f"layer graph edge {u!r} -> {v!r} names an unknown node")
        graph.add_edge(u, v)
    if graph.graph.get("source") not in graph:
        raise ValueError("layer graph without its source node")
    return graph
