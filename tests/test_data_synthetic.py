"""The built-in synthetic long-tailed dataset: determinism, counts, speed and learnability."""
from __future__ import annotations

import numpy as np
import pytest

from longtail.data import DATASETS, build_datasets, long_tail_counts
from longtail.data.synthetic import (_CHUNK, SyntheticLT, build_synthetic, channel_stats, class_prototypes,
                                     render_images)
from longtail.errors import ConfigError


@pytest.fixture(scope="module")
def default_bundle():
    return build_synthetic()


def test_shapes_dtypes_and_counts(default_bundle):
    b = default_bundle
    counts = long_tail_counts(500, 10, 100)
    assert b.class_counts.tolist() == counts == [500, 299, 179, 107, 64, 38, 23, 13, 8, 5]
    assert b.train.data.shape == (sum(counts), 32, 32, 3) and b.train.data.dtype == np.uint8
    assert b.train.targets.dtype == np.int64 and b.train.class_counts.dtype == np.int64
    np.testing.assert_array_equal(b.train.targets, np.repeat(np.arange(10), counts))  # class by class
    assert b.test.data.shape == (1000, 32, 32, 3) and b.test.class_counts.tolist() == [100] * 10
    assert b.test.targets[:12].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    assert b.val is None and b.in_memory and b.augment == "cifar" and b.num_classes == 10
    assert len(b.class_names) == 10 and len(set(b.class_names)) == 10
    img, label = b.train[0]
    assert img.size == (32, 32) and img.mode == "RGB" and type(label) is int
    # mean / std are the training images' statistics
    assert (b.mean, b.std) == channel_stats(b.train.data)
    x = b.train.data.reshape(-1, 3) / 255.0
    np.testing.assert_allclose(b.mean, x.mean(0), atol=1e-4)
    np.testing.assert_allclose(b.std, x.std(0), atol=1e-4)
    assert all(0.15 < s < 0.35 for s in b.std)
    # the images use the range: neither flat nor saturated
    assert 0.3 < b.train.data.mean() / 255 < 0.7 and (b.train.data == 255).mean() < 0.05


def test_deterministic_per_seed():
    a = SyntheticLT("train", n_max=40, imbalance_ratio=10, seed=3)
    b = SyntheticLT("train", n_max=40, imbalance_ratio=10, seed=3)
    assert np.array_equal(a.data, b.data) and np.array_equal(a.targets, b.targets)
    c = SyntheticLT("train", n_max=40, imbalance_ratio=10, seed=4)
    assert c.data.shape == a.data.shape and not np.array_equal(a.data, c.data)
    assert np.mean(a.data != c.data) > 0.5
    # the splits are different draws of the same classes
    t = SyntheticLT("test", n_max=40, imbalance_ratio=10, seed=3, test_per_class=4)
    assert not any(np.array_equal(t.data[0], a.data[i]) for i in range(len(a)))


def test_profiles_params_and_val_split():
    b = build_synthetic(num_classes=6, n_max=50, imbalance_ratio=10, profile="step", test_per_class=3,
                        val_per_class=2, image_size=24, seed=1)
    assert b.class_counts.tolist() == [50, 50, 50, 5, 5, 5]
    assert b.train.data.shape == (165, 24, 24, 3)
    assert len(b.test) == 18 and len(b.val) == 12 and b.val.class_counts.tolist() == [2] * 6
    assert not np.array_equal(b.val.data, b.test.data[:12])
    x, _ = build_datasets({"name": "synthetic", "params": {"image_size": 24, "n_max": 20}, "imbalance_ratio": 2})\
        .train[0]
    assert x.shape == (3, 24, 24)  # the cifar crop follows the image size
    with pytest.raises(ConfigError, match="imbalance_ratio"):
        build_synthetic(imbalance_ratio=0.1)
    with pytest.raises(ConfigError, match="image_size"):
        build_synthetic(image_size=3)
    with pytest.raises(ConfigError, match="num_classes"):
        build_synthetic(num_classes=1.5)
    with pytest.raises(ConfigError, match="split"):
        SyntheticLT("holdout")
    assert "synthetic" in DATASETS


class _CountingRNG:
    """A numpy Generator that counts the draws made through it (how many calls, not values)."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)
        self.calls = 0

    def __getattr__(self, name):
        attr = getattr(self.rng, name)
        if not callable(attr):
            return attr

        def counted(*args, **kwargs):
            self.calls += 1
            return attr(*args, **kwargs)

        return counted


def test_generation_is_vectorized():
    """Rendering costs a fixed number of array operations per chunk of images, never one per image
    (the property that makes generation fast; counted, so a busy machine cannot make it flake)."""
    protos = class_prototypes(10, seed=0)

    def draws(n):
        rng = _CountingRNG(1)
        out = render_images(np.arange(n) % 10, protos, 32, rng)
        assert out.shape == (n, 32, 32, 3) and out.dtype == np.uint8
        return rng.calls, out

    one, _ = draws(1)
    full, images = draws(_CHUNK)
    three, _ = draws(3 * _CHUNK)
    assert one == full and three == 3 * full and full <= 20  # per chunk, independent of its size
    # chunking does not change the images: each chunk continues the same stream
    again, _ = draws(_CHUNK + 1)
    assert again == 2 * full
    assert np.array_equal(draws(_CHUNK + 1)[1][:_CHUNK], images)


def _ncm_accuracy(train, test):
    xtr = train.data.reshape(len(train), -1).astype(np.float32) / 255
    xte = test.data.reshape(len(test), -1).astype(np.float32) / 255
    means = np.stack([xtr[train.targets == c].mean(0) for c in range(train.num_classes)])
    dist = (means ** 2).sum(1)[None, :] - 2 * xte @ means.T
    return float((dist.argmin(1) == test.targets).mean())


@pytest.mark.parametrize("seed", [0, 1])
def test_learnable_beyond_chance_but_not_trivial(seed):
    b = build_synthetic(seed=seed)
    acc = _ncm_accuracy(b.train, b.test)
    assert 0.17 < acc < 0.6, acc  # chance is 0.1; raw-pixel templates cannot solve it
    # labels carry the signal: shuffled training labels bring the classifier back to chance
    shuffled = SyntheticLT("train", seed=seed)
    shuffled.targets = np.random.RandomState(0).permutation(shuffled.targets)
    assert _ncm_accuracy(shuffled, b.test) < 0.15


def test_small_linear_model_learns_with_balancing():
    """A class-weighted softmax classifier on 8x8-pooled pixels (numpy, < 1 s) beats chance clearly."""
    b = build_synthetic(imbalance_ratio=10, n_max=200, test_per_class=50)

    def feats(ds):
        n = len(ds)
        return ds.data.astype(np.float32).reshape(n, 8, 4, 8, 4, 3).mean((2, 4)).reshape(n, -1) / 255

    xtr, xte = feats(b.train), feats(b.test)
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-3
    xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    ytr, yte = b.train.targets, b.test.targets
    weights = (1.0 / b.class_counts)[ytr]
    weights = (weights / weights.sum()).astype(np.float32)[:, None]
    onehot = np.eye(10, dtype=np.float32)[ytr]
    w, bias = np.zeros((xtr.shape[1], 10), np.float32), np.zeros(10, np.float32)
    for _ in range(300):
        z = xtr @ w + bias
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        g = (p - onehot) * weights
        w -= 0.5 * (xtr.T @ g + 1e-3 * w)
        bias -= 0.5 * g.sum(0)
    pred = (xte @ w + bias).argmax(1)
    assert (pred == yte).mean() > 0.25
    assert len(np.unique(pred)) == 10  # every class, tail included, gets predicted
