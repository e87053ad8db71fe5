"""A built-in long-tailed image dataset generated procedurally (no download, numpy only).

Each class c has a fixed *prototype*, drawn from the seed:

* a texture kind (``c % 4``): straight stripes, a checkerboard, concentric rings or wavy stripes;
* an orientation and a spatial frequency of the texture;
* a foreground colour.

Each image draws nuisances independently: a random background colour with a smooth gradient, the
position (centre) and radius of the soft disc holding the texture, the texture's phase,
orientation jitter (+-0.25 rad) and frequency jitter (x0.8..1.25), colour jitter of the foreground
(sd 0.12 per channel), a global brightness/contrast change and pixel noise (sd 0.06). The class is
carried partly by colour (which nearest-class-mean classifiers on raw pixels pick up, and which is
ambiguous between classes of similar colour) and partly by the texture (which needs convolutional
features), so a small CNN learns it well above chance but not perfectly within a few epochs, and
the tail classes (5 training images at rho=100) profit from class balancing.

Counts follow :func:`~longtail.data.lt.long_tail_counts`; the training split is stored class by
class, the test (and optional validation) split is balanced and class-interleaved. Everything is
determined by ``seed``: the class prototypes, and for each split an independent stream
(``SeedSequence([seed, split])``). ~2,000 + 1,000 images of 32x32 take well under a second.

Normalization: the bundle's ``mean`` / ``std`` are computed from the generated training images
(per channel, over all pixels, rounded to 4 decimals), since they depend on the class prototypes.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional

import numpy as np

from ..errors import ConfigError
from .lt import DATASETS, ArrayImageDataset, DataBundle, counts_profile, long_tail_counts

_SPLIT_STREAM = {"train": 1, "test": 2, "val": 3}
_KIND_NAMES = ("stripes", "checker", "rings", "waves")
_CHUNK = 1024  # images generated at a time (bounds the float32 temporaries to a few MB)


def class_prototypes(num_classes: int, seed: int) -> Dict[str, np.ndarray]:
    """The per-class texture kind, orientation, frequency and colour drawn from ``seed``.

    Args:
        num_classes: C.
        seed: Dataset seed.

    Returns:
        ``{"kind": int (C,), "theta": float (C,), "freq": float (C,), "color": float (C, 3)}``;
        frequencies in cycles per image, colours in [0, 1].
    """
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0]))
    kind = np.arange(num_classes) % len(_KIND_NAMES)
    # orientations spread over [0, pi) so that classes of the same kind differ in angle
    theta = (np.pi * (np.arange(num_classes) * 0.618034 + rng.uniform(0, 1))) % np.pi
    freq = rng.uniform(2.0, 5.5, size=num_classes)
    # colours: random hues at moderate saturation, so some classes share similar colours
    hue = rng.uniform(0, 1, size=num_classes)
    phase = 2 * np.pi * (hue[:, None] + np.array([0.0, 1 / 3, 2 / 3])[None, :])
    color = 0.55 + 0.35 * np.cos(phase) * rng.uniform(0.6, 1.0, size=(num_classes, 1))
    return {"kind": kind, "theta": theta, "freq": freq, "color": np.clip(color, 0, 1)}


def render_images(labels: np.ndarray, protos: Dict[str, np.ndarray], image_size: int,
                  rng: np.random.Generator) -> np.ndarray:
    """Render one image per label.

    Args:
        labels: np.int64 class of each image (N,).
        protos: Output of :func:`class_prototypes`.
        image_size: Height and width S.
        rng: Generator of the per-image nuisances.

    Returns:
        np.uint8 images (N, S, S, 3).
    """
    n, s = len(labels), int(image_size)
    out = np.empty((n, s, s, 3), dtype=np.uint8)
    grid = ((np.arange(s, dtype=np.float32) + 0.5) / s - 0.5)
    xx, yy = grid[None, None, :], grid[None, :, None]  # (1, 1, S) columns, (1, S, 1) rows
    for start in range(0, n, _CHUNK):
        lab = labels[start:start + _CHUNK]
        m = len(lab)

        def u(*shape: int, lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
            return rng.uniform(lo, hi, size=(m,) + shape).astype(np.float32)

        def col(a: np.ndarray) -> np.ndarray:
            return a.reshape(m, 1, 1)

        theta = protos["theta"][lab].astype(np.float32) + u(lo=-0.25, hi=0.25)
        freq = protos["freq"][lab].astype(np.float32) * u(lo=0.8, hi=1.25)
        phase = u(lo=0, hi=2 * np.pi)
        cx, cy = col(u(lo=-0.2, hi=0.2)), col(u(lo=-0.2, hi=0.2))
        radius = col(u(lo=0.22, hi=0.42))
        ct, st = col(np.cos(theta)), col(np.sin(theta))
        dx, dy = xx - cx, yy - cy
        along = dx * ct + dy * st
        across = -dx * st + dy * ct
        w = col(2 * np.pi * freq)
        ph = col(phase)
        kind = col(protos["kind"][lab])
        wave = np.where(
            kind == 0, np.cos(w * along + ph),
            np.where(
                kind == 1, np.cos(w * along + ph) * np.cos(w * across + ph) * 1.6,
                np.where(kind == 2, np.cos(w * np.sqrt(along ** 2 + across ** 2) + ph),
                         np.cos(w * along + 1.2 * np.sin(w * 0.6 * across) + ph)),
            ),
        )
        texture = 0.5 + 0.5 * np.tanh(2.5 * wave)  # (m, S, S) in [0, 1]
        dist = np.sqrt(dx ** 2 + dy ** 2)
        mask = 1.0 / (1.0 + np.exp((dist - radius) * (s / 1.5)))  # soft disc, ~1.5 px edge

        fg = protos["color"][lab].astype(np.float32) + rng.normal(0, 0.12, size=(m, 3)).astype(np.float32)
        dark = fg * u(3, lo=0.15, hi=0.45)
        bg = u(3, lo=0.1, hi=0.9)
        grad = u(3, lo=-0.25, hi=0.25)
        gdir = u(lo=0, hi=2 * np.pi)
        ramp = col(np.cos(gdir)) * xx + col(np.sin(gdir)) * yy  # (m, S, S) in about [-0.7, 0.7]

        fg4, dark4 = fg[:, None, None, :], dark[:, None, None, :]
        back = bg[:, None, None, :] + grad[:, None, None, :] * ramp[..., None]
        tex = texture[..., None]
        img = mask[..., None] * (tex * fg4 + (1 - tex) * dark4) + (1 - mask[..., None]) * back
        gain = u(lo=0.75, hi=1.2).reshape(m, 1, 1, 1)
        bias = u(lo=-0.08, hi=0.08).reshape(m, 1, 1, 1)
        img = img * gain + bias + rng.normal(0, 0.06, size=img.shape).astype(np.float32)
        out[start:start + m] = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return out


class SyntheticLT(ArrayImageDataset):
    """One split of the synthetic long-tailed dataset.

    Args:
        split: ``"train"`` (long-tailed, class by class), ``"test"`` or ``"val"`` (balanced,
            class-interleaved).
        num_classes: C.
        n_max: Training images of the head class.
        imbalance_ratio: rho of the training split.
        profile: ``"exp"`` or ``"step"``.
        test_per_class: Images per class of the test split.
        val_per_class: Images per class of the validation split.
        image_size: Height and width of the images.
        seed: Seed of the class prototypes and of every split's images.
        transform: Callable applied to the PIL image, or None.

    Attributes:
        data: np.uint8 (N, S, S, 3); see :class:`~longtail.data.lt.ArrayImageDataset` for the rest.

    Raises:
        ConfigError: A parameter is out of range (the message names it).
    """

    def __init__(
        self,
        split: str = "train",
        num_classes: int = 10,
        n_max: int = 500,
        imbalance_ratio: float = 100,
        profile: str = "exp",
        test_per_class: int = 100,
        val_per_class: int = 0,
        image_size: int = 32,
        seed: int = 0,
        transform: Optional[Callable] = None,
    ) -> None:
        if split not in _SPLIT_STREAM:
            raise ConfigError(f"split must be one of {', '.join(_SPLIT_STREAM)}, got {split!r}")
        for key, value, low in (("num_classes", num_classes, 2), ("image_size", image_size, 8),
                                ("test_per_class", test_per_class, 1), ("val_per_class", val_per_class, 0)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ConfigError(f"{key} must be an integer >= {low}, got {value!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
        counts = long_tail_counts(n_max, num_classes, imbalance_ratio, profile)
        if split == "train":
            labels = np.repeat(np.arange(num_classes, dtype=np.int64), counts)
        else:
            per_class = test_per_class if split == "test" else val_per_class
            labels = np.tile(np.arange(num_classes, dtype=np.int64), per_class)
        protos = class_prototypes(num_classes, seed)
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), _SPLIT_STREAM[split]]))
        data = render_images(labels, protos, image_size, rng)
        names = [f"{_KIND_NAMES[k]}{c}" for c, k in enumerate(protos["kind"].tolist())]
        self.split = split
        self.seed = int(seed)
        super().__init__(data, labels, num_classes=num_classes, transform=transform, classes=names)


def channel_stats(data: np.ndarray) -> tuple:
    """Per-channel mean and std of uint8 images (N, H, W, 3), in [0, 1], rounded to 4 decimals."""
    x = data.reshape(-1, 3).astype(np.float64) / 255.0
    mean = tuple(round(float(v), 4) for v in x.mean(0))
    std = tuple(round(float(v), 4) for v in x.std(0))
    return mean, std


@DATASETS.register("synthetic")
@counts_profile(long_tail_counts)  # its parameters n_max, num_classes, imbalance_ratio, profile are the builder's
def build_synthetic(
    imbalance_ratio: float = 100,
    profile: str = "exp",
    num_classes: int = 10,
    n_max: int = 500,
    test_per_class: int = 100,
    val_per_class: int = 0,
    image_size: int = 32,
    seed: int = 0,
) -> DataBundle:
    """The synthetic long-tailed dataset (see the module docstring).

    Args:
        imbalance_ratio: rho of the training split.
        profile: ``"exp"`` or ``"step"``.
        num_classes: C.
        n_max: Training images of the head class.
        test_per_class: Balanced test images per class.
        val_per_class: Balanced validation images per class (0: no val split).
        image_size: Image height and width.
        seed: Seed of everything (independent of the run's seed).

    Returns:
        A :class:`DataBundle` with augment ``cifar`` and mean / std of the training images.
    """
    common = dict(num_classes=num_classes, n_max=n_max, imbalance_ratio=imbalance_ratio, profile=profile,
                  test_per_class=test_per_class, val_per_class=val_per_class, image_size=image_size, seed=seed)
    train = SyntheticLT("train", **common)
    test = SyntheticLT("test", **common)
    val = SyntheticLT("val", **common) if val_per_class > 0 else None
    mean, std = channel_stats(train.data)
    return DataBundle(train=train, test=test, val=val, num_classes=num_classes, class_counts=train.class_counts,
                      class_names=train.classes, mean=mean, std=std, augment="cifar", in_memory=True)
