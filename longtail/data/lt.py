"""Long-tailed class-count profiles, shot groups, the :class:`DataBundle` and ``build_datasets``.

Every dataset of longtail is a ``torch.utils.data.Dataset`` yielding ``(image, label)`` with an
``int`` label and exposing:

* ``targets``: np.int64 array of the labels, in dataset order;
* ``num_classes``: number of classes C;
* ``class_counts``: np.int64 array (C,) of the number of images of each class in this split;
* ``transform``: settable; a callable applied to the PIL RGB image, or None.

In-memory datasets (CIFAR, synthetic) also expose ``data``: an np.uint8 array (N, H, W, 3) in
dataset order, which a GPU-resident loader can take whole.

Datasets register a builder in :data:`DATASETS`; ``build_datasets(cfg["data"])`` calls it with
the standard keys of the ``data:`` block it accepts (``root``, ``imbalance_ratio``, ``profile``,
``download``, ``train_list``, ``val_list``, ``test_list``) plus ``data.params``, then attaches the
transforms of ``data.augment``. A builder decorated with :func:`counts_profile` also gives its
training counts without any data (:func:`train_class_counts`).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, TypeVar

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from ..errors import ConfigError, DataError
from ..registry import Registry, check_arguments
from .transforms import AUGMENT_KINDS, CIFAR_MEAN, CIFAR_STD, build_transforms

DATASETS = Registry("dataset")
"""Dataset name -> builder returning a :class:`DataBundle` without transforms.

