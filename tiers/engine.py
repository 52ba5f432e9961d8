"""Which engine trains a device host's devices: the vectorized device groups, or the loop.

``execution.engine: vectorized | looped`` forces one; ``auto`` times both once per (model, split,
batch shape) on this host (tiers/device_group.py ``choose_engine``) and keeps the faster. A device
host chooses for its device-side stages; an edge (or the cloud) batches the stage of every group it
is sent when vmap can (its own timing would run inside a step's timeout), so under ``auto`` a cheap
device stage above a conv-heavy edge stage is batched on the edge too (not timed there yet). The choice
is cached on disk per host, as layer profiles are: timing is noisy, and a choice that flipped
between two runs of one scenario would make them differ in the last float digits, so a second run
(or a resumed one) on the same host reads the first run's choice. Several hosts of one run that
time at once agree too: the first to write the cache wins and the others adopt its choice.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path

import torch

from tierflow.tiers.cache_files import cache_root
from tierflow.tiers.device_group import choose_engine, unsupported
from tierflow.tiers.optim import OptimizerSpec
from tierflow.tiers.session import SplitKey, StageFactory

ENGINES = ("auto", "vectorized", "looped")


def engine_label(model_name: str, key: SplitKey, batch_size: int) -> str:
    """``model|[cuts]|batch``: the split as the layer counts a scenario's ``split:`` takes."""
    counts = key.counts()
    cuts = [sum(counts[:k + 1]) for k in range(len(counts) - 1)]
    return f"{model_name}|{cuts}|{batch_size}"


def _cache_dir() -> Path:
    return cache_root() / "engines"


class EngineChooser:
    """One host's engine per (split, batch shape) for its tier's stages, decided once and remembered."""

    def __init__(self, mode: str, factory: StageFactory, optimizer: OptimizerSpec, tier: int = 0):
        if mode not in ENGINES:
            raise ValueError(f"engine: expected one of {ENGINES}, got {mode!r}")
        self.mode, self.factory, self.optimizer, self.tier = mode, factory, optimizer, tier
        self.choices: dict[str, str] = {}  # label -> "vectorized" | "looped"

    def engine(self, key: SplitKey, batch_size: int, n_devices: int) -> str:
        label = engine_label(self.factory.model_name, key, batch_size)
        if label not in self.choices:
            self.choices[label] = self._decide(key, batch_size, n_devices, label)
        return self.choices[label]

    def _decide(self, key: SplitKey, batch_size: int, n_devices: int, label: str) -> str:
        if self.mode == "looped" or unsupported(self.factory.stage(key, self.tier).module):
            return "looped"
        if self.mode == "vectorized" or self.tier > 0:
            # An edge or the cloud batches every group it is sent (the device host chose to send it
            # as one): timing there would run inside a step, against policy.step_timeout_s.
            return "vectorized"
        path = self._cache_path(key, label)
        cached = _read(path)
        if cached:
            return cached
        chosen = choose_engine(self.factory, key, self.optimizer, batch_size, n_devices, self.tier)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"label": label, "engine": chosen}))
            try:
                os.link(tmp, path)  # atomic, and refused if it exists: the first host to decide wins
            except FileExistsError:
                chosen = _read(path) or chosen
            finally:
                tmp.unlink(missing_ok=True)
        except OSError:  # an unwritable cache costs only reproducibility across runs
            pass
        return chosen

    def _cache_path(self, key: SplitKey, label: str) -> Path:
        shape = self.factory.shape
        layers = [(n, type(m).__name__) for n, m in self.factory.stage(key, self.tier).module.named_modules()]
        text = repr((label, self.tier, key, layers, (shape.channels, shape.height, shape.width, shape.num_classes),
                     self.optimizer, torch.__version__, platform.node(), os.cpu_count()))
        return _cache_dir() / f"{hashlib.sha256(text.encode()).hexdigest()[:24]}.json"


def _read(path: Path) -> str:
    try:
        engine = json.loads(path.read_text()).get("engine")
    except (OSError, ValueError, AttributeError):
        return ""
    return engine if engine in ("vectorized", "looped") else ""
