"""Dataset registration without an import cycle, and ``train_class_counts`` from count profiles."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import longtail.data as data_pkg
from longtail.data import DATASETS, DataBundle, build_datasets, counts_profile, long_tail_counts
from longtail.data.lt import ArrayImageDataset, train_class_counts
from longtail.errors import ConfigError

DATA_DIR = Path(data_pkg.__file__).parent
REPO = DATA_DIR.parent.parent
BUILDER_MODULES = ("cifar", "folder", "listfile", "synthetic")
CIFAR10_LT_100 = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


# -- no import cycle ----------------------------------------------------------------------------


def _module_level_imports(path: Path) -> set[str]:
    """Sibling modules of ``longtail.data`` that ``path`` imports at module level (not in functions)."""
    found: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:  # from .x import ...
                found.add(node.module.split(".")[0])
            elif node.level == 1:  # from . import x, y
                found.update(alias.name for alias in node.names)
            elif node.level == 0 and (node.module or "").startswith("longtail.data."):
                found.add(node.module.split(".")[2])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[2] for a in node.names if a.name.startswith("longtail.data."))
    return found


def _all_imports(path: Path) -> set[str]:
    """Like :func:`_module_level_imports` but also imports inside functions."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found.update([node.module.split(".")[0]] if node.module else [a.name for a in node.names])
    return found


def test_lt_imports_no_builder_module():
    assert not _all_imports(DATA_DIR / "lt.py") & set(BUILDER_MODULES)


def test_data_submodules_import_graph_is_acyclic():
    modules = {p.stem for p in DATA_DIR.glob("*.py") if p.stem != "__init__"}
    graph = {m: _module_level_imports(DATA_DIR / f"{m}.py") & modules for m in modules}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> None:
        if state.get(m) == 2:
            return
        assert state.get(m) != 1, f"import cycle: {' -> '.join(path + [m])}"
        state[m] = 1
        for dep in sorted(graph[m]):
            visit(dep, path + [m])
        state[m] = 2

    for m in sorted(modules):
        visit(m, [])
    assert graph["lt"].isdisjoint(BUILDER_MODULES)
    assert all("lt" in graph[m] for m in BUILDER_MODULES)


def test_package_registers_every_builder_module():
    assert set(BUILDER_MODULES) <= _module_level_imports(DATA_DIR / "__init__.py")


