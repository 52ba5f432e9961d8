"""Where a run's layer profile comes from: a file the user names, this host's cache, or a timing.

Two runs on one machine must charge identical costs without being told, so a profile timed here
is cached per host, keyed by everything its figures depend on (model and its structure, input
shape, batch size, torch version, host); ``--profile FILE`` reuses one across variants, resumed
runs and machines. The run directory always gets the profile it charged, as ``layer_profile.json``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import networkx as nx
import torch

from tierflow.orchestrator.errors import TierflowError
from tierflow.orchestrator.files import read_text
from tierflow.placement.profile import LayerProfile, ProfileError, host_name, time_layers
from tierflow.tiers.cache_files import write_entry
from tierflow.tiers.models import InputShape, build_model

PROFILE_FILE = "layer_profile.json"


def cache_dir() -> Path:
    """``$TIERFLOW_CACHE_DIR``, else the XDG cache: one per user, shared by that user's runs."""
    explicit = os.environ.get("TIERFLOW_CACHE_DIR")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tierflow" / "profiles"


def _shape_tuple(shape: InputShape) -> tuple[int, int, int, int]:
    return (shape.channels, shape.height, shape.width, shape.num_classes)


def cache_key(model_name: str, graph: nx.DiGraph, shape: InputShape, batch_size: int) -> str:
    """A user model may change under the same name: its layers and their sizes are in the key too."""
    layers = [(n, d.get("op"), d.get("param_bytes"), d.get("activation_bytes"), d.get("fwd_flops"))
              for n, d in sorted(graph.nodes(data=True), key=lambda nd: nd[1].get("order", 0))]
    text = repr((model_name, layers, _shape_tuple(shape), batch_size, torch.__version__, host_name()))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def load_profile(path: str | Path, graph: nx.DiGraph, model_name: str, shape: InputShape,
                 batch_size: int) -> LayerProfile:
    """A profile file, checked against the scenario's model, input and batch size."""
    text = read_text(path, "layer profile", max_bytes=8 << 20)
    try:
        profile = LayerProfile.from_json(text)
    except ProfileError as exc:
        raise TierflowError(f"{path}: {exc}") from None
    return _checked(profile, str(path), graph, model_name, shape, batch_size)


def _checked(profile: LayerProfile, source: str, graph: nx.DiGraph, model_name: str, shape: InputShape,
             batch_size: int) -> LayerProfile:
    try:
        profile.check_fits(graph, model_name, _shape_tuple(shape), batch_size)
    except ProfileError as exc:
        raise TierflowError(f"{source}: {exc}") from None
    return profile


def profile_for(model_name: str, graph: nx.DiGraph, shape: InputShape, batch_size: int, seed: int = 0,
                path: str | Path | None = None, given: LayerProfile | None = None) -> LayerProfile:
    """The profile to charge: ``given`` (already loaded: a comparison's, a checkpoint's) or ``path`` if
    set, else this host's cached one, else a new timing (which is then cached)."""
    if given is not None:
        return _checked(given, "layer profile", graph, model_name, shape, batch_size)
    if path is not None:
        return load_profile(path, graph, model_name, shape, batch_size)
    cached = cache_dir() / f"{cache_key(model_name, graph, shape, batch_size)}.json"
    if cached.is_file():
        try:
            return load_profile(cached, graph, model_name, shape, batch_size)
        except TierflowError:
            pass  # a damaged cache entry is timed again and replaced
    model = build_model(model_name, shape, seed=seed)
    profile = time_layers(model, model_name, _shape_tuple(shape), batch_size)
    write_entry(cached, profile.to_json())  # unwritable: this run still charges one profile throughout
    return profile


def write_profile(run_dir: Path, profile: LayerProfile) -> Path:
    path = run_dir / PROFILE_FILE
    path.write_text(profile.to_json())
    return path


def profile_digest(profile: LayerProfile | None) -> str | None:
    """Identifies the figures a run charged (a checkpoint records it; a resume must match it)."""
    return None if profile is None else hashlib.sha256(profile.to_json().encode()).hexdigest()
