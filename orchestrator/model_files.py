"""The final global model, written twice: ``model.safetensors`` (loads without pickle) and ``model.pt``.

``model.pt`` is ``torch.save`` of the state dict, a pickle: ``torch.load`` of a file from someone
else can run code (``weights_only=True`` narrows that). ``model.safetensors`` holds the same tensors
in a format that is only a JSON header and raw bytes, so any file, from anyone, is safe to load:
``safetensors.torch.load_file(path)`` gives the state dict.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

MODEL_PT, MODEL_SAFETENSORS = "model.pt", "model.safetensors"


def write_final_model(out: Path, state: Mapping[str, np.ndarray]) -> None:
    tensors = {k: torch.from_numpy(np.asarray(v)).contiguous() for k, v in state.items()}  # shapes as they are
    save_file(tensors, str(out / MODEL_SAFETENSORS), metadata={"format": "pt"})
    torch.save(tensors, out / MODEL_PT)
