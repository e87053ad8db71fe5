"""Tests of longtail.data.gpu: device draws, vectorized crop/flip vs torchvision, GpuLoader."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF

from longtail.data.gpu import GpuLoader, crop_flip, draw_indices, iterate_eval, random_crop_flip
from longtail.data.samplers import build_sampler
from longtail.errors import ConfigError, DataError

COUNTS = np.array([400, 200, 90, 40, 15, 6])
C = len(COUNTS)
TARGETS = np.random.default_rng(5).permutation(np.repeat(np.arange(C), COUNTS))
N = len(TARGETS)
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2023, 0.1994, 0.2010)
NAMES = ["instance", "class_balanced", "sqrt", "power", "progressive", "effective_number", "cben"]


def sampler(name, **kw):
    kw.setdefault("total_epochs", 10)
    return build_sampler(name, TARGETS, C, **kw)


# ---------------------------------------------------------------------------------------------
# draw_indices
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_draw_indices_cpu_equals_sampler(name):
    s = sampler(name, seed=3)
    s.set_epoch(2)
    idx = draw_indices(s, 2, "cpu")
    assert idx.dtype == torch.long and idx.device.type == "cpu"
    assert idx.tolist() == list(s)
    assert s.epoch == 2


@pytest.mark.parametrize("name", NAMES)
def test_draw_indices_distribution(name):
    """With an unrelated generator the device draw still follows class_probs."""
    draws = 120_000
    s = sampler(name, seed=1, num_samples=draws)
    g = torch.Generator().manual_seed(987)
    idx = draw_indices(s, 5, "cpu", generator=g).numpy()
    assert len(idx) == draws
    counts = np.bincount(TARGETS[idx], minlength=C)
    p = s.class_probs(5)
    # chi-square goodness of fit, C - 1 = 5 dof: P(chi2 > 25) < 2e-4
    chi2 = float((((counts - draws * p) ** 2) / (draws * p)).sum())
    assert chi2 < 25.0, (counts, draws * p)
    if name == "instance":
        # several permutations: every index appears floor/ceil(draws / N) times
        occ = np.bincount(idx, minlength=N)
        assert occ.min() >= draws // N and occ.max() <= -(-draws // N)


def test_draw_indices_ranks():
    world = 3
    full = draw_indices(sampler("cben", seed=2, num_samples=500), 1, "cpu")
    parts = [draw_indices(sampler("cben", seed=2, num_samples=500, rank=r, world_size=world), 1, "cpu") for r in range(world)]
    length = math.ceil(500 / world)
    assert all(len(p) == length for p in parts)
    inter = torch.stack(parts, 1).flatten()
    assert torch.equal(inter, torch.cat([full, full[: length * world - 500]]))


def test_draw_indices_epochs_differ_and_reproduce():
    s = sampler("instance", seed=0)
    a, b = draw_indices(s, 0, "cpu"), draw_indices(s, 1, "cpu")
    assert not torch.equal(a, b)
    assert torch.equal(a, draw_indices(s, 0, "cpu"))
    assert sorted(a.tolist()) == list(range(N))


# ---------------------------------------------------------------------------------------------
# crop / flip
# ---------------------------------------------------------------------------------------------
def tv_reference(img, top, left, flip, padding):
    h, w = img.shape[-2:]
    out = TF.crop(TF.pad(img, padding, fill=0), top, left, h, w)
    return TF.hflip(out) if flip else out


@pytest.mark.parametrize("hw,padding", [((32, 32), 4), ((10, 14), 4), ((9, 9), 2)])
def test_crop_flip_equals_torchvision(hw, padding):
    h, w = hw
    g = torch.Generator().manual_seed(0)
    combos = [(i, j, f) for i in range(2 * padding + 1) for j in range(2 * padding + 1) for f in (False, True)]
    n = len(combos)  # every offset with and without flip
    imgs = torch.randint(1, 256, (n, 3, h, w), generator=g, dtype=torch.uint8)  # nonzero: padding visible
    offsets = torch.tensor([[i, j] for i, j, _ in combos], dtype=torch.long)
    flips = torch.tensor([f for _, _, f in combos])
    out = crop_flip(imgs, offsets, flips, padding=padding)
    assert out.shape == imgs.shape and out.dtype == torch.uint8
    for k, (i, j, f) in enumerate(combos):
        assert torch.equal(out[k], tv_reference(imgs[k], i, j, f, padding)), (i, j, f)


def test_crop_flip_float_and_identity():
    x = torch.rand(4, 3, 8, 8, dtype=torch.float64)
    centre = torch.full((4, 2), 4, dtype=torch.long)
    assert torch.equal(crop_flip(x, centre, torch.zeros(4, dtype=torch.bool)), x)
    assert torch.equal(crop_flip(x, centre, torch.ones(4, dtype=torch.bool)), x.flip(-1))


def test_crop_flip_bad_shapes():
    x = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    with pytest.raises(DataError, match="offsets_yx"):
        crop_flip(x, torch.zeros(4, 3, dtype=torch.long), torch.zeros(4, dtype=torch.bool))
    with pytest.raises(DataError, match="flips"):
        crop_flip(x, torch.zeros(4, 2, dtype=torch.long), torch.zeros(3, dtype=torch.bool))
    with pytest.raises(DataError, match="images"):
        crop_flip(x[0], torch.zeros(4, 2, dtype=torch.long), torch.zeros(4, dtype=torch.bool))


def position_images(n, size=12):
    """Channel 0 = row + 1, channel 1 = column + 1 (so zero means padding)."""
    r = torch.arange(1, size + 1, dtype=torch.uint8)
    img = torch.zeros(3, size, size, dtype=torch.uint8)
    img[0] = r.view(-1, 1)
    img[1] = r.view(1, -1)
    return img.expand(n, 3, size, size).contiguous()


def test_random_crop_flip_uniform_over_offsets_and_flips():
    size, padding, n = 12, 4, 162 * 100
    out = random_crop_flip(position_images(n, size), padding, generator=torch.Generator().manual_seed(1))
    assert out.shape == (n, 3, size, size) and out.dtype == torch.uint8
    c = size // 2  # the centre pixel always comes from the image, whatever the offset
    v_row = out[:, 0, c, c].long()
    v_col = out[:, 1, c, c].long()
    flipped = (out[:, 1, c, c + 1].long() - v_col) == -1
    # output pixel (r, c) = padded pixel (top + r, left + c') with c' = W-1-c when flipped
    top = v_row - 1 + padding - c
    left = v_col - 1 + padding - torch.where(flipped, torch.full_like(v_col, size - 1 - c), torch.full_like(v_col, c))
    assert int(top.min()) == 0 and int(top.max()) == 2 * padding
    assert int(left.min()) == 0 and int(left.max()) == 2 * padding
    cell = (top * (2 * padding + 1) + left) * 2 + flipped.long()
    freq = torch.bincount(cell, minlength=162).numpy()
    assert freq.size == 162 and freq.min() > 0
    # each of the 162 outcomes expected 100 times; chi-square with 161 dof: mean 161, sd ~18
    chi2 = float(((freq - 100.0) ** 2 / 100.0).sum())
    assert chi2 < 161 + 6 * math.sqrt(2 * 161), chi2
    # and every output is exactly the deterministic core at the recovered parameters
    again = crop_flip(position_images(n, size), torch.stack([top, left], 1), flipped, padding)
    assert torch.equal(again, out)


def test_random_crop_flip_generator_reproducible():
    x = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    a = random_crop_flip(x, generator=torch.Generator().manual_seed(3))
    b = random_crop_flip(x, generator=torch.Generator().manual_seed(3))
    c = random_crop_flip(x, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


# ---------------------------------------------------------------------------------------------
# GpuLoader
# ---------------------------------------------------------------------------------------------
def index_images(n, size=12):
    """uint8 NHWC images whose every pixel of channel 0 is (index + 1), other channels random."""
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    data[..., 0] = (np.arange(n) % 255 + 1).astype(np.uint8)[:, None, None]
    return data


def denorm(x):
    m = torch.tensor(MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    s = torch.tensor(STD, dtype=torch.float64).view(1, 3, 1, 1)
    return (x.double() * s + m) * 255.0


def test_gpu_loader_batches_no_augment():
    data = index_images(N)
    s = sampler("cben", seed=4)
    loader = GpuLoader(data, TARGETS, s, batch_size=128, device="cpu", mean=MEAN, std=STD, augment="none")
    loader.set_epoch(1)
    assert s.epoch == 1
    expected_idx = draw_indices(s, 1, "cpu")
    batches = list(loader)
    assert len(batches) == len(loader) == math.ceil(N / 128)
    sizes = [len(x) for x, _ in batches]
    assert sizes[:-1] == [128] * (len(batches) - 1) and sizes[-1] == N - 128 * (len(batches) - 1)
    xs = torch.cat([x for x, _ in batches])
    ys = torch.cat([y for _, y in batches])
    assert xs.dtype == torch.float32 and ys.dtype == torch.long
    assert all(x.is_contiguous(memory_format=torch.channels_last) for x, _ in batches)
    imgs = torch.from_numpy(data).permute(0, 3, 1, 2)[expected_idx]
    m = torch.tensor(MEAN).view(1, 3, 1, 1)
    sd = torch.tensor(STD).view(1, 3, 1, 1)
    torch.testing.assert_close(xs, (imgs.float() / 255 - m) / sd, rtol=0, atol=1e-5)
    assert torch.equal(ys, torch.as_tensor(TARGETS)[expected_idx])


def test_gpu_loader_augment_labels_align_and_drop_last():
    data = index_images(200)
    targets = np.arange(200) % 4
    s = build_sampler("class_balanced", targets, 4, seed=0, num_samples=450)
    loader = GpuLoader(data, targets, s, 64, "cpu", MEAN, STD, augment="cifar", drop_last=True)
    assert len(loader) == 450 // 64
    batches = list(loader)
    assert len(batches) == 7 and all(x.shape == (64, 3, 12, 12) for x, _ in batches)
    for x, y in batches:
        pix = denorm(x)[:, 0].round()
        # padding shows as 0 in raw pixels; the image's channel 0 is constant = index + 1
        idx = pix.flatten(1).amax(1).long() - 1
        assert torch.equal(y, idx % 4)
        assert bool(((pix == 0) | (pix == (idx + 1).view(-1, 1, 1).double())).all())
    # augmentation actually happened (some zero padding visible) and is reproducible per epoch
    assert any(bool((denorm(x)[:, 0].round() == 0).any()) for x, _ in batches)
    again = list(loader)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again))
    loader.set_epoch(1)
    assert not torch.equal(list(loader)[0][0], batches[0][0])


def test_gpu_loader_ranks_and_options():
    data = index_images(N)
    s = sampler("instance", seed=1, rank=1, world_size=2)
    loader = GpuLoader(torch.from_numpy(data), torch.as_tensor(TARGETS), s, 100, "cpu", MEAN, STD,
                       augment="none", channels_last=False, dtype=torch.float64)
    xs = torch.cat([x for x, _ in loader])
    assert len(xs) == len(s) == math.ceil(N / 2)
    assert xs.dtype == torch.float64 and xs.is_contiguous()
    idx = denorm(xs)[:, 0, 0, 0].round().long() - 1
    assert idx.tolist() == [i % 255 for i in list(s)]


def test_gpu_loader_no_host_sync(monkeypatch):
    data = index_images(N)
    loader = GpuLoader(data, TARGETS, sampler("cben"), 256, "cpu", MEAN, STD, augment="cifar")

    def forbidden(*a, **k):
        raise AssertionError("host synchronization inside the loader")

    for meth in ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__"):
        monkeypatch.setattr(torch.Tensor, meth, forbidden)
    batches = list(loader)
    monkeypatch.undo()
    assert sum(len(x) for x, _ in batches) == N


def test_gpu_loader_errors():
    data = index_images(N)
    s = sampler("instance")
    with pytest.raises(ConfigError, match="augment"):
        GpuLoader(data, TARGETS, s, 32, "cpu", MEAN, STD, augment="autoaugment")
    with pytest.raises(ConfigError, match="batch_size"):
        GpuLoader(data, TARGETS, s, 0, "cpu", MEAN, STD)
    with pytest.raises(ConfigError, match="mean"):
        GpuLoader(data, TARGETS, s, 32, "cpu", MEAN[:2], STD)
    with pytest.raises(DataError, match="uint8"):
        GpuLoader(data.astype(np.float32), TARGETS, s, 32, "cpu", MEAN, STD)
    with pytest.raises(DataError, match="targets"):
        GpuLoader(data, TARGETS[:-1], s, 32, "cpu", MEAN, STD)
    with pytest.raises(DataError, match="sampler"):
        GpuLoader(data[:-1], TARGETS[:-1], s, 32, "cpu", MEAN, STD)


# ---------------------------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------------------------
def test_iterate_eval_in_order():
    data = torch.from_numpy(index_images(300))
    targets = torch.arange(300) % 7
    batches = list(iterate_eval(data, targets, 128, MEAN, STD))
    assert [len(x) for x, _ in batches] == [128, 128, 44]
    xs = torch.cat([x for x, _ in batches])
    ys = torch.cat([y for _, y in batches])
    assert torch.equal(ys, targets)
    ref = (data.permute(0, 3, 1, 2).float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    torch.testing.assert_close(xs, ref, rtol=0, atol=1e-5)
    assert batches[0][0].is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ConfigError, match="batch_size"):
        iterate_eval(data, targets, 0, MEAN, STD)
