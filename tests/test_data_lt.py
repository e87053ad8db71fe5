"""Long-tail count profiles, shot groups, DataBundle, build_datasets and transforms."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from longtail.data import DATASETS, DataBundle, build_datasets, build_transforms, long_tail_counts, shot_groups
from longtail.data.lt import ArrayImageDataset
from longtail.data.transforms import CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN
from longtail.errors import ConfigError, DataError

CIFAR10_LT_100 = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


# -- long_tail_counts ---------------------------------------------------------------------------


def test_exp_profile_cifar10_rho100_exact():
    counts = long_tail_counts(5000, 10, 100)
    assert counts == CIFAR10_LT_100
    assert sum(counts) == 12406
    assert all(isinstance(c, int) for c in counts)


def test_exp_profile_other_ratios_and_cifar100():
    assert long_tail_counts(5000, 10, 50) == [5000, 3237, 2096, 1357, 878, 568, 368, 238, 154, 100]
    assert long_tail_counts(5000, 10, 200)[-1] == 25
    c100 = long_tail_counts(500, 100, 100)
    assert len(c100) == 100 and c100[0] == 500 and c100[-1] == 5 and sum(c100) == 10847
    assert all(a >= b for a, b in zip(c100, c100[1:]))
    assert long_tail_counts(500, 100, 50)[-1] == 10 and sum(long_tail_counts(500, 100, 50)) == 12608


def test_exp_profile_rho1_is_balanced_and_single_class():
    assert long_tail_counts(7, 4, 1) == [7, 7, 7, 7]
    assert long_tail_counts(9, 1, 10) == [9]


def test_step_profile():
    assert long_tail_counts(5000, 10, 100, "step") == [5000] * 5 + [50] * 5
    assert long_tail_counts(500, 100, 10, "step") == [500] * 50 + [50] * 50
    # odd C: the first C // 2 classes are the head
    assert long_tail_counts(100, 5, 10, "step") == [100, 100, 10, 10, 10]


@pytest.mark.parametrize("rho", [0.5, 0, -3])
def test_rho_below_one_is_config_error(rho):
    with pytest.raises(ConfigError, match="imbalance_ratio"):
        long_tail_counts(5000, 10, rho)


def test_bad_profile_and_parameters():
    with pytest.raises(ConfigError, match="profile"):
        long_tail_counts(5000, 10, 100, "linear")
    with pytest.raises(ConfigError, match="n_max"):
        long_tail_counts(0, 10, 100)
    with pytest.raises(ConfigError, match="num_classes"):
        long_tail_counts(10, 0, 100)
    with pytest.raises(ConfigError, match="imbalance_ratio"):
        long_tail_counts(10, 10, "100")
    with pytest.raises(ConfigError, match="without images"):
        long_tail_counts(50, 10, 100)  # tail count int(0.5) == 0


# -- shot_groups --------------------------------------------------------------------------------


def test_shot_groups_boundaries():
    counts = np.array([500, 101, 100, 50, 20, 19, 1])
    g = shot_groups(counts)
    assert set(g) == {"many", "medium", "few"}
    assert g["many"].tolist() == [True, True, False, False, False, False, False]
    assert g["medium"].tolist() == [False, False, True, True, True, False, False]  # 100 and 20: medium
    assert g["few"].tolist() == [False, False, False, False, False, True, True]
    assert all(m.dtype == bool for m in g.values())
    total = g["many"].astype(int) + g["medium"].astype(int) + g["few"].astype(int)
    assert (total == 1).all()


def test_shot_groups_custom_thresholds_and_cifar_lt():
    g = shot_groups([10, 5, 3, 1], many=5, few=3)
    assert g["many"].tolist() == [True, False, False, False]
    assert g["medium"].tolist() == [False, True, True, False]
    assert g["few"].tolist() == [False, False, False, True]
    g = shot_groups(long_tail_counts(500, 100, 100))
    assert (g["many"].sum(), g["medium"].sum(), g["few"].sum()) == (35, 35, 30)
    with pytest.raises(ConfigError):
        shot_groups([1, 2], many=10, few=20)


# -- DataBundle ---------------------------------------------------------------------------------


def _array_ds(n_per_class=(5, 3, 1), size=8):
    targets = np.repeat(np.arange(len(n_per_class)), n_per_class)
    data = np.random.RandomState(0).randint(0, 256, (len(targets), size, size, 3), dtype=np.uint8)
    return ArrayImageDataset(data, targets, num_classes=len(n_per_class))


def test_array_dataset_and_bundle_defaults():
    train, test = _array_ds(), _array_ds((2, 2, 2))
    assert train.class_counts.tolist() == [5, 3, 1] and train.class_counts.dtype == np.int64
    assert train.targets.dtype == np.int64
    img, label = train[5]
    assert isinstance(img, Image.Image) and img.size == (8, 8) and type(label) is int and label == 1
    np.testing.assert_array_equal(np.asarray(img), train.data[5])
    bundle = DataBundle(train=train, test=test)
    assert bundle.num_classes == 3 and bundle.val is None
    assert bundle.class_counts.tolist() == [5, 3, 1]
    assert bundle.class_names == ["0", "1", "2"]
    assert bundle.in_memory is True
    assert list(bundle.splits()) == ["train", "test"]
    with pytest.raises(DataError):
        ArrayImageDataset(np.zeros((2, 4, 4, 3), np.float32), [0, 1])
    with pytest.raises(DataError):
        ArrayImageDataset(np.zeros((2, 4, 4, 3), np.uint8), [0, 3], num_classes=3)


# -- build_datasets -----------------------------------------------------------------------------


def _cfg(**over):
    cfg = {"name": "synthetic", "root": None, "imbalance_ratio": 100, "profile": "exp", "download": False,
           "train_list": None, "val_list": None, "test_list": None,
           "params": {"n_max": 100, "test_per_class": 5}, "batch_size": 128, "augment": "auto"}
    cfg.update(over)
    return cfg


def test_registered_names():
    assert set(DATASETS.names()) >= {"synthetic", "cifar10_lt", "cifar100_lt", "imagenet_lt", "places_lt",
                                     "inat18"}


def test_build_datasets_synthetic_with_transforms():
    bundle = build_datasets(_cfg(imbalance_ratio=10))
    assert bundle.augment == "cifar" and bundle.in_memory
    assert bundle.class_counts.tolist() == long_tail_counts(100, 10, 10)
    assert len(bundle.test) == 50 and bundle.val is None
    x, y = bundle.train[0]
    assert isinstance(x, torch.Tensor) and x.shape == (3, 32, 32) and x.dtype == torch.float32
    xt, _ = bundle.test[0]
    # the test transform is deterministic: ToTensor + Normalize with the bundle's statistics
    raw = torch.from_numpy(bundle.test.data[0]).permute(2, 0, 1).float() / 255
    expect = (raw - torch.tensor(bundle.mean).view(3, 1, 1)) / torch.tensor(bundle.std).view(3, 1, 1)
    torch.testing.assert_close(xt, expect)


def test_build_datasets_augment_override_and_errors():
    bundle = build_datasets(_cfg(augment="none"))
    assert bundle.augment == "none"
    a, _ = bundle.train[3]
    b, _ = bundle.train[3]
    torch.testing.assert_close(a, b)  # no random augmentation
    with pytest.raises(ConfigError, match="augment"):
        build_datasets(_cfg(augment="fancy"))
    with pytest.raises(ConfigError, match="bogus"):
        build_datasets(_cfg(params={"bogus": 1}))
    with pytest.raises(ConfigError, match="cifar11"):
        build_datasets(_cfg(name="cifar11"))
    with pytest.raises(ConfigError, match="data.name"):
        build_datasets(_cfg(name=None))
    with pytest.raises(ConfigError, match="train_list"):
        build_datasets(_cfg(train_list="x.txt"))
    with pytest.raises(ConfigError, match="imbalance_ratio"):
        build_datasets(_cfg(imbalance_ratio=0.5))
    with pytest.raises(ConfigError, match="params"):
        build_datasets(_cfg(params=[1, 2]))
    with pytest.raises(ConfigError, match="data.params.root"):
        build_datasets(_cfg(params={"root": "x"}))


# -- transforms ---------------------------------------------------------------------------------


def test_cifar_transforms():
    img = Image.fromarray(np.full((32, 32, 3), 255, np.uint8))
    test_tf = build_transforms("cifar", False)
    out = test_tf(img)
    expect = (1 - torch.tensor(CIFAR_MEAN)) / torch.tensor(CIFAR_STD)
    torch.testing.assert_close(out[:, 5, 7], expect)
    train_tf = build_transforms("cifar", True)
    torch.manual_seed(0)
    zero_px = (-torch.tensor(CIFAR_MEAN) / torch.tensor(CIFAR_STD)).view(3, 1, 1)
    saw_padding = False
    for _ in range(20):
        out = train_tf(img)
        assert out.shape == (3, 32, 32)
        # padding is zero fill: the padded border becomes the normalized value of black
        saw_padding |= bool(torch.isclose(out, zero_px.expand_as(out), atol=1e-5).all(0).any())
    assert saw_padding


def test_imagenet_and_none_transforms():
    img = Image.fromarray(np.random.RandomState(0).randint(0, 256, (300, 400, 3), dtype=np.uint8))
    assert build_transforms("imagenet", True)(img).shape == (3, 224, 224)
    test_tf = build_transforms("imagenet", False)
    assert test_tf(img).shape == (3, 224, 224)
    names = [type(t).__name__ for t in test_tf.transforms]
    assert names == ["Resize", "CenterCrop", "ToTensor", "Normalize"]
    assert test_tf.transforms[0].size == 256
    assert tuple(test_tf.transforms[-1].mean) == IMAGENET_MEAN
    train_names = [type(t).__name__ for t in build_transforms("imagenet", True).transforms]
    assert train_names == ["RandomResizedCrop", "RandomHorizontalFlip", "ToTensor", "Normalize"]
    small = Image.fromarray(np.zeros((10, 12, 3), np.uint8))
    out = build_transforms("none", True, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))(small)
    assert out.shape == (3, 10, 12) and torch.allclose(out, torch.tensor(-1.0))
    with pytest.raises(ConfigError, match="augment"):
        build_transforms("autoaugment", True)
    with pytest.raises(ConfigError, match="std"):
        build_transforms("none", True, mean=(0, 0, 0), std=(1, 0, 1))
