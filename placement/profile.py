"""Layer cost profiles: each layer's forward and backward seconds on a reference host, as data.

Emulated time charges compute from a profile, never from the wall time of each step: on a shared
host that noise, multiplied by host speed / device speed, made identical runs differ by a quarter.
A profile is timed once (single-threaded, like the tier actors), with enough repeats for a stable
median, and then it is data: written beside a run, reused by every variant of a comparison, by a
resumed run, or on another machine, so equal profiles give equal virtual time.

A layer's seconds become "effective FLOPs" at the host's calibrated speed (seconds x
``host_flops_per_s``), so the cost model keeps one unit: a tier at f FLOP/s runs that layer in
seconds x host_flops_per_s / f.
"""

from __future__ import annotations

import json
import math
import platform
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import networkx as nx
import torch
from torch import nn

from tierflow.placement.errors import PlacementError

FORMAT = "tierflow-layer-profile/1"
BLOCK_S = 0.002  # each timed block runs a layer this long at least: timer resolution and jitter shrink


class ProfileError(PlacementError):
    """A layer profile that is malformed or does not fit the model; the message names the layer."""


@contextmanager
def single_threaded() -> Iterator[None]:
    """Run the block on one torch thread, as each tier actor computes: timings here scale to theirs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _best_and_spread(samples: list[float]) -> tuple[float, float]:
    """The fastest block, and how far the median block lies above it (relative).

    The fastest is the figure: on a shared host every slower block is the same work plus someone
    else's; the median's distance from it says how disturbed the timing was."""
    s = sorted(samples)
    best, median = s[0], s[len(s) // 2]
    return best, ((median - best) / best if best > 0 else 0.0)


def _time_call(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Seconds per call of ``fn`` (the fastest of ``repeats`` blocks) and the blocks' spread."""
    fn()
    fn()  # warm caches and lazy initialisation
    t0 = time.perf_counter()
    fn()
    once = max(time.perf_counter() - t0, 1e-7)
    inner = max(1, min(1000, math.ceil(BLOCK_S / once)))
    blocks = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        blocks.append((time.perf_counter() - t0) / inner)
    return _best_and_spread(blocks)


def calibrate_host_flops_per_s(repeats: int = 15) -> tuple[float, float]:
    """This host's dense float32 speed on one thread (a 256x256 matmul), and its spread."""
    n = 256
    a, b = torch.randn(n, n), torch.randn(n, n)
    with single_threaded():
        seconds, spread = _time_call(lambda: a @ b, repeats)
    return 2 * n**3 / seconds, spread


