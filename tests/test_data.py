"""Datasets and partitioning: no downloads, label skew that really skews, CIFAR read safely."""

from __future__ import annotations

import os
import pickle
import sys

import numpy as np
import pytest

from tierflow.orchestrator.data import load_cifar10, load_digits, load_user_dataset, partition_dirichlet, partition_iid
from tierflow.orchestrator.errors import TierflowError


def test_digits_ships_with_scikit_learn():
    ds = load_digits(test_fraction=0.2, seed=0)
    assert ds.x_train.shape[1:] == (1, 8, 8) and ds.x_train.dtype == np.float32
    assert len(ds.y_train) + len(ds.y_test) == 1797
    assert abs(len(ds.y_test) - 359) <= 1


def test_digits_are_scikit_learns_arrays_read_without_importing_it():
    """The csv read gives load_digits()'s arrays exactly, and the run's data path never imports sklearn
    (its import is seconds of start-up on a loaded host)."""
    import subprocess

    from sklearn.datasets import load_digits as sk_digits

    from tierflow.orchestrator.data import read_digits

    images, target = read_digits()
    bunch = sk_digits()
    assert images.dtype == bunch.images.dtype and np.array_equal(images, bunch.images)
    assert target.dtype == bunch.target.dtype and np.array_equal(target, bunch.target)
    code = ("import sys\nfrom tierflow.orchestrator.data import load_digits\nload_digits()\n"
            "print('sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False"]


def test_iid_partition_is_a_partition_in_proportion():
    parts = partition_iid(1000, [1, 1, 2], seed=1)
    joined = np.concatenate(parts)
    assert sorted(joined.tolist()) == list(range(1000))
    assert [len(p) for p in parts] == [250, 250, 500]


def test_dirichlet_partition_skews_labels():
    labels = np.repeat(np.arange(10), 100)
    parts = partition_dirichlet(labels, 5, alpha=0.1, seed=0)
    assert sorted(np.concatenate(parts).tolist()) == list(range(1000))
    assert all(len(p) > 0 for p in parts)
    # With alpha=0.1 most of a device's samples come from few classes.
    top_share = [np.bincount(labels[p], minlength=10).max() / len(p) for p in parts]
    assert np.mean(top_share) > 0.4
    iid_share = [np.bincount(labels[p], minlength=10).max() / len(p) for p in partition_iid(1000, [1] * 5, 0)]
    assert np.mean(top_share) > np.mean(iid_share) + 0.2


def _write_batch(path, n, seed):
    rng = np.random.default_rng(seed)
    batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": rng.integers(0, 10, n).tolist()}
    with open(path, "wb") as fh:
        pickle.dump(batch, fh)


def test_cifar10_reads_a_tiny_local_copy(tmp_path):
    _write_batch(tmp_path / "data_batch_1", 20, 0)
    _write_batch(tmp_path / "data_batch_2", 10, 1)
    _write_batch(tmp_path / "test_batch", 8, 2)
    ds = load_cifar10(tmp_path)
    assert ds.x_train.shape == (30, 3, 32, 32) and ds.x_test.shape == (8, 3, 32, 32)
    assert ds.shape.channels == 3 and ds.shape.num_classes == 10
    assert abs(float(ds.x_train.mean())) < 1e-3


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_cifar10_refuses_a_pickle_that_runs_code(tmp_path):
    with open(tmp_path / "data_batch_1", "wb") as fh:
        pickle.dump({b"data": _Evil(), b"labels": []}, fh)
    with pytest.raises(TierflowError, match="data_batch_1: not a CIFAR-10 python batch"):
        load_cifar10(tmp_path)


def test_cifar10_missing_directory_names_it(tmp_path):
    with pytest.raises(TierflowError, match="no data_batch_"):
        load_cifar10(tmp_path / "nothing")


def test_user_dataset_by_module_callable(tmp_path, monkeypatch):
    (tmp_path / "my_data.py").write_text(
        "import numpy as np\n"
        "def make():\n"
        "    x = np.zeros((6, 2, 4, 4), np.float32); y = np.array([0, 1, 2, 0, 1, 2])\n"
        "    return x, y, x[:3], y[:3]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    ds = load_user_dataset("my_data:make")
    assert ds.shape.channels == 2 and ds.shape.num_classes == 3
    with pytest.raises(TierflowError, match="dataset.name"):
        load_user_dataset("my_data:nothing_here")
    sys.modules.pop("my_data", None)