The builders live in the dataset modules (``cifar``, ``folder``, ``listfile``, ``synthetic``),
which register them on import; the package ``longtail.data`` imports them all (this module
imports none of them)."""

PROFILES = ("exp", "step")

_Builder = TypeVar("_Builder", bound=Callable[..., Any])


def counts_profile(counts: Callable[..., Sequence[int]]) -> Callable[[_Builder], _Builder]:
    """Decorator giving a dataset builder its training class counts without building any data.

    ``counts`` takes some of the builder's parameters, by their names, and returns the C per-class
    training counts the builder would produce with them; :func:`train_class_counts` calls it with
    the values the builder would get from the ``data:`` block (else the builder's defaults).
    It is kept as the builder's ``train_counts`` attribute::

        @DATASETS.register("cifar10_lt")
        @counts_profile(lambda imbalance_ratio, profile, n_max: long_tail_counts(n_max or 5000, 10,
                                                                                 imbalance_ratio, profile))
        def build_cifar10_lt(root=None, imbalance_ratio=100, profile="exp", n_max=None, ...): ...

    Raises:
        TypeError: ``counts`` takes a parameter the builder does not have (or ``*args`` /
            ``**kwargs``).
    """
    wanted = inspect.signature(counts).parameters

    def deco(builder: _Builder) -> _Builder:
        have = inspect.signature(builder).parameters
        bad = [n for n, p in wanted.items() if n not in have or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if bad:
            raise TypeError(f"counts_profile of {builder.__name__}: {', '.join(bad)} is not a parameter of the builder")
        builder.train_counts = counts
        return builder

    return deco


# -- counts and shot groups ---------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def long_tail_counts(n_max: int, num_classes: int, imbalance_ratio: float, profile: str = "exp") -> List[int]:
    """Per-class image counts of a long-tailed split, class 0 being the head.

    ``exp`` (Cao et al., LDAM; thesis sec. 2.2.1): ``n_i = int(n_max * rho ** (-i / (C - 1)))``,
    computed as the reference code does (``n_max * (1 / rho) ** (i / (C - 1.0))``).
    ``step``: the first ``C // 2`` classes keep ``n_max`` images, the others ``int(n_max / rho)``.

    Args:
        n_max: Images of the largest (head) class.
        num_classes: Number of classes C.
        imbalance_ratio: rho = n_max / n_min, >= 1 (1 gives a balanced split).
        profile: ``"exp"`` or ``"step"``.

    Returns:
        The list of C counts.

    Raises:
        ConfigError: A parameter is out of range (the message names it), or the profile gives a
            class no image at all.
    """
    if not _is_number(n_max) or int(n_max) != n_max or n_max < 1:
        raise ConfigError(f"n_max must be a positive integer, got {n_max!r}")
    if not _is_number(num_classes) or int(num_classes) != num_classes or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    if not _is_number(imbalance_ratio) or not np.isfinite(imbalance_ratio):
        raise ConfigError(f"imbalance_ratio must be a number >= 1, got {imbalance_ratio!r}")
    if imbalance_ratio < 1:
        raise ConfigError(
            f"imbalance_ratio must be >= 1 (rho = n_max / n_min), got {imbalance_ratio!r}; "
            f"use 1 for a balanced split"
        )
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile '{profile}'; valid profile names: {', '.join(PROFILES)}")
    n_max, num_classes = int(n_max), int(num_classes)
    factor = 1.0 / float(imbalance_ratio)
    if profile == "exp":
        if num_classes == 1:
            counts = [n_max]
        else:
            counts = [int(n_max * factor ** (i / (num_classes - 1.0))) for i in range(num_classes)]
    else:
        half = num_classes // 2
        counts = [n_max if i < half else int(n_max * factor) for i in range(num_classes)]
    if min(counts) < 1:
        raise ConfigError(
            f"imbalance_ratio={imbalance_ratio!r} with n_max={n_max} leaves class {counts.index(0)} "
            f"without images (n_max / imbalance_ratio must be >= 1)"
        )
    return counts


def shot_groups(class_counts: Sequence[int] | np.ndarray, many: int = 100, few: int = 20) -> Dict[str, np.ndarray]:
    """Split classes into many / medium / few-shot groups by their training counts.

    Args:
        class_counts: Per-class training image counts (length C).
        many: Classes with strictly more images than ``many`` are many-shot.
        few: Classes with strictly fewer images than ``few`` are few-shot; the others
            (``few <= count <= many``) are medium-shot.

    Returns:
        ``{"many": mask, "medium": mask, "few": mask}``, boolean arrays of length C that
        partition the classes.

    Raises:
        ConfigError: ``few > many``.
    """
    if few > many:
        raise ConfigError(f"shot thresholds need few <= many, got many={many!r}, few={few!r}")
    counts = np.asarray(class_counts).reshape(-1)
    many_mask = counts > many
    few_mask = counts < few
    return {"many": many_mask, "medium": ~(many_mask | few_mask), "few": few_mask}


# -- in-memory datasets -------------------------------------------------------------------------


class ArrayImageDataset(Dataset):
    """A dataset of uint8 images held in memory.

    Args:
        data: np.uint8 array (N, H, W, 3).
        targets: Integer labels (N,).
        num_classes: Number of classes C (default: ``max(targets) + 1``).
        transform: Callable applied to the PIL image, or None (the PIL image is returned).
        classes: Class names (default ``"0"``, ``"1"``, ...).

    Attributes:
        data: np.uint8 array (N, H, W, 3), C-contiguous, in dataset order.
        targets: np.int64 array (N,).
        num_classes: C.
        class_counts: np.int64 array (C,) of this split's per-class counts.
        classes: List of C class names.
        transform: The transform applied in ``__getitem__``.
    """

    def __init__(
        self,
        data: np.ndarray,
        targets: Sequence[int] | np.ndarray,
        num_classes: Optional[int] = None,
        transform: Optional[Callable] = None,
        classes: Optional[Sequence[str]] = None,
    ) -> None:
        data = np.ascontiguousarray(data)
        if data.dtype != np.uint8 or data.ndim != 4 or data.shape[-1] != 3:
            raise DataError(f"in-memory images must be uint8 (N, H, W, 3), got {data.dtype} {data.shape}")
        targets = np.asarray(targets, dtype=np.int64).reshape(-1)
        if len(targets) != len(data):
            raise DataError(f"{len(data)} images but {len(targets)} labels")
        if num_classes is None:
            num_classes = int(targets.max()) + 1 if len(targets) else 0
        if len(targets) and (targets.min() < 0 or targets.max() >= num_classes):
            raise DataError(f"labels must lie in [0, {num_classes}), got [{targets.min()}, {targets.max()}]")
        self.data = data
        self.targets = targets
        self.num_classes = int(num_classes)
        self.class_counts = np.bincount(targets, minlength=self.num_classes).astype(np.int64)
        self.classes = list(classes) if classes is not None else [str(c) for c in range(self.num_classes)]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> Tuple[Any, int]:
        image = Image.fromarray(self.data[index])
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.targets[index])


# -- the bundle ---------------------------------------------------------------------------------


@dataclass
class DataBundle:
    """Everything a run needs to know about its data.

    Attributes:
        train: Training dataset.
        test: Test dataset (the split ``eval.split: test`` reports).
        val: Validation dataset, or None when the dataset has none.
        num_classes: Number of classes C (default: ``train.num_classes``).
        class_counts: np.int64 array (C,) of training counts (default: ``train.class_counts``).
        class_names: C class names (default: ``train.classes`` or ``"0"``, ``"1"``, ...).
        mean: Normalization means (R, G, B).
        std: Normalization standard deviations (R, G, B).
        augment: ``"cifar"``, ``"imagenet"`` or ``"none"``: the augmentation in use
            (a builder's value is the dataset's default).
        in_memory: True when train and test expose ``data`` uint8 arrays (N, H, W, 3)
            (default: detected).
    """

    train: Any
    test: Any
    val: Optional[Any] = None
    num_classes: Optional[int] = None
    class_counts: Optional[np.ndarray] = None
    class_names: Optional[List[str]] = None
    mean: Tuple[float, float, float] = CIFAR_MEAN
    std: Tuple[float, float, float] = CIFAR_STD
    augment: str = "none"
    in_memory: Optional[bool] = None
    image_size: Optional[int] = None  # crop side of the imagenet transforms (None: 224); folder/listfile set it
    info: Optional[Dict[str, Any]] = None  # the dataset's own report for metrics.json (folder/listfile)

    def __post_init__(self) -> None:
        if self.num_classes is None:
            self.num_classes = int(self.train.num_classes)
        if self.class_counts is None:
            self.class_counts = self.train.class_counts
        self.class_counts = np.asarray(self.class_counts, dtype=np.int64).reshape(-1)
        if len(self.class_counts) != self.num_classes:
            raise DataError(f"class_counts has {len(self.class_counts)} entries for {self.num_classes} classes")
        if self.class_names is None:
            names = getattr(self.train, "classes", None)
            self.class_names = list(names) if names is not None else [str(c) for c in range(self.num_classes)]
        self.class_names = [str(n) for n in self.class_names]
        self.mean = tuple(float(m) for m in self.mean)
        self.std = tuple(float(s) for s in self.std)
        if self.in_memory is None:
            self.in_memory = all(
                isinstance(getattr(ds, "data", None), np.ndarray) and ds.data.dtype == np.uint8
                for ds in (self.train, self.test)
            )

    def splits(self) -> Dict[str, Any]:
        """The splits present, ``{"train": ..., "val": ..., "test": ...}`` (val only if any)."""
        out = {"train": self.train}
        if self.val is not None:
            out["val"] = self.val
        out["test"] = self.test
        return out


# -- build_datasets -----------------------------------------------------------------------------

_STANDARD_KEYS = ("root", "imbalance_ratio", "profile", "download", "train_list", "val_list", "test_list",
                  "skip_bad")
# keys that must not be silently dropped when the chosen dataset does not use them
_STRICT_KEYS = ("download", "train_list", "val_list", "test_list", "skip_bad")


def _builder_kwargs(name: str, builder: Callable[..., DataBundle], cfg: Mapping[str, Any]) -> Dict[str, Any]:
    params = inspect.signature(builder).parameters
    accepted = {k for k, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    kwargs: Dict[str, Any] = {}
    for key in _STANDARD_KEYS:
        value = cfg.get(key)
        if value is None:
            continue
        if key in accepted:
            kwargs[key] = value
        elif key in _STRICT_KEYS and value is not False:
            raise ConfigError(f"data.{key} is not used by dataset '{name}' (got {value!r}); remove it")
    extra = cfg.get("params") or {}
    if not isinstance(extra, Mapping):
        raise ConfigError(f"data.params must be a mapping of keyword arguments, got {extra!r}")
    valid = sorted(accepted - set(_STANDARD_KEYS))
    for key, value in extra.items():
        if key in _STANDARD_KEYS:
            raise ConfigError(f"data.params.{key}: set data.{key} instead")
        if key not in accepted:
            raise ConfigError(
                f"data.params.{key}: unknown parameter of dataset '{name}'; "
                f"valid parameters: {', '.join(valid) or '(none)'}"
            )
        kwargs[key] = value
    return kwargs


def _lookup(cfg_data: Mapping[str, Any]) -> Tuple[str, Callable[..., DataBundle]]:
    """``(name, builder)`` of the ``data:`` block; ConfigError for a bad block or an unknown name."""
    if not isinstance(cfg_data, Mapping):
        raise ConfigError(f"data must be a mapping, got {type(cfg_data).__name__}")
    name = cfg_data.get("name")
    if not name:
        raise ConfigError(f"data.name is required; valid dataset names: {', '.join(DATASETS.names())}")
    return name, DATASETS.get(name)


def _image_size(dataset: Any) -> Optional[int]:
    data = getattr(dataset, "data", None)
    if isinstance(data, np.ndarray) and data.ndim == 4:
        return int(data.shape[1])
    return None


def build_datasets(cfg_data: Mapping[str, Any]) -> DataBundle:
    """Build the datasets named by the ``data:`` block of a config.

    Args:
        cfg_data: The ``data:`` block (see ``recipes/defaults.yaml``). Used keys: ``name``,
            ``root``, ``imbalance_ratio``, ``profile``, ``download``, ``train_list``,
            ``val_list``, ``test_list``, ``params`` and ``augment``; other keys (batch sizes,
            workers, ...) are the loader's and are ignored here.

    Returns:
        A :class:`DataBundle` whose train split carries the training transform of ``augment``
        and whose val / test splits carry the test transform.

    Raises:
        ConfigError: Unknown dataset, augment or parameter (the message names it).
        DataError: Missing or corrupt data files.
    """
    name, builder = _lookup(cfg_data)
    bundle = builder(**_builder_kwargs(name, builder, cfg_data))
    augment = cfg_data.get("augment", "auto")
    if augment in (None, "auto"):
        augment = bundle.augment
    if augment not in AUGMENT_KINDS:
        raise ConfigError(f"data.augment: unknown augment '{augment}'; valid: auto, {', '.join(AUGMENT_KINDS)}")
    bundle.augment = augment
    size = _image_size(bundle.train) if augment == "cifar" else bundle.image_size
    bundle.train.transform = build_transforms(augment, True, bundle.mean, bundle.std, size=size)
    for split in (bundle.val, bundle.test):
        if split is not None:
            split.transform = build_transforms(augment, False, bundle.mean, bundle.std, size=size)
    return bundle


def train_class_counts(cfg_data: Mapping[str, Any]) -> np.ndarray:
    """Training class counts of the ``data:`` block, without decoding any image where possible.

    A builder with a :func:`counts_profile` (CIFAR-LT, synthetic) gives them from its parameters,
    read from the block exactly as :func:`build_datasets` reads them (so no file is needed); for
    the others the datasets are built (list-file datasets read their lists only, images are opened
    lazily).

    Raises:
        ConfigError: Unknown dataset or parameter, as :func:`build_datasets`.
    """
    name, builder = _lookup(cfg_data)
    counts = getattr(builder, "train_counts", None)
    if counts is None:
        return np.asarray(build_datasets(cfg_data).class_counts, dtype=np.int64)
    kwargs = _builder_kwargs(name, builder, cfg_data)
    check_arguments(builder, f"dataset '{name}'", **kwargs)
    bound = inspect.signature(builder).bind(**kwargs)
    bound.apply_defaults()
    wanted = inspect.signature(counts).parameters
    return np.asarray(counts(**{k: bound.arguments[k] for k in wanted}), dtype=np.int64)
