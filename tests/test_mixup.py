"""Input mixup: batch mixing, Beta sampling and the mixed loss with every registered loss."""
from __future__ import annotations

import math

import pytest
import torch

from longtail.losses import LOSSES, build_loss, mixup_batch, mixup_loss

COUNTS = [40, 500, 3, 120, 10, 300]
C = len(COUNTS)


def _features(loss, n):
    return torch.rand(n, 8, generator=torch.Generator().manual_seed(3)) + 0.1 if loss.needs_features else None


def _inputs(loss, n=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, C, generator=g)
    if loss.cosine:
        z = torch.tanh(z)
    y = torch.randint(0, C, (n,), generator=g)
    return z, y


# -- mixup_batch ---------------------------------------------------------------------------------
@pytest.mark.parametrize("alpha", [1.0, 0.2, 4.0])
def test_mixup_batch_is_convex_combination_with_permutation(alpha):
    n = 16
    x = torch.randn(n, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    y = torch.arange(n) * 7  # distinct labels reveal the permutation
    xm, ya, yb, lam = mixup_batch(x, y, alpha, generator=torch.Generator().manual_seed(2))
    assert lam.dim() == 0 and lam.dtype == torch.float32 and lam.device == x.device
    assert 0.0 <= lam.item() <= 1.0
    assert torch.equal(ya, y)
    perm = yb // 7
    assert sorted(perm.tolist()) == list(range(n))  # a permutation
    torch.testing.assert_close(xm, lam * x + (1 - lam) * x[perm])
    assert xm.shape == x.shape and xm.dtype == x.dtype


def test_mixup_batch_reproducible_with_generator():
    x = torch.randn(8, 5)
    y = torch.arange(8)
    a = mixup_batch(x, y, 1.0, generator=torch.Generator().manual_seed(5))
    b = mixup_batch(x, y, 1.0, generator=torch.Generator().manual_seed(5))
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    c = mixup_batch(x, y, 1.0, generator=torch.Generator().manual_seed(6))
    assert not torch.equal(a[3], c[3])


def test_mixup_batch_uses_global_rng_without_generator():
    x, y = torch.randn(8, 5), torch.arange(8)
    torch.manual_seed(11)
    a = mixup_batch(x, y, 1.0)
    torch.manual_seed(11)
    b = mixup_batch(x, y, 1.0)
    assert torch.equal(a[0], b[0]) and torch.equal(a[3], b[3])


@pytest.mark.parametrize("alpha", [0.0, -1.0])
def test_mixup_disabled_is_identity(alpha):
    x, y = torch.randn(6, 3), torch.arange(6)
    xm, ya, yb, lam = mixup_batch(x, y, alpha)
    assert xm is x and torch.equal(ya, y) and torch.equal(yb, y)
    assert lam.dim() == 0 and lam.item() == 1.0 and lam.dtype == torch.float32


def test_mixup_batch_keeps_low_precision_dtype():
    x = torch.randn(6, 3).bfloat16()
    xm, _, _, lam = mixup_batch(x, torch.arange(6), 1.0, generator=torch.Generator().manual_seed(0))
    assert xm.dtype == torch.bfloat16 and lam.dtype == torch.float32


@pytest.mark.parametrize("alpha", [1.0, 0.2, 2.0])
def test_beta_sampling_moments(alpha):
    g = torch.Generator().manual_seed(123)
    x, y = torch.zeros(2, 1), torch.arange(2)
    lams = torch.stack([mixup_batch(x, y, alpha, generator=g)[3] for _ in range(4000)]).double()
    assert torch.isfinite(lams).all() and (lams >= 0).all() and (lams <= 1).all()
    var = 1.0 / (4.0 * (2.0 * alpha + 1.0))  # variance of Beta(a, a)
    se = math.sqrt(var / lams.numel())
    assert abs(lams.mean().item() - 0.5) < 5 * se
    assert abs(lams.var().item() - var) < 0.1 * var
    # symmetric: lam and 1 - lam equally likely
    assert abs((lams < 0.5).double().mean().item() - 0.5) < 0.05


def test_small_alpha_concentrates_at_ends():
    g = torch.Generator().manual_seed(0)
    x, y = torch.zeros(2, 1), torch.arange(2)
    lams = torch.stack([mixup_batch(x, y, 0.05, generator=g)[3] for _ in range(2000)])
    assert ((lams < 0.05) | (lams > 0.95)).double().mean() > 0.7


# -- mixup_loss ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", LOSSES.names())
def test_mixup_loss_lam1_equals_plain_loss(name):
    loss = build_loss(name, COUNTS)
    z, y = _inputs(loss)
    f = _features(loss, z.shape[0])
    yb = torch.roll(y, 1)
    torch.manual_seed(0)  # losses with per-call noise draw the same noise for the first call
    mixed = mixup_loss(loss, z, y, yb, torch.tensor(1.0), features=f)
    torch.manual_seed(0)
    plain = loss(z, y, features=f)
    torch.testing.assert_close(mixed, plain)
    assert mixed.dtype == torch.float32 and mixed.dim() == 0


@pytest.mark.parametrize("name", LOSSES.names())
def test_mixup_loss_combines_both_targets(name):
    loss = build_loss(name, COUNTS)
    z, y = _inputs(loss, seed=1)
    f = _features(loss, z.shape[0])
    yb = torch.roll(y, 3)
    lam = 0.3
    torch.manual_seed(1)
    mixed = mixup_loss(loss, z, y, yb, torch.tensor(lam), features=f)
    torch.manual_seed(1)
    la = loss(z, y, features=f)
    lb = loss(z, yb, features=f)
    torch.testing.assert_close(mixed, lam * la + (1 - lam) * lb)
    # a python float lam works too
    torch.manual_seed(1)
    torch.testing.assert_close(mixup_loss(loss, z, y, yb, lam, features=f), mixed)


@pytest.mark.parametrize("name", LOSSES.names())
def test_mixup_end_to_end_gradients_finite(name):
    loss = build_loss(name, COUNTS)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(12, 5, generator=g)
    y = torch.randint(0, C, (12,), generator=g)
    w = torch.randn(5, C, generator=g, requires_grad=True)
    xm, ya, yb, lam = mixup_batch(x, y, 1.0, generator=g)
    z = xm @ w
    if loss.cosine:
        z = torch.nn.functional.normalize(xm, dim=1) @ torch.nn.functional.normalize(w, dim=0)
    f = xm.relu() + 0.1 if loss.needs_features else None
    val = mixup_loss(loss, z, ya, yb, lam, features=f)
    val.backward()
    assert torch.isfinite(val) and torch.isfinite(w.grad).all()
