"""dataset.augment: seeded, shifted and noised copies of the training set only."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from tierflow.orchestrator.augment import AugmentSpec, augment_train, shift_images
from tierflow.orchestrator.data import load_digits
from tierflow.orchestrator.errors import TierflowError
from tierflow.orchestrator.scenario import load_scenario
from tierflow.orchestrator.world import build_world, load_dataset

BASE = {
    "name": "aug",
    "cloud": {"flops_per_s": 1e12},
    "edges": [{"name": "e0", "position": [0, 0], "radius_m": 500, "flops_per_s": 1e11}],
    "devices": [{"name": "d", "count": 3000, "position": [10, 0], "flops_per_s": 1e9, "bandwidth_mbps": 20}],
    "model": {"name": "mlp"},
    "training": {"rounds": 1, "local_steps": 1, "batch_size": 8, "seed": 4},
    "split": [1],
}


def scenario(tmp_path, augment, **dataset):
    doc = {**BASE, "dataset": {"name": "digits", **dataset, **({"augment": augment} if augment is not None else {})}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(doc))
    return load_scenario(path)


def test_copies_follow_the_originals_with_their_labels_and_the_test_set_is_untouched(tmp_path):
    plain = load_dataset(scenario(tmp_path, None))
    aug = load_dataset(scenario(tmp_path, {"copies": 3, "max_shift_px": 1}))
    n = len(plain.y_train)
    assert aug.x_train.shape == (4 * n, *plain.x_train.shape[1:]) and aug.x_train.dtype == np.float32
    assert aug.y_train.dtype == plain.y_train.dtype and np.array_equal(aug.y_train, np.tile(plain.y_train, 4))
    assert np.array_equal(aug.x_train[:n], plain.x_train)
    assert np.array_equal(aug.x_test, plain.x_test) and np.array_equal(aug.y_test, plain.y_test)
    # Every copy is its original moved by at most one pixel on each axis, border filled with its background.
    background = plain.x_train.min(axis=(1, 2, 3), keepdims=True)
    for k in range(1, 4):
        copy = aug.x_train[k * n:(k + 1) * n]
        matched = np.zeros(n, dtype=bool)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                moved = shift_images(plain.x_train, np.tile([dy, dx], (n, 1)), background)
                matched |= (moved == copy).all(axis=(1, 2, 3))
        assert matched.all()
        assert not np.array_equal(copy, plain.x_train)


def test_augmentation_is_deterministic_and_follows_its_seed(tmp_path):
    spec = {"copies": 2, "max_shift_px": 2, "noise_std": 0.1}
    a = load_dataset(scenario(tmp_path, spec)).x_train
    b = load_dataset(scenario(tmp_path, spec)).x_train
    assert np.array_equal(a, b)
    c = load_dataset(scenario(tmp_path, {**spec, "seed": 99})).x_train
    assert not np.array_equal(a, c)
    d = load_dataset(scenario(tmp_path, {**spec, "seed": 4})).x_train  # no seed: the training seed
    assert np.array_equal(a, d)


def test_noise_has_the_asked_spread_and_no_bias():
    ds = load_digits(0.2, 0)
    out = augment_train(ds, AugmentSpec(copies=1, max_shift_px=0, noise_std=0.2), seed=1)
    diff = out.x_train[len(ds.y_train):] - ds.x_train
    assert abs(float(diff.mean())) < 0.01 and abs(float(diff.std()) - 0.2) < 0.01


def test_enough_samples_for_a_device_each(tmp_path):
    with pytest.raises(TierflowError, match="would get no training sample"):
        build_world(_many(tmp_path, None))
    world = build_world(_many(tmp_path, {"copies": 2}))
    assert min(len(s) for s in world.shards) >= 1


def _many(tmp_path, augment):
    sc = scenario(tmp_path, augment)
    return sc  # 3,000 devices: digits alone has 1,437 training samples


BAD = [
    ({"copies": 0}, r"dataset\.augment\.copies: expected an integer >= 1, got 0"),
    ({"copies": "many"}, r"dataset\.augment\.copies: expected an integer >= 1, got 'many'"),
    ({"copies": 5000}, r"dataset\.augment\.copies: expected an integer <= 1,000 \(copies of the whole training set\)"),
    ({}, r"dataset\.augment\.copies: missing \(required\)"),
    ({"copies": 2, "max_shift_px": -1}, r"dataset\.augment\.max_shift_px: expected an integer >= 0, got -1"),
    ({"copies": 2, "noise_std": -0.5}, r"dataset\.augment\.noise_std: expected a number >= 0, got -0\.5"),
    ({"copies": 2, "max_shift_px": 0}, r"dataset\.augment\.max_shift_px: expected a shift >= 1 or a noise_std > 0"),
    ({"copies": 2, "seed": -3}, r"dataset\.augment\.seed: expected an integer >= 0, got -3"),
    ({"copies": 2, "flip": True}, r"dataset\.augment\.flip: unknown field"),
    ([2], r"dataset\.augment: expected a mapping, got \[2\]"),
]


@pytest.mark.parametrize("augment,message", BAD)
def test_bad_augment_values_are_refused_with_the_field_and_what_was_expected(tmp_path, augment, message):
    with pytest.raises(TierflowError, match=rf"s\.yaml: {message}"):
        scenario(tmp_path, augment)


def test_a_shift_as_large_as_the_image_is_refused_when_the_data_is_known(tmp_path):
    sc = scenario(tmp_path, {"copies": 1, "max_shift_px": 8})
    with pytest.raises(TierflowError, match=r"s\.yaml: dataset\.augment\.max_shift_px: expected fewer pixels than "
                                            r"the images' 8 x 8, got 8"):
        load_dataset(sc)


def test_the_metro_example_gives_every_phone_a_full_batch_of_its_own():
    from pathlib import Path

    sc = load_scenario(Path(__file__).resolve().parents[1] / "examples" / "metro.yaml")
    assert len(sc.devices) == 10_000 and len(sc.edges) == 16 and sc.dataset.augment is not None
    world = build_world(sc)
    assert min(len(s) for s in world.shards) >= sc.training.batch_size
    assert len(world.dataset.y_test) == 359  # digits' own test set, not augmented
