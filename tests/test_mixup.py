"""Input mixup as training uses it: MixupSchedule (batch mixing, Beta sampling) and the mixed loss
with every registered loss."""
from __future__ import annotations

import math

import pytest
import torch

from longtail.errors import ConfigError
from longtail.losses import LOSSES, MixupSchedule, build_loss, mixup_loss

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


# -- MixupSchedule (what TrainStep mixes with) -----------------------------------------------------
CPU = torch.device("cpu")


@pytest.mark.parametrize("alpha", [1.0, 0.2, 4.0])
def test_mix_is_convex_combination_with_permutation(alpha):
    n = 16
    x = torch.randn(n, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    y = torch.arange(n) * 7  # distinct labels reveal the permutation
    mix = MixupSchedule(alpha, CPU)
    torch.manual_seed(2)
    mix.start_epoch(3)
    xm, ya, yb, lam = mix.mix(x, y)
    assert lam.dim() == 0 and lam.dtype == torch.float32 and lam.device == x.device
    assert 0.0 <= lam.item() <= 1.0 and lam.item() == mix.lams[0].item()
    assert torch.equal(ya, y)
    perm = yb // 7
    assert sorted(perm.tolist()) == list(range(n))  # a permutation
    assert perm.tolist() != list(range(n))  # and not the identity (16 elements)
    torch.testing.assert_close(xm, lam * x + (1 - lam) * x[perm])
    assert xm.shape == x.shape and xm.dtype == x.dtype


def test_one_coefficient_per_step_in_order_then_the_last_one():
    mix = MixupSchedule(1.0, CPU)
    torch.manual_seed(0)
    mix.start_epoch(3)
    lams = mix.lams.clone()
    assert lams.shape == (4,) and len(set(lams.tolist())) == 4
    x, y = torch.ones(4, 2), torch.arange(4)
    used = [mix.mix(x, y)[3].item() for _ in range(6)]
    assert used == lams.tolist() + [lams[-1].item()] * 2  # past the end: the last one again
    # a new epoch restarts the counter and keeps the tensor's address (a CUDA graph reads it)
    ptr = mix.lams.data_ptr()
    mix.start_epoch(3)
    assert int(mix.index) == 0 and mix.lams.data_ptr() == ptr and not torch.equal(mix.lams, lams)
    assert mix.mix(x, y)[3].item() == mix.lams[0].item()


def test_mix_is_reproducible_from_the_global_seed():
    """The trainer re-seeds the global RNG every epoch; the epoch's mixing follows from it."""
    x, y = torch.randn(8, 5), torch.arange(8)

    def epoch(seed):
        torch.manual_seed(seed)
        mix = MixupSchedule(1.0, CPU)
        mix.start_epoch(2)
        return [mix.mix(x, y) for _ in range(2)]

    a, b, c = epoch(11), epoch(11), epoch(12)
    for u, v in zip(a, b):
        assert all(torch.equal(s, t) for s, t in zip(u, v))
    assert not torch.equal(a[0][3], c[0][3]) and not torch.equal(a[0][2], c[0][2])


@pytest.mark.parametrize("alpha", [0.0, -1.0, float("nan"), float("inf")])
def test_alpha_must_be_positive(alpha):
    with pytest.raises(ConfigError, match="mixup alpha"):
        MixupSchedule(alpha, CPU)


def test_mix_keeps_low_precision_dtype():
    x = torch.randn(6, 3).bfloat16()
    mix = MixupSchedule(1.0, CPU)
    mix.start_epoch(1)
    xm, _, _, lam = mix.mix(x, torch.arange(6))
    assert xm.dtype == torch.bfloat16 and lam.dtype == torch.float32


def _epoch_lams(alpha, steps, seed):
    torch.manual_seed(seed)
    mix = MixupSchedule(alpha, CPU)
    mix.start_epoch(steps)
    return mix.lams.double()


@pytest.mark.parametrize("alpha", [1.0, 0.2, 2.0])
def test_beta_sampling_moments(alpha):
    lams = _epoch_lams(alpha, 3999, seed=123)
    assert torch.isfinite(lams).all() and (lams >= 0).all() and (lams <= 1).all()
    var = 1.0 / (4.0 * (2.0 * alpha + 1.0))  # variance of Beta(a, a)
    se = math.sqrt(var / lams.numel())
    assert abs(lams.mean().item() - 0.5) < 5 * se
    assert abs(lams.var().item() - var) < 0.1 * var
    # symmetric: lam and 1 - lam equally likely
    assert abs((lams < 0.5).double().mean().item() - 0.5) < 0.05


def test_small_alpha_concentrates_at_ends():
    lams = _epoch_lams(0.05, 1999, seed=0)
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
    torch.manual_seed(4)
    mix = MixupSchedule(1.0, CPU)
    mix.start_epoch(1)
    xm, ya, yb, lam = mix.mix(x, y)
    z = xm @ w
    if loss.cosine:
        z = torch.nn.functional.normalize(xm, dim=1) @ torch.nn.functional.normalize(w, dim=0)
    f = xm.relu() + 0.1 if loss.needs_features else None
    val = mixup_loss(loss, z, ya, yb, lam, features=f)
    val.backward()
    assert torch.isfinite(val) and torch.isfinite(w.grad).all()
