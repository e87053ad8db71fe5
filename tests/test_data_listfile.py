"""List-file datasets on small real JPEGs, their error cases, builders and the field's real lists."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from longtail.data import build_datasets
from longtail.data.listfile import ListFileDataset, read_list_file
from longtail.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from longtail.errors import ConfigError, DataError

CLASS_DIRS = ["cat", "dog", "newt"]
COUNTS = [6, 3, 1]


def _write_jpeg(path: Path, seed: int, size=(20, 16), mode="RGB") -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    arr = rng.randint(0, 256, shape, dtype=np.uint8)
    Image.fromarray(arr, mode).save(path, quality=95)
    return arr


def _write_list(path: Path, lines, gz=False) -> Path:
    text = "".join(f"{line}\n" for line in lines)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture()
def image_tree(tmp_path):
    """root/train/<class>/<i>.jpg with COUNTS images, and root/val/<class>/0.jpg, 1.jpg for every class."""
    root = tmp_path / "images"
    train, val = [], []
    for c, (name, n) in enumerate(zip(CLASS_DIRS, COUNTS)):
        for i in range(n):
            rel = f"train/{name}/{i}.jpg"
            _write_jpeg(root / rel, seed=100 * c + i)
            train.append(f"{rel} {c}")
        for i in range(2):
            rel = f"val/{name}/{i}.jpg"
            _write_jpeg(root / rel, seed=1000 + 10 * c + i)
            val.append(f"{rel} {c}")
    return root, train, val


def test_plain_list(image_tree, tmp_path):
    root, train, _ = image_tree
    lst = _write_list(tmp_path / "train.txt", train)
    ds = ListFileDataset(lst, root)
    assert len(ds) == 10 and ds.num_classes == 3
    assert ds.class_counts.tolist() == COUNTS and ds.class_counts.dtype == np.int64
    assert ds.targets.dtype == np.int64 and ds.targets.tolist() == [0] * 6 + [1] * 3 + [2]
    assert ds.classes == CLASS_DIRS
    img, label = ds[7]
    assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size == (20, 16)
    assert type(label) is int and label == 1
    ds.transform = lambda im: torch.from_numpy(np.asarray(im).copy())
    x, _ = ds[0]
    assert x.shape == (16, 20, 3)


def test_gzip_list_equals_plain(image_tree, tmp_path):
    root, train, _ = image_tree
    plain = ListFileDataset(_write_list(tmp_path / "a.txt", train), root)
    gz = ListFileDataset(_write_list(tmp_path / "a.txt.gz", train, gz=True), root)
    assert gz.paths == plain.paths
    np.testing.assert_array_equal(gz.targets, plain.targets)
    np.testing.assert_array_equal(np.asarray(gz[3][0]), np.asarray(plain[3][0]))


def test_blank_lines_spaces_and_grayscale(tmp_path):
    root = tmp_path / "r"
    _write_jpeg(root / "a dir/with space.jpg", 1)
    _write_jpeg(root / "gray.jpg", 2, mode="L")
    lst = _write_list(tmp_path / "l.txt", ["", "a dir/with space.jpg 1", "  ", "gray.jpg\t0", ""])
    ds = ListFileDataset(lst, root)
    assert ds.paths == ["a dir/with space.jpg", "gray.jpg"]
    assert ds.line_numbers.tolist() == [2, 4]
    img, label = ds[1]
    assert img.mode == "RGB" and label == 0


def test_missing_and_corrupt_images(image_tree, tmp_path):
    root, train, _ = image_tree
    (root / "train/dog/1.jpg").unlink()                              # line 8
    (root / "train/cat/2.jpg").write_bytes(b"definitely not a jpeg")  # line 3
    good = (root / "train/cat/4.jpg").read_bytes()
    (root / "train/cat/4.jpg").write_bytes(good[: len(good) // 2])     # truncated, line 5
    lst = _write_list(tmp_path / "train.txt", train)
    ds = ListFileDataset(lst, root)  # construction does not open images
    with pytest.raises(DataError) as err:
        ds[7]
    assert str(root / "train/dog/1.jpg") in str(err.value) and "train.txt:8" in str(err.value)
    with pytest.raises(DataError) as err:
        ds[2]
    assert str(root / "train/cat/2.jpg") in str(err.value) and "train.txt:3" in str(err.value)
    with pytest.raises(DataError) as err:
        ds[4]
    assert str(root / "train/cat/4.jpg") in str(err.value) and "train.txt:5" in str(err.value)
    ds[0]  # the others still load


@pytest.mark.parametrize("bad, match", [
    ("train/cat/0.jpg", r"train.txt:3: expected 'relative/path label'"),
    ("train/cat/0.jpg one", r"train.txt:3: label 'one' is not an integer"),
    ("train/cat/0.jpg 1.5", r"train.txt:3: label '1.5'"),
])
def test_bad_line_names_line_number(image_tree, tmp_path, bad, match):
    root, train, _ = image_tree
    lst = _write_list(tmp_path / "train.txt", train[:2] + [bad] + train[2:])
    with pytest.raises(DataError, match=match):
        ListFileDataset(lst, root)
    with pytest.raises(DataError, match=match):
        read_list_file(_write_list(tmp_path / "train.txt", train[:2] + [bad]))


def test_label_out_of_range_and_negative(image_tree, tmp_path):
    root, train, _ = image_tree
    lst = _write_list(tmp_path / "train.txt", train[:4] + ["train/cat/0.jpg 3"] + train[4:])
    with pytest.raises(DataError, match=r"train.txt:5: label 3 outside \[0, 3\)"):
        ListFileDataset(lst, root, num_classes=3)
    assert ListFileDataset(lst, root).num_classes == 4  # inferred from the labels when not given
    neg = _write_list(tmp_path / "neg.txt", train[:1] + ["train/cat/0.jpg -1"])
    with pytest.raises(DataError, match=r"neg.txt:2: label -1 is negative"):
        ListFileDataset(neg, root)


def test_empty_training_class(image_tree, tmp_path):
    root, train, _ = image_tree
    lst = _write_list(tmp_path / "train.txt", train)
    ds = ListFileDataset(lst, root, num_classes=5)  # fine for a non-training list
    assert ds.class_counts.tolist() == COUNTS + [0, 0]
    with pytest.raises(DataError, match="class 3 has no images in the training list"):
        ListFileDataset(lst, root, num_classes=5, require_all_classes=True)
    no_dog = _write_list(tmp_path / "nodog.txt", [t for t in train if "/dog/" not in t])
    with pytest.raises(DataError, match="class 1 has no images"):
        ListFileDataset(no_dog, root, num_classes=3, require_all_classes=True)


def test_missing_list_root_and_empty_list(image_tree, tmp_path):
    root, train, _ = image_tree
    with pytest.raises(DataError, match="list file not found: .*nope.txt"):
        ListFileDataset(tmp_path / "nope.txt", root)
    lst = _write_list(tmp_path / "train.txt", train)
    with pytest.raises(DataError, match="image root not found: .*no_root"):
        ListFileDataset(lst, tmp_path / "no_root")
    with pytest.raises(DataError, match="no samples"):
        ListFileDataset(_write_list(tmp_path / "empty.txt", ["", ""]), root)
    bad_gz = tmp_path / "bad.txt.gz"
    bad_gz.write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(DataError, match="bad.txt.gz"):
        ListFileDataset(bad_gz, root)


def test_remap_labels(image_tree, tmp_path):
    root, train, val = image_tree
    shift = {0: 5, 1: 12, 2: 9}

    def relabel(lines):
        return [f"{p} {shift[int(lab)]}" for p, lab in (line.rsplit(" ", 1) for line in lines)]

    tr = ListFileDataset(_write_list(tmp_path / "t.txt", relabel(train)), root, remap_labels=True)
    assert tr.label_map == {5: 0, 9: 1, 12: 2}
    assert tr.num_classes == 3 and tr.class_counts.tolist() == [6, 1, 3]
    va = ListFileDataset(_write_list(tmp_path / "v.txt", relabel(val)), root, remap_labels=tr.label_map)
    assert va.targets.tolist() == [0, 0, 2, 2, 1, 1]
    stray = _write_list(tmp_path / "s.txt", relabel(val) + ["val/cat/0.jpg 7"])
    with pytest.raises(DataError, match=r"s.txt:7: label 7 does not occur"):
        ListFileDataset(stray, root, remap_labels=tr.label_map)
    # without remapping the labels stay as they are
    assert ListFileDataset(tmp_path / "t.txt", root).num_classes == 13


# -- builders -----------------------------------------------------------------------------------


def _cfg(name, root, **over):
    cfg = {"name": name, "root": str(root), "imbalance_ratio": 100, "profile": "exp", "download": False,
           "train_list": None, "val_list": None, "test_list": None, "params": {}, "augment": "auto"}
    cfg.update(over)
    return cfg


def test_builder_default_list_names_and_transforms(image_tree):
    root, train, val = image_tree
    _write_list(root / "Places_LT_train.txt.gz", train, gz=True)
    _write_list(root / "Places_LT_val.txt", val[:3])
    _write_list(root / "Places_LT_test.txt", val)
    bundle = build_datasets(_cfg("places_lt", root, params={"remap_labels": True}))
    assert bundle.augment == "imagenet" and not bundle.in_memory
    assert bundle.mean == IMAGENET_MEAN and bundle.std == IMAGENET_STD
    assert bundle.num_classes == 3 and bundle.class_counts.tolist() == COUNTS
    assert bundle.class_names == CLASS_DIRS
    assert len(bundle.val) == 3 and len(bundle.test) == 6
    x, y = bundle.train[0]
    assert x.shape == (3, 224, 224) and y == 0
    x, y = bundle.test[5]
    assert x.shape == (3, 224, 224) and y == 2
    loader = torch.utils.data.DataLoader(bundle.test, batch_size=4)
    xb, yb = next(iter(loader))
    assert xb.shape == (4, 3, 224, 224) and yb.dtype == torch.int64


def test_builder_fixed_class_count_requires_every_class(image_tree):
    root, train, val = image_tree
    _write_list(root / "ImageNet_LT_train.txt", train)
    _write_list(root / "ImageNet_LT_test.txt", val)
    with pytest.raises(DataError, match="class 3 has no images in the training list"):
        build_datasets(_cfg("imagenet_lt", root))


def test_builder_explicit_lists_and_inat_val_as_test(image_tree, tmp_path):
    root, train, val = image_tree
    _write_list(tmp_path / "my_train.txt", train)
    _write_list(root / "iNaturalist18_val.txt.gz", val, gz=True)
    bundle = build_datasets(_cfg("inat18", root, train_list=str(tmp_path / "my_train.txt"),
                                 params={"remap_labels": True}))
    assert bundle.val is None and len(bundle.test) == 6
    assert Path(bundle.test.list_file).name == "iNaturalist18_val.txt.gz"
    # a relative list path is also looked up inside root
    _write_list(root / "rel_train.txt", train)
    b2 = build_datasets(_cfg("inat18", root, train_list="rel_train.txt", params={"remap_labels": True}))
    assert len(b2.train) == 10


def test_builder_errors(image_tree, tmp_path):
    root, train, val = image_tree
    with pytest.raises(DataError, match="ImageNet_LT_train.txt.gz"):
        build_datasets(_cfg("imagenet_lt", root))
    with pytest.raises(ConfigError, match="data.root"):
        build_datasets(dict(_cfg("imagenet_lt", root), root=None))
    with pytest.raises(DataError, match="data.root not found"):
        build_datasets(_cfg("imagenet_lt", tmp_path / "nowhere"))
    with pytest.raises(DataError, match="data.train_list not found: .*missing.txt"):
        build_datasets(_cfg("places_lt", root, train_list="missing.txt"))
    with pytest.raises(ConfigError, match="download"):
        build_datasets(_cfg("places_lt", root, download=True))
    with pytest.raises(ConfigError, match="remap_labels"):
        build_datasets(_cfg("places_lt", root, params={"remap_labels": "yes"}))
    with pytest.raises(ConfigError, match="data.params.n_max"):
        build_datasets(_cfg("places_lt", root, params={"n_max": 3}))


# -- the field's real list files ----------------------------------------------------------------


@pytest.mark.realdata
def test_real_lt_split_lists_parse(shared_data, tmp_path):
    splits = shared_data / "lt_splits"
    places = ListFileDataset(splits / "Places_LT_train.txt.gz", tmp_path, num_classes=365, require_all_classes=True)
    assert len(places) == 62500 and places.num_classes == 365
    assert places.class_counts.min() == 5 and places.class_counts.max() == 4980
    assert places.classes[0] == "airfield"
    val = ListFileDataset(splits / "ImageNet_LT_val.txt.gz", tmp_path, num_classes=1000)
    assert len(val) == 20000 and (val.class_counts == 20).all()
    assert val.paths[0].startswith("train/n01440764/")
    inat = ListFileDataset(splits / "iNaturalist18_val.txt.gz", tmp_path, num_classes=8142)
    assert len(inat) == 24426 and (inat.class_counts == 3).all()
    prefix = ListFileDataset(splits / "ImageNet_LT_train_prefix80.txt.gz", tmp_path, num_classes=1000,
                             require_all_classes=True)
    totals = np.loadtxt(splits / "ImageNet_LT_train_class_counts.txt", dtype=np.int64)
    assert totals.shape == (1000, 2) and totals[:, 1].sum() == 115846
    assert len(prefix) == 93061
    # the prefix holds 80% of each class (rounded up) of the real totals
    np.testing.assert_array_equal(prefix.class_counts, (totals[:, 1] * 4 + 4) // 5)
