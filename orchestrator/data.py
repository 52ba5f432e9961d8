"""Datasets and how they are dealt out to devices.

Nothing is downloaded: the default is scikit-learn's bundled digits; CIFAR-10 is read only from a
local directory the user names; a user dataset is a ``module:callable``.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tierflow.orchestrator.errors import TierflowError
from tierflow.orchestrator.files import MiB, read_bytes
from tierflow.tiers.models import InputShape, load_callable

CIFAR_BATCH_LIMIT_BYTES = 64 * MiB  # one batch of 10,000 images is 30 MiB


@dataclass(frozen=True)
class Dataset:
    x_train: np.ndarray  # float32, (N, C, H, W)
    y_train: np.ndarray  # int64, (N,)
    x_test: np.ndarray
    y_test: np.ndarray
    shape: InputShape


def _split_train_test(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int) -> tuple:
    order = np.random.default_rng(seed).permutation(len(y))
    n_test = max(1, int(round(len(y) * test_fraction)))
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def digits_csv() -> Path:
    """Where scikit-learn keeps its bundled digits, found without importing scikit-learn."""
    spec = importlib.util.find_spec("sklearn")  # a top-level spec: sklearn itself is not imported
    roots = [] if spec is None or spec.submodule_search_locations is None else list(spec.submodule_search_locations)
    for root in roots:
        path = Path(root) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            return path
    raise TierflowError("dataset.name: 'digits' is read from scikit-learn's bundled copy "
                        "(sklearn/datasets/data/digits.csv.gz), which is not installed here; pip install scikit-learn")


def read_digits() -> tuple[np.ndarray, np.ndarray]:
    """The arrays ``sklearn.datasets.load_digits()`` gives (images [1797, 8, 8] float64, target int), read
    as it reads them, without importing scikit-learn: that import (scipy, joblib, ...) is a second or
    more of every run's start-up."""
    with gzip.open(digits_csv(), "rt") as fh:
        data = np.loadtxt(fh, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int, copy=False)


