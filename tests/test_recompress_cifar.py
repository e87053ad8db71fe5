"""``benchmarks/recompress_cifar.py``: the re-encoded copy keeps everything but the pixels."""
from __future__ import annotations

import importlib.util
import io
import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
N = 6  # images per batch file


def _load():
    spec = importlib.util.spec_from_file_location("recompress_cifar", REPO / "benchmarks" / "recompress_cifar.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _smooth_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    """Channel-planar CIFAR rows of smooth images (gradients plus a little noise), as photos are."""
    y, x = np.mgrid[0:32, 0:32]
    imgs = []
    for _ in range(n):
        a, b, c = rng.uniform(-3, 3, size=3)
        base = np.stack([a * x + b * y, b * x - c * y, c * x + a * y]) + 128
        imgs.append(np.clip(base + rng.normal(0, 2, size=base.shape), 0, 255).astype(np.uint8))
    return np.stack(imgs).reshape(n, -1)


def _write_copy(root: Path, bytes_keys: bool = False) -> Path:
    """A tiny CIFAR-10 folder: 5 train batches, the test batch, the meta file (and a README)."""
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i, name in enumerate([f"data_batch_{b}" for b in range(1, 6)] + ["test_batch"]):
        batch = {"batch_label": name, "labels": [(i + j) % 10 for j in range(N)],
                 "data": _smooth_rows(rng, N), "filenames": [f"{name}_{j}.png" for j in range(N)]}
        if bytes_keys:  # the original release's python-2 pickles
            batch = {k.encode(): v for k, v in batch.items()}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}, protocol=2))
    (folder / "readme.html").write_text("not a pickle\n")
    return folder


def _read(path: Path) -> dict:
    with open(path, "rb") as f:
        obj = pickle.load(f, encoding="latin1")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


@pytest.mark.parametrize("bytes_keys", [False, True])
def test_recompress_keeps_labels_order_and_files_and_reencodes_each_image(tmp_path, bytes_keys):
    mod = _load()
    src = _write_copy(tmp_path / "src", bytes_keys)
    assert mod.main([str(tmp_path / "src"), str(tmp_path / "dst"), "--quality", "40"]) == 0
    dst = tmp_path / "dst" / "cifar-10-batches-py"
    assert (dst / "batches.meta").read_bytes() == (src / "batches.meta").read_bytes()
    assert (dst / "readme.html").read_bytes() == (src / "readme.html").read_bytes()
    record = json.loads((tmp_path / "dst" / "recompress.json").read_text())
    assert record["quality"] == 40 and record["subsampling"] == "4:2:0"
    assert sorted(record["files"]) == sorted([f"data_batch_{b}" for b in range(1, 6)] + ["test_batch"])
    for name, info in record["files"].items():
        old, new = _read(src / name), _read(dst / name)
        assert {k: v for k, v in new.items() if k != "data"} == {k: v for k, v in old.items() if k != "data"}
        assert new["data"].dtype == np.uint8 and new["data"].shape == old["data"].shape == (N, 3072)
        # each image is Pillow's JPEG round trip at quality 40, 4:2:0, computed here independently
        for row_old, row_new in zip(old["data"], new["data"]):
            buf = io.BytesIO()
            Image.fromarray(row_old.reshape(3, 32, 32).transpose(1, 2, 0)).save(
                buf, "JPEG", quality=40, subsampling=2)
            expect = np.asarray(Image.open(buf).convert("RGB")).transpose(2, 0, 1).reshape(-1)
            np.testing.assert_array_equal(row_new, expect)
        assert not np.array_equal(new["data"], old["data"])
        mse = np.mean((new["data"].astype(float) - old["data"].astype(float)) ** 2)
        assert info == {"images": N, "psnr_db": round(10 * math.log10(255 ** 2 / mse), 3)}


def test_recompressed_copy_loads_as_cifar10_and_lower_quality_costs_more(tmp_path):
    mod = _load()
    _write_copy(tmp_path / "src")
    psnrs = {q: mod.recompress(tmp_path / "src", tmp_path / f"q{q}", q)["files"]["test_batch"]["psnr_db"]
             for q in (90, 20)}
    assert psnrs[90] > psnrs[20] + 3
    from longtail.data.cifar import CIFAR10

    ds = CIFAR10(tmp_path / "q20", train=False)
    src = CIFAR10(tmp_path / "src", train=False)
    assert list(ds.targets) == list(src.targets) and ds.classes == src.classes
    assert ds.data.shape == src.data.shape == (N, 32, 32, 3)


def test_recompress_refuses_to_overwrite_and_names_a_missing_copy(tmp_path):
    mod = _load()
    _write_copy(tmp_path / "src")
    mod.recompress(tmp_path / "src", tmp_path / "dst", 50)
    before = (tmp_path / "dst" / "cifar-10-batches-py" / "test_batch").read_bytes()
    with pytest.raises(SystemExit, match="already exists"):
        mod.recompress(tmp_path / "src", tmp_path / "dst", 30)
    assert (tmp_path / "dst" / "cifar-10-batches-py" / "test_batch").read_bytes() == before
    with pytest.raises(SystemExit, match="destination is the source"):
        mod.recompress(tmp_path / "src", tmp_path / "src", 30)
    with pytest.raises(SystemExit, match="holds neither cifar-10-batches-py"):
        mod.recompress(tmp_path / "nothing", tmp_path / "out", 30)
    with pytest.raises(SystemExit):
        mod.main([str(tmp_path / "src"), str(tmp_path / "x"), "--quality", "0"])


def test_recompress_rows_rejects_a_wrong_shape():
    with pytest.raises(ValueError, match=r"\(N, 3072\)"):
        _load().recompress_rows(np.zeros((2, 100), np.uint8), 50)
