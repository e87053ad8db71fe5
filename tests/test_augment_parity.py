"""Both training-data paths draw the same ``cifar`` augmentation distribution.

The device-resident loader (:class:`longtail.data.gpu.GpuLoader`, ``augment="cifar"``) and the
DataLoader path (torchvision ``RandomCrop(32, padding=4, fill=0)`` + ``RandomHorizontalFlip()``
behind the per-sample seeding of :class:`longtail.data.transforms.EpochSeededDataset`) must crop
at top-left offsets uniform over ``0..8`` on each axis, independently, and flip with rate 1/2.

The images encode their own coordinates (red = 7 * row + 1, green = 7 * column + 1), so the
offsets and the flip of every output are read back exactly. Seeds are fixed, so the chi-square
and binomial checks are deterministic; their bounds are the 0.1% tails and the samples large
(4,500 draws per path, 500 per offset), so a wrong range, a biased draw or a missing flip fails.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from longtail.data.gpu import GpuLoader
from longtail.data.lt import ArrayImageDataset
from longtail.data.samplers import InstanceBalancedSampler
from longtail.data.transforms import EpochIndexSampler, EpochSeededDataset, build_transforms
from longtail.seeding import epoch_seed

N_IMAGES, EPOCHS, SEED, PAD, S = 500, 9, 7, 4, 32
CHI2_8_999 = 26.12  # chi-square, 8 degrees of freedom, 99.9% quantile
CHI2_80_999 = 124.84  # 80 degrees of freedom
ZERO, ONE = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)  # no normalization: x = uint8 / 255


def coordinate_images(n: int) -> np.ndarray:
    grid = np.arange(S, dtype=np.uint8) * 7 + 1
    img = np.zeros((S, S, 3), dtype=np.uint8)
    img[..., 0] = grid[:, None]
    img[..., 1] = grid[None, :]
    img[..., 2] = 200
    return np.repeat(img[None], n, axis=0)


def reference(oy: int, ox: int, flip: bool) -> np.ndarray:
    """hflip?(crop(pad(img, 4, fill=0), top=oy, left=ox, 32, 32)) as (3, 32, 32) uint8."""
    padded = np.pad(coordinate_images(1)[0], ((PAD, PAD), (PAD, PAD), (0, 0)))
    out = padded[oy:oy + S, ox:ox + S]
    return np.ascontiguousarray((out[:, ::-1] if flip else out).transpose(2, 0, 1))


def decode(batch: np.ndarray):
    """Offsets (oy, ox) in padded coordinates and flips of (N, 3, 32, 32) uint8 outputs."""
    row = (batch[:, 0, 16, 16].astype(int) - 1) // 7  # image row under output row 16: 12 + oy
    col16 = (batch[:, 1, 16, 16].astype(int) - 1) // 7
    col17 = (batch[:, 1, 16, 17].astype(int) - 1) // 7
    flip = col17 < col16  # a flipped crop reads the columns backwards
    oy = row - 12
    ox = np.where(flip, col16 - 11, col16 - 12)  # output column 16 is crop column 15 when flipped
    return oy, ox, flip


def resident_draws() -> np.ndarray:
    data = coordinate_images(N_IMAGES)
    sampler = InstanceBalancedSampler(np.zeros(N_IMAGES, dtype=np.int64), 1, seed=SEED)
    loader = GpuLoader(data, np.zeros(N_IMAGES, dtype=np.int64), sampler, 250, "cpu", ZERO, ONE,
                       augment="cifar", channels_last=False)
    out = []
    for epoch in range(EPOCHS):
        loader.set_epoch(epoch)
        out += [torch.round(x * 255).to(torch.uint8).numpy() for x, _ in loader]
    return np.concatenate(out)


def dataloader_draws() -> np.ndarray:
    ds = ArrayImageDataset(coordinate_images(N_IMAGES), np.zeros(N_IMAGES, dtype=np.int64),
                           transform=build_transforms("cifar", True, ZERO, ONE))
    seeded = EpochSeededDataset(ds)
    keys = EpochIndexSampler(InstanceBalancedSampler(np.zeros(N_IMAGES, dtype=np.int64), 1, seed=SEED))
    out = []
    for epoch in range(EPOCHS):
        keys.set_epoch(epoch, epoch_seed(SEED, epoch))
        out += [torch.round(seeded[key][0] * 255).to(torch.uint8).numpy() for key in keys]
    return np.stack(out)


def chi2(observed: np.ndarray) -> float:
    expected = observed.sum() / observed.size
    return float(((observed - expected) ** 2 / expected).sum())


def check_distribution(batch: np.ndarray) -> tuple:
    n = len(batch)
    assert n == N_IMAGES * EPOCHS
    oy, ox, flip = decode(batch)
    assert set(oy.tolist()) == set(ox.tolist()) == set(range(2 * PAD + 1))
    for i in range(0, n, 41):  # the decoded crop and flip explain the whole output, zero padding included
        np.testing.assert_array_equal(batch[i], reference(oy[i], ox[i], bool(flip[i])))
    counts_y = np.bincount(oy, minlength=9)
    counts_x = np.bincount(ox, minlength=9)
    assert chi2(counts_y) < CHI2_8_999 and chi2(counts_x) < CHI2_8_999, (counts_y, counts_x)
    joint = np.bincount(oy * 9 + ox, minlength=81)  # the two axes are independent
    assert chi2(joint) < CHI2_80_999, joint
    k = int(flip.sum())
    assert abs(k - n / 2) < 3.3 * np.sqrt(n) / 2, k  # binomial(n, 1/2), two-sided 0.1%
    return counts_y, counts_x, k


@pytest.mark.slow  # ~45 s of CPU: 9,000 PIL and resident crops
def test_both_paths_draw_uniform_crops_and_fair_flips():
    resident = check_distribution(resident_draws())
    loader = check_distribution(dataloader_draws())
    # and the two paths agree with each other (chi-square test of homogeneity, 8 d.o.f. per axis)
    for a, b in zip(resident[:2], loader[:2]):
        table = np.stack([a, b]).astype(float)
        expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
        assert ((table - expected) ** 2 / expected).sum() < CHI2_8_999, table
