"""Image transforms of the field's training protocols.

Three kinds, chosen by ``data.augment`` (``auto`` picks the dataset's default):

* ``cifar``: train ``RandomCrop(size, padding=4)`` (zero fill) + ``RandomHorizontalFlip()``;
  test: nothing. Both end with ``ToTensor()`` + ``Normalize(mean, std)``.
* ``imagenet``: train ``RandomResizedCrop(224)`` + ``RandomHorizontalFlip()``;
  test ``Resize(256)`` + ``CenterCrop(224)``. Both end with ``ToTensor()`` + ``Normalize``.
* ``none``: ``ToTensor()`` + ``Normalize(mean, std)`` only.

Every transform takes a PIL RGB image and returns a float32 tensor (3, H, W). Each carries two
attributes a dataset can check its images against before training (:func:`size_needs`):
``min_size`` (``cifar`` training: the crop minus its padding) and ``native_size`` (True when the
output keeps the image's size, so every image of a split must have one size to form batches).

Reproducible augmentation: :class:`EpochSeededDataset` and :class:`EpochIndexSampler` draw the
random augmentation of sample ``i`` in epoch ``e`` from a seed of (run seed, stage, ``e``, ``i``)
alone, so it is the same in every DataLoader worker layout and in a resumed run.
"""
from __future__ import annotations

import random
from typing import Any, Callable, Iterator, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, get_worker_info
from torchvision import transforms as T

from ..errors import ConfigError, DataError
from ..seeding import sample_seed, seed_everything

CIFAR_MEAN: Tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
"""Channel means used by the field's CIFAR-LT code (CIFAR-10 and CIFAR-100 alike)."""
CIFAR_STD: Tuple[float, float, float] = (0.2023, 0.1994, 0.2010)
"""Channel standard deviations used by the field's CIFAR-LT code."""
IMAGENET_MEAN: Tuple[float, float, float] = (0.485, 0.456, 0.406)
"""ImageNet channel means (ImageNet-LT, Places-LT, iNaturalist 2018)."""
IMAGENET_STD: Tuple[float, float, float] = (0.229, 0.224, 0.225)
"""ImageNet channel standard deviations."""

AUGMENT_KINDS = ("cifar", "imagenet", "none")

_DEFAULT_STATS = {
    "cifar": (CIFAR_MEAN, CIFAR_STD),
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}


def _check_stats(name: str, values: Sequence[float]) -> Tuple[float, ...]:
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a sequence of 3 numbers, got {values!r}") from None
    if len(out) != 3:
        raise ConfigError(f"{name} must have 3 entries (R, G, B), got {len(out)}: {values!r}")
    if name == "std" and any(v <= 0 for v in out):
        raise ConfigError(f"std entries must be > 0, got {values!r}")
    return out


def build_transforms(
    kind: str,
    train: bool,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    size: Optional[int] = None,
) -> Callable:
    """Build the transform of one split.

    Args:
        kind: ``"cifar"``, ``"imagenet"`` or ``"none"``.
        train: Training transform (random augmentation) if True, test transform otherwise.
        mean: Normalization means (R, G, B); default: the kind's usual constants
            (``none``: no normalization).
        std: Normalization standard deviations; default as for ``mean``.
        size: Output size: the crop size of ``cifar`` (default 32) or the crop size of
            ``imagenet`` (default 224; the test resize is ``size * 256 / 224``). Unused by ``none``.

    Returns:
        A ``torchvision.transforms.Compose`` mapping a PIL image to a normalized tensor.

    Raises:
        ConfigError: ``kind`` is not one of the three kinds, or ``mean`` / ``std`` are malformed.
    """
    if kind not in _DEFAULT_STATS:
        raise ConfigError(f"unknown augment '{kind}'; valid augment names: {', '.join(AUGMENT_KINDS)}")
    default_mean, default_std = _DEFAULT_STATS[kind]
    mean = _check_stats("mean", default_mean if mean is None else mean)
    std = _check_stats("std", default_std if std is None else std)
    tail = [T.ToTensor(), T.Normalize(mean, std)]
    if kind == "cifar":
        crop = 32 if size is None else int(size)
        if train:
            return _tag(T.Compose([MinSize(crop - 8, crop, "data.augment=cifar"),
                                   T.RandomCrop(crop, padding=4, fill=0), T.RandomHorizontalFlip()] + tail),
                        min_size=crop - 8)
        return _tag(T.Compose(tail), native_size=True)
    if kind == "imagenet":
        crop = 224 if size is None else int(size)
        if train:
            return T.Compose([T.RandomResizedCrop(crop), T.RandomHorizontalFlip()] + tail)
        return T.Compose([T.Resize(int(round(crop * 256 / 224))), T.CenterCrop(crop)] + tail)
    return _tag(T.Compose(tail), native_size=True)


def _tag(t: T.Compose, min_size: int = 0, native_size: bool = False) -> T.Compose:
    t.min_size = min_size
    t.native_size = native_size
    return t


def size_needs(transform: Any) -> Tuple[int, bool]:
    """``(min_size, native_size)`` of a transform built here (``(0, False)`` for any other)."""
    return int(getattr(transform, "min_size", 0) or 0), bool(getattr(transform, "native_size", False))


class MinSize:
    """Raise DataError for an image smaller than ``minimum`` (what a padded crop needs)."""

    def __init__(self, minimum: int, crop: int, why: str) -> None:
        self.minimum, self.crop, self.why = int(minimum), int(crop), why

    def __call__(self, img):
        w, h = img.size
        if min(w, h) < self.minimum:
            raise DataError(
                f"image is {w}x{h}, smaller than the {self.crop}x{self.crop} crop of {self.why} (it pads by 4, so "
                f"images need at least {self.minimum}x{self.minimum}); use data.augment=imagenet, which resizes"
            )
        return img

    def __repr__(self) -> str:
        return f"MinSize({self.minimum})"


# -- reproducible per-sample augmentation ---------------------------------------------------------
class EpochIndexSampler(Sampler):
    """Yields ``(epoch_seed, index)`` for each index of ``sampler`` (for :class:`EpochSeededDataset`).

    ``set_epoch(epoch, epoch_seed)`` forwards the epoch to ``sampler``; the epoch seed travels with
    every index, so persistent DataLoader workers see it without being restarted.
    """

    def __init__(self, sampler: Sampler) -> None:
        self.sampler = sampler
        self.epoch_seed = 0

    def set_epoch(self, epoch: int, epoch_seed: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)
        self.epoch_seed = int(epoch_seed)

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        s = self.epoch_seed
        return ((s, int(i)) for i in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


class EpochSeededDataset(Dataset):
    """``dataset[(epoch_seed, i)]`` is ``dataset[i]`` with the torch, NumPy and Python RNGs seeded
    from ``(epoch_seed, i)``: the augmentation of a sample does not depend on which worker loads
    it, on the number of workers, or on what a worker loaded before (a resumed run gets the same
    images as an uninterrupted one). In the main process (``num_workers=0``) the RNG states are
    restored afterwards, so the training step's own random numbers are not disturbed."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Tuple[int, int]):
        epoch_seed, index = key
        seed = sample_seed(epoch_seed, index)
        if get_worker_info() is not None:  # a worker's RNGs are its own
            seed_everything(seed)
            return self.dataset[index]
        states = torch.get_rng_state(), random.getstate(), np.random.get_state()
        try:
            seed_everything(seed)
            return self.dataset[index]
        finally:
            torch.set_rng_state(states[0])
            random.setstate(states[1])
            np.random.set_state(states[2])
