"""CIFAR-10/100 pickle loading, the seed-0 long-tail selection, download checks and errors."""
from __future__ import annotations

import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from longtail.data import build_datasets, long_tail_counts
from longtail.data.cifar import CIFAR10, CIFAR100, file_md5
from longtail.data.transforms import CIFAR_MEAN, CIFAR_STD
from longtail.errors import ConfigError, DataError

CIFAR10_LT_100 = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


def _raw(folder: Path, names, label_key="labels"):
    """Rows and labels read straight from the pickles, independently of longtail."""
    rows, labels = [], []
    for name in names:
        with open(folder / name, "rb") as f:
            batch = pickle.load(f, encoding="latin1")
        rows.append(np.asarray(batch["data"], dtype=np.uint8))
        labels.extend(batch[label_key])
    return np.concatenate(rows), np.asarray(labels)


def _reference_indices(labels, counts, seed=0):
    """The reference code's selection, on numpy's *global* generator."""
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        keep = []
        for c, n in enumerate(counts):
            idx = np.where(labels == c)[0]
            np.random.shuffle(idx)
            keep.append(idx[:n])
        return np.concatenate(keep)
    finally:
        np.random.set_state(state)


def _to_hwc(rows):
    return rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


TRAIN10 = [f"data_batch_{i}" for i in range(1, 6)]


# -- tiny layouts -------------------------------------------------------------------------------


def test_tiny_cifar10_full_split(tiny_cifar_root):
    folder = tiny_cifar_root / "cifar-10-batches-py"
    rows, labels = _raw(folder, TRAIN10)
    ds = CIFAR10(tiny_cifar_root, train=True)
    assert len(ds) == 600 and ds.num_classes == 10
    assert ds.class_counts.tolist() == [60] * 10 and ds.class_counts.dtype == np.int64
    assert ds.targets.dtype == np.int64 and ds.data.dtype == np.uint8 and ds.data.shape == (600, 32, 32, 3)
    np.testing.assert_array_equal(ds.targets, labels)
    np.testing.assert_array_equal(ds.data, _to_hwc(rows))
    assert ds.data.flags["C_CONTIGUOUS"]
    assert ds.classes[0] == "airplane" and ds.classes[9] == "truck"
    img, label = ds[7]
    assert isinstance(img, Image.Image) and img.mode == "RGB" and type(label) is int and label == labels[7]
    # channel-planar rows: R plane first
    assert np.asarray(img)[0, 1, 0] == rows[7][1] and np.asarray(img)[0, 0, 2] == rows[7][2048]
    test = CIFAR10(tiny_cifar_root, train=False, imbalance_ratio=100)  # the test split is never subsampled
    assert len(test) == 100 and test.class_counts.tolist() == [10] * 10


def test_tiny_cifar10_long_tail_selection_matches_reference(tiny_cifar_root):
    folder = tiny_cifar_root / "cifar-10-batches-py"
    rows, labels = _raw(folder, TRAIN10)
    before = np.random.get_state()[1].copy()
    ds = CIFAR10(tiny_cifar_root, train=True, imbalance_ratio=10)
    np.testing.assert_array_equal(np.random.get_state()[1], before)  # the global generator is untouched
    counts = long_tail_counts(60, 10, 10)
    assert ds.class_counts.tolist() == counts and len(ds) == sum(counts)
    expected = _reference_indices(labels, counts)
    np.testing.assert_array_equal(ds.indices, expected)
    np.testing.assert_array_equal(ds.data, _to_hwc(rows[expected]))
    np.testing.assert_array_equal(ds.targets, np.repeat(np.arange(10), counts))
    # another seed picks other images; the step profile keeps halves
    other = CIFAR10(tiny_cifar_root, imbalance_ratio=10, seed=1)
    assert not np.array_equal(other.indices, ds.indices)
    step = CIFAR10(tiny_cifar_root, imbalance_ratio=10, profile="step")
    assert step.class_counts.tolist() == [60] * 5 + [6] * 5
    np.testing.assert_array_equal(step.indices, _reference_indices(labels, [60] * 5 + [6] * 5))


