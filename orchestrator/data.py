"""Datasets and how they are dealt out to devices.

Nothing is downloaded: the default is scikit-learn's bundled digits; CIFAR-10 is read only from a
local directory the user names; a user dataset is a ``module:callable``.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tierflow.orchestrator.errors import TierflowError
from tierflow.tiers.models import InputShape, load_callable


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


def load_digits(test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's 1,797 8x8 handwritten digits, scaled to zero mean and unit variance."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]
    x = (x - x.mean()) / x.std()
    y = bunch.target.astype(np.int64)
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
    try:
        with open(path, "rb") as fh:
            batch = _CifarUnpickler(io.BytesIO(fh.read()), encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except FileNotFoundError as exc:
        raise TierflowError(f"{path}: file not found (expected a CIFAR-10 python batch)") from exc
    except (pickle.UnpicklingError, KeyError, TypeError, ValueError, EOFError) as exc:
        raise TierflowError(f"{path}: not a CIFAR-10 python batch ({exc})") from exc
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


def load_user_dataset(spec: str) -> Dataset:
    """``module:callable`` returning (x_train, y_train, x_test, y_test) with x shaped (N, C, H, W)."""
    try:
        arrays = load_callable(spec)()
        x_train, y_train, x_test, y_test = (np.asarray(a) for a in arrays)
    except (ImportError, ValueError, TypeError) as exc:
        raise TierflowError(f"dataset.name: could not load {spec!r}: {exc}") from exc
    if x_train.ndim != 4:
        raise TierflowError(f"dataset.name: {spec!r} must return x shaped (N, C, H, W), got {x_train.shape}")
    n_classes = int(max(y_train.max(), y_test.max())) + 1
    c, h, w = x_train.shape[1:]
    return Dataset(
        x_train.astype(np.float32), y_train.astype(np.int64), x_test.astype(np.float32),
        y_test.astype(np.int64), InputShape(int(c), int(h), int(w), n_classes),
    )


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