def host_name() -> str:
    """What a profile's timings belong to: machine, processor and core count."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import os

    return f"{platform.node()} / {cpu} / {os.cpu_count()} cpus"


@dataclass(frozen=True)
class LayerTiming:
    """One layer at the profile's batch size: seconds per forward and per backward, and how far the
    median block lay above the fastest (relative)."""

    forward_s: float
    backward_s: float
    forward_spread: float = 0.0
    backward_spread: float = 0.0


@dataclass(frozen=True)
class LayerProfile:
    model: str
    input_shape: tuple[int, ...]  # channels, height, width, classes
    batch_size: int
    host_flops_per_s: float
    layers: dict[str, LayerTiming] = field(default_factory=dict)
    host: str = ""
    torch_version: str = ""
    repeats: int = 0
    host_spread: float = 0.0

    def per_sample_seconds(self) -> dict[str, tuple[float, float]]:
        return {n: (t.forward_s / self.batch_size, t.backward_s / self.batch_size) for n, t in self.layers.items()}

    @property
    def spread(self) -> float:
        """The largest spread of any layer's figure: how disturbed the timing was at worst."""
        return max((max(t.forward_spread, t.backward_spread) for t in self.layers.values()), default=0.0)

    def to_json(self) -> str:
        doc = {
            "format": FORMAT, "model": self.model, "input_shape": list(self.input_shape),
            "batch_size": self.batch_size, "host_flops_per_s": self.host_flops_per_s,
            "host_spread": self.host_spread, "host": self.host, "torch_version": self.torch_version,
            "repeats": self.repeats, "max_spread": self.spread,
            "layers": {n: {"forward_s": t.forward_s, "backward_s": t.backward_s,
                           "forward_spread": t.forward_spread, "backward_spread": t.backward_spread}
                       for n, t in self.layers.items()},
        }
        return json.dumps(doc, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str) -> LayerProfile:
        """Parse and check a profile; a ProfileError names the field or layer that is wrong."""
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ProfileError(f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
        except (ValueError, RecursionError) as exc:  # an integer of 5,000 digits, nesting deeper than the stack
            raise ProfileError(f"not valid JSON: {type(exc).__name__}: {str(exc)[:80]}") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ProfileError(f"format: expected {FORMAT!r} (a file written by tierflow), got "
                               f"{doc.get('format') if isinstance(doc, dict) else type(doc).__name__!r}")

        def number(where: str, value: object, positive: bool = False) -> float:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0 or (positive and value == 0):
                raise ProfileError(f"{where}: expected a {'positive' if positive else 'non-negative'} finite "
                                   f"number, got {value!r}")
            return float(value)

        layers_doc = doc.get("layers")
        if not isinstance(layers_doc, dict) or not layers_doc:
            raise ProfileError("layers: expected a mapping of layer name to its timings")
        layers = {}
        for name, t in layers_doc.items():
            if not isinstance(t, dict):
                raise ProfileError(f"layers.{name}: expected {{forward_s, backward_s}}, got {t!r}")
            layers[str(name)] = LayerTiming(*(number(f"layers.{name}.{k}", t.get(k, 0.0 if "spread" in k else None))
                                              for k in ("forward_s", "backward_s", "forward_spread",
                                                        "backward_spread")))
        shape = doc.get("input_shape")
        if not isinstance(shape, list) or len(shape) != 4 or not all(isinstance(v, int) and v > 0 for v in shape):
            raise ProfileError(f"input_shape: expected [channels, height, width, classes], got {shape!r}")
        batch = doc.get("batch_size")
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ProfileError(f"batch_size: expected a positive integer, got {batch!r}")
        model = doc.get("model")
        if not isinstance(model, str) or not model:
            raise ProfileError(f"model: expected the model's name, got {model!r}")
        return cls(model, tuple(shape), batch, number("host_flops_per_s", doc.get("host_flops_per_s"), True),
                   layers, str(doc.get("host", "")), str(doc.get("torch_version", "")),
                   int(doc.get("repeats", 0) or 0), number("host_spread", doc.get("host_spread", 0.0)))

    def check_fits(self, graph: nx.DiGraph, model: str, input_shape: tuple[int, ...], batch_size: int) -> None:
        """Refuse a profile of another model, input or batch size, or one missing a layer of the graph."""
        if self.model != model:
            raise ProfileError(f"model: the profile is of {self.model!r}, the scenario trains {model!r}")
        if tuple(self.input_shape) != tuple(input_shape):
            raise ProfileError(f"input_shape: the profile is for {list(self.input_shape)}, the scenario's data is "
                               f"{list(input_shape)}")
        if self.batch_size != batch_size:
            raise ProfileError(f"batch_size: the profile was timed at batch {self.batch_size}, the scenario trains "
                               f"batches of {batch_size}")
        missing = [n for n in graph.nodes if n not in self.layers]
        if missing:
            raise ProfileError(f"layers.{missing[0]}: missing (the model's layers are {', '.join(graph.nodes)})")
        extra = [n for n in self.layers if n not in graph.nodes]
        if extra:
            raise ProfileError(f"layers.{extra[0]}: not a layer of {model!r} (its layers are {', '.join(graph.nodes)})")


def time_layers(model: nn.Module, model_name: str, input_shape: tuple[int, ...], batch_size: int,
                repeats: int = 15) -> LayerProfile:
    """Time every layer of ``model`` alone, forward and backward, at ``batch_size``, on one thread.

    ``input_shape`` is (channels, height, width, classes). Each figure is the median of ``repeats``
    blocks of at least ``BLOCK_S``; a backward is timed on a kept graph, without its forward.
    """
    from tierflow.placement.graph import NodeTimer

    host_flops, host_spread = calibrate_host_flops_per_s(repeats)
    layers: dict[str, LayerTiming] = {}
    with single_threaded():
        timer = NodeTimer(model, tuple(input_shape[:3]), batch_size)
        for name, forward, backward in timer.thunks():
            fwd, fwd_spread = _time_call(forward, repeats) if forward else (0.0, 0.0)
            bwd, bwd_spread = _time_call(backward, repeats) if backward else (0.0, 0.0)
            layers[name] = LayerTiming(fwd, bwd, fwd_spread, bwd_spread)
    return LayerProfile(model_name, tuple(input_shape), batch_size, host_flops, layers, host_name(),
                        torch.__version__, repeats, host_spread)