def load_digits(test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's 1,797 8x8 handwritten digits, scaled to zero mean and unit variance."""
    images, target = read_digits()
    x = (images.astype(np.float32) / 16.0)[:, None, :, :]
    x = (x - x.mean()) / x.std()
    y = target.astype(np.int64)
    parts = _split_train_test(x.astype(np.float32), y, test_fraction, seed)
    return Dataset(*parts, shape=InputShape(1, 8, 8, 10))


class _CifarUnpickler(pickle.Unpickler):
    """CIFAR-10's python batches are pickles; allow only what they hold (dicts, bytes, ndarrays)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    raw = read_bytes(path, "CIFAR-10 python batch", max_bytes=CIFAR_BATCH_LIMIT_BYTES)
    try:
        batch = _CifarUnpickler(io.BytesIO(raw), encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except Exception as exc:  # a damaged pickle fails in many ways (and never runs code: see the unpickler)
        raise TierflowError(f"{path}: not a CIFAR-10 python batch ({type(exc).__name__}: {str(exc)[:200]})") \
            from None
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise TierflowError(f"{path}: expected data of shape (N, 3072) and N labels, got {data.shape}")
    return data.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0, labels


def load_cifar10(directory: str | Path) -> Dataset:
    """CIFAR-10 from ``directory`` in the standard python format (data_batch_1..5, test_batch)."""
    root = Path(directory)
    train_files = sorted(root.glob("data_batch_*"))
    if not train_files:
        raise TierflowError(f"{root}: no data_batch_* files (expected CIFAR-10's python batches)")
    parts = [_read_cifar_batch(p) for p in train_files]
    x_train = np.concatenate([p[0] for p in parts])
    y_train = np.concatenate([p[1] for p in parts])
    x_test, y_test = _read_cifar_batch(root / "test_batch")
    mean = x_train.mean(axis=(0, 2, 3), keepdims=True)
    std = x_train.std(axis=(0, 2, 3), keepdims=True) + 1e-6
    return Dataset(
        ((x_train - mean) / std).astype(np.float32),
        y_train,
        ((x_test - mean) / std).astype(np.float32),
        y_test,
        InputShape(3, 32, 32, 10),
    )


MAX_CLASSES = 100_000  # the model's last layer has an output per class


def load_user_dataset(spec: str) -> Dataset:
    """``module:callable`` returning (x_train, y_train, x_test, y_test) with x shaped (N, C, H, W).

    It is user code: whatever it raises, at import or when called, is reported against
    ``dataset.name``, and what it returns is checked (shapes, lengths, dtypes, non-empty sets)
    before anything trains on it."""
    try:
        arrays = load_callable(spec)()
    except (Exception, SystemExit) as exc:  # user code may raise anything, even exit
        raise TierflowError(f"dataset.name: {spec!r} failed: {type(exc).__name__}: {str(exc)[:300]}") from None
    if isinstance(arrays, (str, bytes)) or not isinstance(arrays, (tuple, list)) or len(arrays) != 4:
        got = type(arrays).__name__ + (f" of length {len(arrays)}" if isinstance(arrays, (tuple, list)) else "")
        raise TierflowError(f"dataset.name: {spec!r}: expected it to return (x_train, y_train, x_test, y_test), "
                            f"got {got}")
    names = ("x_train", "y_train", "x_test", "y_test")
    parts = {}
    for name, value in zip(names, arrays, strict=True):
        try:
            parts[name] = np.asarray(value)
        except Exception as exc:  # ragged lists, objects without an array form
            raise TierflowError(f"dataset.name: {spec!r}: {name}: expected an array ({type(exc).__name__}: "
                                f"{str(exc)[:200]})") from None
    return _checked_dataset(spec, parts)


def _checked_dataset(spec: str, parts: dict[str, np.ndarray]) -> Dataset:
    def fail(name: str, expected: str, got: str) -> None:
        raise TierflowError(f"dataset.name: {spec!r}: {name}: expected {expected}, got {got}")

    for split in ("train", "test"):
        x, y = parts[f"x_{split}"], parts[f"y_{split}"]
        if x.ndim != 4 or 0 in x.shape[1:]:
            fail(f"x_{split}", "an array shaped (N, C, H, W) with C, H, W >= 1", f"shape {x.shape}")
        if x.dtype.kind not in "biuf":
            fail(f"x_{split}", "real numbers", f"dtype {x.dtype}")
        if y.ndim != 1 or y.dtype.kind not in "iu":
            fail(f"y_{split}", "a 1-D array of integer class labels", f"shape {y.shape}, dtype {y.dtype}")
        if len(y) != len(x):
            fail(f"y_{split}", f"one label per sample of x_{split} ({len(x)})", f"{len(y)} labels")
        if len(y) == 0:
            fail(f"x_{split}", f"at least one sample (the {split} set {'trains' if split == 'train' else 'scores'} "
                 "the model)", "an empty set")
        if y.min() < 0 or y.max() >= MAX_CLASSES:
            fail(f"y_{split}", f"labels from 0 to {MAX_CLASSES - 1:,} (one model output per class)",
                 f"labels from {y.min()} to {y.max()}")
    if parts["x_train"].shape[1:] != parts["x_test"].shape[1:]:
        fail("x_test", f"samples shaped like x_train's {parts['x_train'].shape[1:]}",
             f"{parts['x_test'].shape[1:]}")
    # Non-finite values are not refused here: a device training on them sends a non-finite update,
    # which aggregation rejects as poisoned (a defence the run has anyway, and tests).
    with np.errstate(over="ignore", invalid="ignore"):
        x_train, x_test = (parts[k].astype(np.float32) for k in ("x_train", "x_test"))
    y_train, y_test = parts["y_train"].astype(np.int64), parts["y_test"].astype(np.int64)
    n_classes = int(max(y_train.max(), y_test.max())) + 1
    c, h, w = x_train.shape[1:]
    return Dataset(x_train, y_train, x_test, y_test, InputShape(int(c), int(h), int(w), n_classes))


def partition_iid(n_samples: int, shares: list[float], seed: int) -> list[np.ndarray]:
    """Shuffle and deal the samples out in proportion to each device's share."""
    order = np.random.default_rng(seed).permutation(n_samples)
    weights = np.asarray(shares, dtype=float) / float(np.sum(shares))
    bounds = np.round(np.cumsum(weights) * n_samples).astype(int)
    return [np.sort(part) for part in np.split(order, bounds[:-1])]


def partition_dirichlet(labels: np.ndarray, n_devices: int, alpha: float, seed: int) -> list[np.ndarray]:
    """Label skew: each class is split across devices by proportions drawn from Dir(alpha)."""
    rng = np.random.default_rng(seed)
    shards: list[list[int]] = [[] for _ in range(n_devices)]
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        cuts = (np.cumsum(rng.dirichlet([alpha] * n_devices)) * len(idx)).astype(int)[:-1]
        for device, part in enumerate(np.split(idx, cuts)):
            shards[device].extend(part.tolist())
    # A device with no samples cannot train; give it one from the largest shard.
    for shard in shards:
        if not shard:
            donor = max(shards, key=len)
            shard.append(donor.pop())
    return [np.sort(np.asarray(s, dtype=np.int64)) for s in shards]
