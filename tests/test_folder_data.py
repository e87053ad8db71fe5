"""data.name=folder / listfile: layouts, splits, shot thresholds, the image cache, bad input."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from longtail.config import load_config
from longtail.data import build_datasets
from longtail.data import folder as F
from longtail.errors import ConfigError, DataError


def write_images(root: Path, counts: dict, size=(12, 12), seed=0, ext="png") -> Path:
    rng = np.random.RandomState(seed)
    for c, n in counts.items():
        d = root / c
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            a = (rng.rand(size[1], size[0], 3) * 255).astype(np.uint8)
            Image.fromarray(a).save(d / f"{c}_{i}.{ext}")
    return root


def data_cfg(root: Path, tmp_path: Path, **params) -> dict:
    params.setdefault("cache_dir", str(tmp_path / "cache"))
    return {"name": "folder", "root": str(root), "augment": "auto", "params": params}


def test_folder_classes_holdout_and_cache(tmp_path, monkeypatch):
    root = write_images(tmp_path / "imgs", {"cat": 30, "dog": 8, "emu": 3})
    (root / "cat" / "readme.txt").write_text("not an image")
    b = build_datasets(data_cfg(root, tmp_path, holdout_per_class=4))
    assert b.class_names == ["cat", "dog", "emu"] and b.num_classes == 3
    # hold-out: 4 per class, at most half of a class (emu: 3 -> 1)
    assert b.test.class_counts.tolist() == [4, 4, 1]
    assert b.class_counts.tolist() == [26, 4, 2]
    assert b.in_memory and b.train.data.shape[1:] == (32, 32, 3) and b.augment == "cifar"  # upscaled to 32
    info = b.info
    assert info["holdout"]["test_counts"] == [4, 4, 1] and info["holdout"]["seed"] == 0
    assert info["ignored_files"]["count"] == 1 and info["skipped"]["count"] == 0
    cache = Path(info["cache_file"])
    assert cache.is_file() and cache.parent == tmp_path / "cache"
    # same seed, same split; the second build reads the cache, decoding nothing
    F._MEMO.clear()
    monkeypatch.setattr(F, "_decode", lambda *a, **k: pytest.fail("decoded although cached"))
    b2 = build_datasets(data_cfg(root, tmp_path, holdout_per_class=4))
    assert np.array_equal(b2.train.data, b.train.data) and np.array_equal(b2.test.targets, b.test.targets)


def test_folder_cache_key_follows_the_files(tmp_path):
    root = write_images(tmp_path / "imgs", {"a": 4, "b": 4})
    k1 = build_datasets(data_cfg(root, tmp_path)).info["cache_file"]
    write_images(root, {"a": 5}, seed=1)  # one more image, others rewritten
    k2 = build_datasets(data_cfg(root, tmp_path)).info["cache_file"]
    assert k1 != k2


def test_folder_given_splits_and_val(tmp_path):
    root = tmp_path / "imgs"
    write_images(root / "train", {"x": 10, "y": 3})
    write_images(root / "val", {"x": 2, "y": 2}, seed=1)
    write_images(root / "test", {"x": 3, "y": 3}, seed=2)
    b = build_datasets(data_cfg(root, tmp_path))
    assert b.info["layout"] == "splits" and "holdout" not in b.info
    assert b.class_counts.tolist() == [10, 3] and len(b.val) == 4 and len(b.test) == 6


def test_folder_holdout_val_split(tmp_path):
    root = write_images(tmp_path / "imgs", {"a": 20, "b": 10})
    b = build_datasets(data_cfg(root, tmp_path, holdout_per_class=3, val_per_class=2))
    assert b.test.class_counts.tolist() == [3, 3] and b.val.class_counts.tolist() == [2, 2]
    assert b.class_counts.tolist() == [15, 5]


def test_large_images_are_read_lazily(tmp_path):
    root = write_images(tmp_path / "imgs", {"a": 4, "b": 4}, size=(80, 70))
    b = build_datasets(data_cfg(root, tmp_path, image_size=72))
    assert not b.in_memory and b.augment == "imagenet" and isinstance(b.train, F.ImageFileDataset)
    x, y = b.train[0]
    assert tuple(x.shape) == (3, 72, 72)
    cfg = load_config("folder/ce", [f"data.root={root}", f"data.params.cache_dir={tmp_path / 'c'}"])
    F.resolve_auto(cfg)
    assert cfg["model"]["backbone"] == "resnet50"


def test_small_images_resized_to_image_size(tmp_path):
    root = write_images(tmp_path / "imgs", {"a": 4, "b": 4}, size=(8, 8))
    b = build_datasets(data_cfg(root, tmp_path, image_size=16))
    assert b.in_memory and b.train.data.shape[1:3] == (16, 16)
    x, _ = b.train[0]
    assert tuple(x.shape) == (3, 16, 16)


def test_listfile_string_and_integer_labels(tmp_path):
    root = write_images(tmp_path / "imgs", {"a": 6, "b": 4})
    lines = [f"a/a_{i}.png cat" for i in range(6)] + [f"b/b_{i}.png dog" for i in range(4)]
    (tmp_path / "train.txt").write_text("\n".join(lines[:4] + lines[6:9]) + "\n")
    (tmp_path / "test.txt").write_text("\n".join(lines[4:6] + lines[9:]) + "\n")
    cfg = {"name": "listfile", "root": str(root), "train_list": str(tmp_path / "train.txt"),
           "test_list": str(tmp_path / "test.txt"), "params": {"cache_dir": str(tmp_path / "c")}}
    b = build_datasets(cfg)
    assert b.class_names == ["cat", "dog"] and b.class_counts.tolist() == [4, 3] and len(b.test) == 3
    # integer labels with gaps: classes are the distinct labels, named by class_names
    (tmp_path / "int.txt").write_text("".join(f"a/a_{i}.png {7 if i < 4 else 2}\n" for i in range(6)))
    b = build_datasets({"name": "listfile", "root": str(root), "train_list": str(tmp_path / "int.txt"),
                        "params": {"holdout_per_class": 1, "cache_dir": str(tmp_path / "c"),
                                   "class_names": [f"n{i}" for i in range(8)]}})
    assert b.class_names == ["n2", "n7"] and b.class_counts.tolist() == [1, 3]
    assert b.info["holdout"]["test_counts"] == [1, 1]


def test_listfile_test_label_absent_from_train(tmp_path):
    root = write_images(tmp_path / "imgs", {"a": 4})
    (tmp_path / "train.txt").write_text("a/a_0.png x\na/a_1.png x\n")
    (tmp_path / "test.txt").write_text("a/a_2.png x\na/a_3.png zebra\n")
    cfg = {"name": "listfile", "root": str(root), "train_list": str(tmp_path / "train.txt"),
           "test_list": str(tmp_path / "test.txt"), "params": {"cache_dir": str(tmp_path / "c")}}
    with pytest.raises(DataError, match=r"test.txt:2: label 'zebra'"):
        build_datasets(cfg)
    b = build_datasets({**cfg, "skip_bad": True})
    assert len(b.test) == 1 and b.info["skipped"]["count"] == 1


def test_empty_class_folder(tmp_path, capsys):
    root = write_images(tmp_path / "imgs", {"a": 4, "b": 4})
    (root / "empty").mkdir()
    with pytest.raises(DataError, match=r"(?s)empty class folder .*empty.*data.skip_bad=true"):
        build_datasets(data_cfg(root, tmp_path))
    b = build_datasets({**data_cfg(root, tmp_path), "skip_bad": True})
    assert b.class_names == ["a", "b"] and b.info["skipped"]["count"] == 1
    assert "skipped 1 bad item" in capsys.readouterr().err


def test_test_class_absent_from_train(tmp_path):
    root = tmp_path / "imgs"
    write_images(root / "train", {"a": 4, "b": 4})
    write_images(root / "test", {"a": 2, "b": 2, "ghost": 2})
    with pytest.raises(DataError, match=r"class 'ghost' has 2 image\(s\) in .*test/ghost but no folder in"):
        build_datasets(data_cfg(root, tmp_path))
    b = build_datasets({**data_cfg(root, tmp_path), "skip_bad": True})
    assert len(b.test) == 4 and b.info["skipped"]["count"] == 1


def test_truncated_and_unreadable_images(tmp_path):
    root = write_images(tmp_path / "imgs", {"a": 5, "b": 5}, size=(40, 40), ext="jpg")
    good = (root / "a" / "a_0.jpg").read_bytes()
    (root / "a" / "a_1.jpg").write_bytes(good[: len(good) // 2])   # truncated
    (root / "b" / "b_1.jpg").write_bytes(b"this is not a jpeg")     # unreadable
    with pytest.raises(DataError) as err:
        build_datasets(data_cfg(root, tmp_path))
    msg = str(err.value)
    assert "a_1.jpg" in msg and "b_1.jpg" in msg and "2 problem(s)" in msg
    b = build_datasets({**data_cfg(root, tmp_path), "skip_bad": True})
    assert b.info["skipped"]["count"] == 2 and len(b.train) + len(b.test) == 8


def test_mixed_modes_become_rgb(tmp_path):
    root = write_images(tmp_path / "imgs", {"a": 3, "b": 3})
    rng = np.random.RandomState(1)
    Image.fromarray((rng.rand(12, 12) * 255).astype(np.uint8), "L").save(root / "a" / "gray.png")
    Image.fromarray((rng.rand(12, 12, 4) * 255).astype(np.uint8), "RGBA").save(root / "a" / "alpha.png")
    Image.fromarray((rng.rand(12, 12, 4) * 255).astype(np.uint8), "CMYK").save(root / "b" / "cmyk.jpg")
    Image.fromarray((rng.rand(12, 12) * 60000).astype(np.uint16)).save(root / "b" / "deep.png")
    Image.fromarray((rng.rand(12, 12, 3) * 255).astype(np.uint8)).convert("P").save(root / "b" / "pal.gif")
    b = build_datasets(data_cfg(root, tmp_path))
    modes = b.info["converted_modes"]
    assert modes.get("L") == 1 and modes.get("RGBA") == 1 and modes.get("CMYK") == 1 and modes.get("P") == 1
    assert sum(v for k, v in modes.items() if k.startswith("I")) == 1
    assert b.train.data.dtype == np.uint8 and b.train.data.shape[-1] == 3


def test_bad_config(tmp_path):
    with pytest.raises(ConfigError, match="data.root is required"):
        build_datasets({"name": "folder"})
    with pytest.raises(DataError, match="not found"):
        build_datasets({"name": "folder", "root": str(tmp_path / "nope")})
    with pytest.raises(ConfigError, match="data.skip_bad is not used by dataset 'synthetic'"):
        build_datasets({"name": "synthetic", "skip_bad": True})
    root = tmp_path / "imgs"
    write_images(root / "train", {"a": 2})
    (root / "misc").mkdir()
    with pytest.raises(DataError, match="holds train/ and other folders"):
        build_datasets(data_cfg(root, tmp_path))


def test_auto_shot_thresholds():
    assert F.auto_shot_thresholds([1280, 300, 40, 5])[:2] == (100, 20)        # field rule, large sets
    many, few, rule = F.auto_shot_thresholds([150, 60, 20, 5])
    assert (many, few) == (48, 16)  # 5 * 30^(2/3), 5 * 30^(1/3) and "log-thirds" in rule
    assert F.auto_shot_thresholds([7, 7])[:2] == (7, 7)                       # balanced: all medium


def test_resolve_auto_scales_schedule(tmp_path):
    root = write_images(tmp_path / "imgs", {"a": 20, "b": 5})
    cfg = load_config("folder/ldam_drw", [f"data.root={root}", f"data.params.cache_dir={tmp_path / 'c'}"])
    F.resolve_auto(cfg)
    n = 25 - 10 - 2
    assert cfg["optim"]["epochs"] == F.auto_epochs(n) == 400
    assert cfg["loss"]["params"]["drw_epoch"] == 320 and cfg["optim"]["warmup_epochs"] == 10
    assert cfg["model"]["backbone"] == "resnet32" and cfg["optim"]["nominal_epochs"] is None
    assert cfg["data"]["shot_thresholds"] == list(F.auto_shot_thresholds([10, 3])[:2])
    assert not cfg["data"]["auto_shot_thresholds"]
    # an explicit optim.epochs is kept; the epoch-valued keys still move with it
    cfg = load_config("folder/ldam_drw", [f"data.root={root}", f"data.params.cache_dir={tmp_path / 'c'}",
                                          "optim.epochs=10"])
    F.resolve_auto(cfg)
    assert cfg["optim"]["epochs"] == 10 and cfg["loss"]["params"]["drw_epoch"] == 8
    # configs without auto values are untouched and read no data
    plain = load_config(None, [])
    before = json.dumps(plain, sort_keys=True)
    F.resolve_auto(plain)
    assert json.dumps(plain, sort_keys=True) == before


def test_train_predict_on_lazy_images_with_skip_bad(tmp_path, capsys):
    """Large-image path (DataLoader, imagenet augmentation) end to end, with a bad file skipped."""
    from longtail.engine.trainer import train
    from longtail.predict import collect_images, load_run, predict

    root = write_images(tmp_path / "imgs", {"a": 6, "b": 4}, size=(48, 40), ext="jpg")
    (root / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    common = [f"data.root={root}", f"data.params.cache_dir={tmp_path / 'c'}", "data.params.small_max=32",
              "data.params.image_size=40", "data.params.holdout_per_class=1", "model.backbone=resnet32",
              "optim.epochs=1", "data.batch_size=8", "data.num_workers=0", "tensorboard=false", "quiet=true",
              f"output_dir={tmp_path / 'runs'}"]
    with pytest.raises(DataError, match="broken.jpg"):
        train(load_config("folder/ce", common))
    run, m = train(load_config("folder/ce", common + ["data.skip_bad=true"]))
    assert "skipped 1 bad item" in capsys.readouterr().err
    assert m["data"]["skipped"]["count"] == 1 and "broken.jpg" in m["data"]["skipped"]["items"][0]
    assert not m["data"]["in_memory"] and m["data"]["preprocess"]["kind"] == "large"
    assert m["data"]["augment"] == "imagenet" and [r["name"] for r in m["per_class"]] == ["a", "b"]
    rows = predict(load_run(run), collect_images([str(root / "a")]), topk=2)
    assert len(rows) == 6 and rows[0]["top"][0]["class"] in ("a", "b")