@pytest.mark.parametrize("first_import", [
    "import longtail.data.cifar",
    "from longtail.data.lt import build_datasets, train_class_counts",
])
def test_fresh_interpreter_import_registers_all_datasets(first_import):
    code = (
        f"{first_import}\n"
        "from longtail.data.lt import DATASETS, build_datasets, train_class_counts\n"
        "assert set(DATASETS.names()) >= {'cifar10_lt', 'cifar100_lt', 'folder', 'listfile', 'imagenet_lt',"
        " 'places_lt', 'inat18', 'synthetic'}, DATASETS.names()\n"
        "assert train_class_counts({'name': 'cifar10_lt', 'imbalance_ratio': 100})[-1] == 50\n"
        "b = build_datasets({'name': 'synthetic', 'imbalance_ratio': 8, 'params': {'n_max': 8, 'num_classes': 2, 'test_per_class': 1}})\n"
        "assert b.class_counts.tolist() == [8, 1]\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


# -- train_class_counts from count profiles -----------------------------------------------------


def test_cifar_counts_without_files():
    # no data.root at all: the profile needs no file
    assert train_class_counts({"name": "cifar10_lt", "imbalance_ratio": 100}).tolist() == CIFAR10_LT_100
    counts = train_class_counts({"name": "cifar10_lt"})  # builder defaults: rho 100, exp
    assert counts.dtype == np.int64 and counts.tolist() == CIFAR10_LT_100
    assert train_class_counts({"name": "cifar10_lt", "imbalance_ratio": 50}).tolist() == \
        [5000, 3237, 2096, 1357, 878, 568, 368, 238, 154, 100]
    c100 = train_class_counts({"name": "cifar100_lt", "imbalance_ratio": 100, "profile": "exp"})
    assert len(c100) == 100 and c100[0] == 500 and c100[-1] == 5 and c100.sum() == 10847
    assert train_class_counts({"name": "cifar10_lt", "imbalance_ratio": 10, "profile": "step"}).tolist() == \
        [5000] * 5 + [500] * 5
    # params.n_max replaces the head count; null keeps the default
    assert train_class_counts({"name": "cifar10_lt", "imbalance_ratio": 100, "params": {"n_max": 1000}}).tolist() \
        == long_tail_counts(1000, 10, 100)
    assert train_class_counts({"name": "cifar100_lt", "imbalance_ratio": 10, "params": {"n_max": 200}}).tolist() \
        == long_tail_counts(200, 100, 10)
    assert train_class_counts({"name": "cifar10_lt", "params": {"n_max": None}}).tolist() == CIFAR10_LT_100


@pytest.mark.parametrize("cfg", [
    {"name": "cifar10_lt", "imbalance_ratio": 10, "profile": "exp", "params": {"n_max": 60}},
    {"name": "cifar10_lt", "imbalance_ratio": 4, "profile": "step", "params": {"n_max": 40, "seed": 3}},
    {"name": "cifar100_lt", "imbalance_ratio": 3, "profile": "exp", "params": {"n_max": 6}},
])
def test_cifar_counts_equal_the_built_subset(cfg, tiny_cifar_root):
    cfg = {**cfg, "root": str(tiny_cifar_root), "download": False, "augment": "none"}
    np.testing.assert_array_equal(train_class_counts(cfg), build_datasets(cfg).class_counts)


@pytest.mark.parametrize("cfg", [
    {"name": "synthetic"},  # every default from build_synthetic's signature
    {"name": "synthetic", "imbalance_ratio": 10, "params": {"test_per_class": 1}},
    {"name": "synthetic", "imbalance_ratio": 5, "profile": "step",
     "params": {"n_max": 30, "num_classes": 7, "test_per_class": 1, "image_size": 8}},
    {"name": "synthetic", "imbalance_ratio": 1, "params": {"n_max": 3, "num_classes": 4, "test_per_class": 1,
                                                            "image_size": 8, "seed": 5}},
])
def test_synthetic_counts_equal_the_built_dataset(cfg):
    counts = train_class_counts(cfg)
    assert counts.dtype == np.int64
    np.testing.assert_array_equal(counts, build_datasets(cfg).class_counts)


def test_synthetic_defaults_come_from_the_builder():
    assert train_class_counts({"name": "synthetic"}).tolist() == long_tail_counts(500, 10, 100, "exp")


def test_counts_read_the_block_as_build_datasets_does():
    with pytest.raises(ConfigError, match="data.params.nmax: unknown parameter of dataset 'cifar10_lt'"):
        train_class_counts({"name": "cifar10_lt", "params": {"nmax": 100}})
    with pytest.raises(ConfigError, match=r"data.params.profile: set data.profile instead"):
        train_class_counts({"name": "synthetic", "params": {"profile": "step"}})
    with pytest.raises(ConfigError, match="data.download is not used by dataset 'synthetic'"):
        train_class_counts({"name": "synthetic", "download": True})
    with pytest.raises(ConfigError, match="unknown dataset 'nope'"):
        train_class_counts({"name": "nope"})
    with pytest.raises(ConfigError, match="data.name is required"):
        train_class_counts({})
    with pytest.raises(ConfigError, match="imbalance_ratio must be >= 1"):
        train_class_counts({"name": "cifar10_lt", "imbalance_ratio": 0.5})


# -- a dataset registered elsewhere -------------------------------------------------------------


@pytest.fixture
def scratch_registry(monkeypatch):
    """DATASETS as it is, restored after the test (so test datasets do not leak)."""
    monkeypatch.setattr(DATASETS, "_entries", dict(DATASETS._entries))
    return DATASETS


def test_new_dataset_with_a_profile_is_counted_without_building(scratch_registry):
    calls = []

    @scratch_registry.register("toy_lt")
    @counts_profile(lambda imbalance_ratio, classes, head: long_tail_counts(head, classes, imbalance_ratio))
    def build_toy(root=None, imbalance_ratio: float = 100, profile: str = "exp", classes: int = 4, head: int = 400):
        calls.append(root)
        raise AssertionError("train_class_counts must not build the data")

    assert build_toy.train_counts is not None
    assert train_class_counts({"name": "toy_lt", "root": "/nonexistent"}).tolist() == long_tail_counts(400, 4, 100)
    assert train_class_counts({"name": "toy_lt", "imbalance_ratio": 2, "params": {"classes": 3, "head": 10}}
                              ).tolist() == [10, 7, 5]
    assert calls == []
    with pytest.raises(ConfigError, match="data.params.head_count: unknown parameter of dataset 'toy_lt'"):
        train_class_counts({"name": "toy_lt", "params": {"head_count": 3}})


def test_new_dataset_without_a_profile_is_built(scratch_registry):
    @scratch_registry.register("toy_plain")
    def build_plain(size: int = 3) -> DataBundle:
        targets = np.repeat(np.arange(2), [size, 1])
        ds = ArrayImageDataset(np.zeros((len(targets), 4, 4, 3), np.uint8), targets)
        return DataBundle(train=ds, test=ds)

    assert not hasattr(build_plain, "train_counts")
    counts = train_class_counts({"name": "toy_plain", "params": {"size": 5}})
    assert counts.dtype == np.int64 and counts.tolist() == [5, 1]


def test_counts_profile_parameters_must_be_builder_parameters():
    with pytest.raises(TypeError, match="n_head is not a parameter of the builder"):
        @counts_profile(lambda n_head: [n_head])
        def build_x(n_max: int = 3) -> DataBundle:  # pragma: no cover - never called
            raise AssertionError
    with pytest.raises(TypeError, match="kw is not a parameter"):
        @counts_profile(lambda **kw: [1])
        def build_y(kw: int = 3) -> DataBundle:  # pragma: no cover - never called
            raise AssertionError
