"""Image transforms of the field's training protocols.

Three kinds, chosen by ``data.augment`` (``auto`` picks the dataset's default):

* ``cifar``: train ``RandomCrop(size, padding=4)`` (zero fill) + ``RandomHorizontalFlip()``;
  test: nothing. Both end with ``ToTensor()`` + ``Normalize(mean, std)``.
* ``imagenet``: train ``RandomResizedCrop(224)`` + ``RandomHorizontalFlip()``;
  test ``Resize(256)`` + ``CenterCrop(224)``. Both end with ``ToTensor()`` + ``Normalize``.
* ``none``: ``ToTensor()`` + ``Normalize(mean, std)`` only.

Every transform takes a PIL RGB image and returns a float32 tensor (3, H, W).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

from torchvision import transforms as T

from ..errors import ConfigError

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
            return T.Compose([T.RandomCrop(crop, padding=4, fill=0), T.RandomHorizontalFlip()] + tail)
        return T.Compose(tail)
    if kind == "imagenet":
        crop = 224 if size is None else int(size)
        if train:
            return T.Compose([T.RandomResizedCrop(crop), T.RandomHorizontalFlip()] + tail)
        return T.Compose([T.Resize(int(round(crop * 256 / 224))), T.CenterCrop(crop)] + tail)
    return T.Compose(tail)