def test_tiny_cifar100(tiny_cifar_root):
    folder = tiny_cifar_root / "cifar-100-python"
    rows, labels = _raw(folder, ["train"], "fine_labels")
    full = CIFAR100(tiny_cifar_root)
    assert len(full) == 600 and full.num_classes == 100 and full.class_counts.tolist() == [6] * 100
    np.testing.assert_array_equal(full.targets, labels)
    assert full.classes[3] == "fine_3"
    lt = CIFAR100(tiny_cifar_root, imbalance_ratio=5)
    counts = long_tail_counts(6, 100, 5)
    assert lt.class_counts.tolist() == counts and counts[-1] == 1
    expected = _reference_indices(labels, counts)
    np.testing.assert_array_equal(lt.indices, expected)
    np.testing.assert_array_equal(lt.data, _to_hwc(rows[expected]))
    test = CIFAR100(tiny_cifar_root, train=False)
    assert len(test) == 200 and test.class_counts.tolist() == [2] * 100


def test_build_datasets_cifar(tiny_cifar_root):
    cfg = {"name": "cifar10_lt", "root": str(tiny_cifar_root), "imbalance_ratio": 10, "profile": "exp",
           "download": False, "train_list": None, "val_list": None, "test_list": None, "params": {},
           "augment": "auto"}
    bundle = build_datasets(cfg)
    assert bundle.augment == "cifar" and bundle.in_memory and bundle.val is None
    assert bundle.mean == CIFAR_MEAN and bundle.std == CIFAR_STD
    assert bundle.num_classes == 10 and bundle.class_counts.tolist() == long_tail_counts(60, 10, 10)
    assert bundle.class_names[1] == "automobile"
    x, y = bundle.test[0]
    raw = torch.from_numpy(bundle.test.data[0]).permute(2, 0, 1).float() / 255
    expect = (raw - torch.tensor(CIFAR_MEAN).view(3, 1, 1)) / torch.tensor(CIFAR_STD).view(3, 1, 1)
    torch.testing.assert_close(x, expect)
    xt, _ = bundle.train[0]
    assert xt.shape == (3, 32, 32)
    b100 = build_datasets(dict(cfg, name="cifar100_lt", imbalance_ratio=2, params={"n_max": 4}))
    assert b100.num_classes == 100 and b100.class_counts.tolist() == long_tail_counts(4, 100, 2)
    with pytest.raises(ConfigError, match="data.params.bogus"):
        build_datasets(dict(cfg, params={"bogus": 3}))
    with pytest.raises(ConfigError, match="download"):
        build_datasets(dict(cfg, download="yes"))
    with pytest.raises(ConfigError, match="seed"):
        build_datasets(dict(cfg, params={"seed": "zero"}))


# -- errors -------------------------------------------------------------------------------------


def test_missing_files_error_names_path_and_remedy(tmp_path, monkeypatch):
    with pytest.raises(DataError) as err:
        CIFAR10(tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "cifar-10-batches-py" / "data_batch_1") in msg
    assert "download: true" in msg and "cifar10_from_jpeg.py" in msg
    with pytest.raises(DataError, match="download: true") as err:
        CIFAR100(tmp_path, train=False)
    assert str(tmp_path / "cifar-100-python" / "test") in str(err.value)
    # a missing meta file is named too
    partial = tmp_path / "p"
    (partial / "cifar-100-python").mkdir(parents=True)
    for name in ("train", "test"):
        (partial / "cifar-100-python" / name).write_bytes(pickle.dumps({"data": np.zeros((1, 3072), np.uint8),
                                                                        "fine_labels": [0]}))
    with pytest.raises(DataError, match="meta"):
        CIFAR100(partial)
    # default root of the builder is ./data
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="data/cifar-10-batches-py"):
        build_datasets({"name": "cifar10_lt"})


def _copy(root: Path, dst: Path) -> Path:
    shutil.copytree(root, dst)
    return dst


