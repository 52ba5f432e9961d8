"""More training samples from the same data: shifted, noised copies of the training set.

A city of 10,000 devices needs more than digits' 1,437 training images for each device to hold a
batch of its own. ``dataset.augment: {copies: K, max_shift_px: S, noise_std: N, seed: X}`` appends
K copies of every training sample, each moved by a whole number of pixels in [-S, S] on both axes
(the uncovered border filled with the image's own minimum, its background) and given Gaussian
noise of standard deviation N (in the data's units, after its normalisation). Labels are kept. The
test set is never touched, so accuracy is still measured on images no device has seen, in any form.

Deterministic: copy k of the training set draws from ``np.random.default_rng([seed, k])`` (shifts
for every sample, then noise), so the same scenario builds the same samples on any machine.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from tierflow.orchestrator.errors import TierflowError

if TYPE_CHECKING:  # the scenario reads AugmentSpec; it need not load the datasets' code
    from tierflow.orchestrator.data import Dataset

MAX_COPIES = 1000
MAX_SHIFT_PX = 16
MAX_NOISE_STD = 10.0
MAX_AUGMENTED_BYTES = 4 * 1024**3  # the augmented training images, in memory on the driver


@dataclass(frozen=True)
class AugmentSpec:
    copies: int  # transformed copies of every training sample, after the originals
    max_shift_px: int = 1
    noise_std: float = 0.0
    seed: int | None = None  # None: the scenario's training.seed


def augment_train(dataset: Dataset, spec: AugmentSpec, seed: int, where: str = "dataset.augment") -> Dataset:
    """``dataset`` with ``spec.copies`` transformed copies of its training set appended; the test set
    as it was. ``where`` prefixes errors (the scenario file and field)."""
    x, y = dataset.x_train, dataset.y_train
    if x.ndim != 4:
        raise TierflowError(f"{where}: expected training images of shape (N, C, H, W), got {x.shape}")
    h, w = x.shape[2], x.shape[3]
    if spec.max_shift_px >= min(h, w):
        raise TierflowError(f"{where}.max_shift_px: expected fewer pixels than the images' {h} x {w}, "
                            f"got {spec.max_shift_px}")
    total = x.nbytes * (spec.copies + 1)
    if total > MAX_AUGMENTED_BYTES:
        raise TierflowError(f"{where}.copies: expected at most {MAX_AUGMENTED_BYTES // x.nbytes - 1} copies of this "
                            f"training set ({x.nbytes:,} bytes) to stay within {MAX_AUGMENTED_BYTES:,} bytes, "
                            f"got {spec.copies}")
    xs, ys = [x], [y]
    background = x.min(axis=(1, 2, 3), keepdims=True)
    for k in range(spec.copies):
        rng = np.random.default_rng([seed, k])
        s = spec.max_shift_px
        shifts = rng.integers(-s, s + 1, size=(len(x), 2)) if s > 0 else np.zeros((len(x), 2), np.int64)
        copy = shift_images(x, shifts, background)
        if spec.noise_std > 0:
            copy += (spec.noise_std * rng.standard_normal(copy.shape)).astype(x.dtype)
        xs.append(copy)
        ys.append(y)
    return replace(dataset, x_train=np.concatenate(xs).astype(x.dtype, copy=False), y_train=np.concatenate(ys))


def shift_images(x: np.ndarray, shifts: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """Each image ``x[i]`` moved by ``shifts[i] = (dy, dx)`` pixels (down, right), the uncovered
    border set to ``fill[i]``. One slice per distinct shift, not per image."""
    out = np.broadcast_to(fill, x.shape).astype(x.dtype, copy=True)
    h, w = x.shape[2], x.shape[3]
    for dy, dx in np.unique(shifts, axis=0):
        rows = np.flatnonzero((shifts[:, 0] == dy) & (shifts[:, 1] == dx))
        dst_y, src_y = slice(max(dy, 0), h + min(dy, 0)), slice(max(-dy, 0), h - max(dy, 0))
        dst_x, src_x = slice(max(dx, 0), w + min(dx, 0)), slice(max(-dx, 0), w - max(dx, 0))
        out[rows, :, dst_y, dst_x] = x[rows][:, :, src_y, src_x]
    return out
