"""Shared fixtures: real data from ../shared/data and tiny CIFAR layouts written on the fly."""
from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
CIFAR10_FILES = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
                 "test_batch", "batches.meta"]

TINY_CIFAR10_PER_CLASS = 60      # training images per class of the tiny CIFAR-10
TINY_CIFAR10_TEST_PER_CLASS = 10
TINY_CIFAR100_PER_CLASS = 6      # training images per class of the tiny CIFAR-100
TINY_CIFAR100_TEST_PER_CLASS = 2


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``<repo>/../shared/data``; skips the test when it is not there."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"../shared/data not present: {SHARED_DATA} (real-data tests need it)")
    return SHARED_DATA


def _cifar10_complete(folder: Path) -> bool:
    return all((folder / "cifar-10-batches-py" / name).is_file() for name in CIFAR10_FILES)


@pytest.fixture(scope="session")
def cifar10_root(shared_data: Path) -> Path:
    """Folder holding the real CIFAR-10 ``cifar-10-batches-py``, rebuilt once from the shared JPEGs.

    The rebuild (``shared_data/cifar10_from_jpeg.py``, ~10 s) goes to ``<repo>/.cache/cifar10`` and
    is reused by later runs. It is written to a temporary folder first and renamed, so an
    interrupted run never leaves a partial cache.
    """
    cache = REPO / ".cache" / "cifar10"
    if _cifar10_complete(cache):
        return cache
    script = shared_data / "cifar10_from_jpeg.py"
    if not script.is_file():
        pytest.skip(f"{script} not present")
    tmp = cache.parent / f"cifar10.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        subprocess.run([sys.executable, str(script), str(tmp)], check=True, capture_output=True, text=True)
        if not _cifar10_complete(cache):
            shutil.rmtree(cache, ignore_errors=True)
            os.replace(tmp, cache)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    assert _cifar10_complete(cache), f"rebuilding CIFAR-10 into {cache} failed"
    return cache


def _dump(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_tiny_cifar10(root: Path, per_class: int = TINY_CIFAR10_PER_CLASS,
                       test_per_class: int = TINY_CIFAR10_TEST_PER_CLASS, seed: int = 0) -> Path:
    """Write a random CIFAR-10 in the real pickle layout under ``root/cifar-10-batches-py``.

    Labels are shuffled (as in the release) and split over five training batches.
    """
    rng = np.random.RandomState(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    labels = rng.permutation(np.repeat(np.arange(10), per_class))
    data = rng.randint(0, 256, size=(len(labels), 3072), dtype=np.uint8)
    for b, part in enumerate(np.array_split(np.arange(len(labels)), 5)):
        _dump(folder / f"data_batch_{b + 1}", {"batch_label": f"training batch {b + 1} of 5",
                                               "labels": labels[part].tolist(), "data": data[part],
                                               "filenames": [f"img_{i}.png" for i in part]})
    test_labels = np.tile(np.arange(10), test_per_class)
    _dump(folder / "test_batch", {"batch_label": "testing batch 1 of 1", "labels": test_labels.tolist(),
                                  "data": rng.randint(0, 256, size=(len(test_labels), 3072), dtype=np.uint8)})
    _dump(folder / "batches.meta", {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog",
                                                    "frog", "horse", "ship", "truck"],
                                    "num_cases_per_batch": len(labels) // 5, "num_vis": 3072})
    return folder


def write_tiny_cifar100(root: Path, per_class: int = TINY_CIFAR100_PER_CLASS,
                        test_per_class: int = TINY_CIFAR100_TEST_PER_CLASS, seed: int = 1) -> Path:
    """Write a random CIFAR-100 in the real pickle layout under ``root/cifar-100-python``."""
    rng = np.random.RandomState(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", per_class), ("test", test_per_class)):
        fine = rng.permutation(np.repeat(np.arange(100), n))
        _dump(folder / name, {"filenames": [f"img_{i}.png" for i in range(len(fine))], "batch_label": name,
                              "fine_labels": fine.tolist(), "coarse_labels": (fine // 5).tolist(),
                              "data": rng.randint(0, 256, size=(len(fine), 3072), dtype=np.uint8)})
    _dump(folder / "meta", {"fine_label_names": [f"fine_{i}" for i in range(100)],
                            "coarse_label_names": [f"coarse_{i}" for i in range(20)]})
    return folder


@pytest.fixture(scope="session")
def tiny_cifar_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding a tiny random ``cifar-10-batches-py`` and ``cifar-100-python``.

    CIFAR-10: 60 training images per class (600, in five shuffled batches), 10 test images per
    class. CIFAR-100: 6 training and 2 test images per class. Real formats (protocol-2 pickles,
    (N, 3072) channel-planar uint8 rows, ``labels`` / ``fine_labels``, meta files). Read-only by
    convention: tests that corrupt files must copy it first.
    """
    root = tmp_path_factory.mktemp("tiny_cifar")
    write_tiny_cifar10(root)
    write_tiny_cifar100(root)
    return root