@pytest.mark.parametrize("damage", ["garbage", "truncated", "not_a_dict", "wrong_shape"])
def test_corrupt_pickle_names_file(tiny_cifar_root, tmp_path, damage):
    root = _copy(tiny_cifar_root, tmp_path / "c")
    path = root / "cifar-10-batches-py" / "data_batch_3"
    if damage == "garbage":
        path.write_bytes(b"this is not a pickle at all")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:5000])
    elif damage == "not_a_dict":
        path.write_bytes(pickle.dumps([1, 2, 3]))
    else:
        path.write_bytes(pickle.dumps({"data": np.zeros((4, 100), np.uint8), "labels": [0, 1, 2, 3]}))
    with pytest.raises(DataError, match="corrupt") as err:
        CIFAR10(root)
    assert str(path) in str(err.value)


def test_class_too_small_for_n_max(tiny_cifar_root):
    with pytest.raises(DataError, match="class 0 has 60 training images"):
        CIFAR10(tiny_cifar_root, imbalance_ratio=10, n_max=100)
    with pytest.raises(ConfigError, match="imbalance_ratio"):
        CIFAR10(tiny_cifar_root, imbalance_ratio=0.5)


def _no_network(*args, **kwargs):
    raise AssertionError("tests must not download")


def test_download_rejects_wrong_checksum(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tvu

    monkeypatch.setattr(tvu, "download_url", _no_network)
    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(b"\x1f\x8b not the real archive")
    with pytest.raises(DataError) as err:
        CIFAR10(tmp_path, download=True)
    msg = str(err.value)
    assert str(archive) in msg and "MD5" in msg and CIFAR10.archive_md5 in msg and file_md5(archive) in msg
    assert not (tmp_path / "cifar-10-batches-py").exists()  # nothing extracted


def _tarball(src_root: Path, folder: str, dst: Path) -> Path:
    with tarfile.open(dst, "w:gz") as tar:
        tar.add(src_root / folder, arcname=folder)
    return dst


def test_download_verifies_then_extracts(tiny_cifar_root, tmp_path, monkeypatch):
    import torchvision.datasets.utils as tvu

    built = _tarball(tiny_cifar_root, "cifar-100-python", tmp_path / "built.tar.gz")
    calls = []

    def fake_download(url, root, filename=None, md5=None, **kwargs):
        calls.append(url)
        shutil.copy(built, Path(root) / filename)

    monkeypatch.setattr(tvu, "download_url", fake_download)
    monkeypatch.setattr(CIFAR100, "archive_md5", file_md5(built))
    root = tmp_path / "dl"
    ds = CIFAR100(root, download=True)
    assert calls == [CIFAR100.url]
    assert len(ds) == 600 and (root / "cifar-100-python" / "meta").is_file()
    # files present: no second download
    CIFAR100(root, download=True)
    assert len(calls) == 1


def test_download_failure_is_data_error(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tvu

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(tvu, "download_url", offline)
    with pytest.raises(DataError, match="network unreachable") as err:
        CIFAR10(tmp_path, download=True)
    assert CIFAR10.url in str(err.value)


# -- real CIFAR-10 ------------------------------------------------------------------------------


@pytest.mark.realdata
def test_real_cifar10_lt_rho100(cifar10_root):
    folder = cifar10_root / "cifar-10-batches-py"
    rows, labels = _raw(folder, TRAIN10)
    assert len(labels) == 50000
    ds = CIFAR10(cifar10_root, train=True, imbalance_ratio=100)
    assert len(ds) == 12406
    assert ds.class_counts.tolist() == CIFAR10_LT_100
    expected = _reference_indices(labels, CIFAR10_LT_100)
    np.testing.assert_array_equal(ds.indices, expected)
    np.testing.assert_array_equal(ds.targets, labels[expected])
    np.testing.assert_array_equal(ds.data, _to_hwc(rows[expected]))
    # the first kept image of each class, checked through __getitem__
    starts = np.cumsum([0] + CIFAR10_LT_100[:-1])
    for c, s in enumerate(starts):
        img, label = ds[int(s)]
        assert label == c
        np.testing.assert_array_equal(np.asarray(img), rows[expected[s]].reshape(3, 32, 32).transpose(1, 2, 0))

    test = CIFAR10(cifar10_root, train=False)
    test_rows, test_labels = _raw(folder, ["test_batch"])
    assert len(test) == 10000 and test.class_counts.tolist() == [1000] * 10
    np.testing.assert_array_equal(test.targets, test_labels)
    np.testing.assert_array_equal(test.data, _to_hwc(test_rows))
