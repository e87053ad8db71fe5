"""KPS loss with gradient adjustment (thesis chapter 3) against independent computations."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers_cuda import assert_no_host_sync, capture, needs_cuda, replay
from longtail.errors import ConfigError
from longtail.losses import LOSSES, build_loss
from longtail.losses.constants import format_constants, per_class_constants
from longtail.losses.kps import KPSLoss

CIFAR10_100 = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
# unsorted counts: every per-class constant must follow the counts, not the index order
SHUFFLED = [83, 5000, 232, 50, 1796, 645, 2997, 139, 387, 1077]


# ---------------------------------------------------------------------------------------------
# independent reference (float64 numpy, explicit loops)
# ---------------------------------------------------------------------------------------------
def ref_constants(counts, n_base=50.0, m_max=0.2, s_base=15.0):
    n = np.asarray(counts, dtype=np.float64)
    r_prime = np.array([math.log(ni * n_base / n.min()) for ni in n])  # eq. 3.27
    r = r_prime / r_prime.min()
    m_prime = np.array([r.max() + 1.0 - ri for ri in r])  # eq. 3.28
    m = m_prime * m_max / m_prime.max()  # eq. 3.29
    return r, m, m_prime, s_base * m_prime  # eq. 3.30


def ref_kps_loss(cos, target, counts, s=15.0, s_base=15.0, m_max=0.2, ga=False, clamp=(15.0, 50.0), weight=None):
    r, m, m_prime, s_ga = ref_constants(counts, m_max=m_max, s_base=s_base)
    if clamp is not None:
        s_ga = np.clip(s_ga, clamp[0], clamp[1])
    cos = np.asarray(cos, dtype=np.float64)
    total, wsum = 0.0, 0.0
    for i in range(cos.shape[0]):
        y = int(target[i])
        scale = s_ga[y] if ga else s
        z = [scale * (r[j] * cos[i, j] - (m[j] if j == y else 0.0)) for j in range(cos.shape[1])]
        zmax = max(z)
        lse = zmax + math.log(sum(math.exp(v - zmax) for v in z))
        w = 1.0 if weight is None else weight[y]
        total += w * (lse - z[y])
        wsum += w
    return total / wsum


def ref_effective_weights(counts, beta):
    n = np.asarray(counts, dtype=np.float64)
    w = np.array([(1.0 - beta) / (1.0 - beta**ni) for ni in n])
    return w / w.sum() * len(n)


def batch(counts, n=16, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    cos = torch.rand(n, len(counts), generator=g, dtype=torch.float64) * 2 - 1
    target = torch.randint(0, len(counts), (n,), generator=g)
    return cos.to(dtype), target


# ---------------------------------------------------------------------------------------------
# constants
# ---------------------------------------------------------------------------------------------
def test_cifar10_rho100_constants_stated_in_the_issue():
    loss = KPSLoss(CIFAR10_100)
    radius = loss.radius.tolist()
    ga = loss.ga_scale.tolist()
    n_min_cls = int(np.argmin(CIFAR10_100))
    head = int(np.argmax(CIFAR10_100))
    # eq. 3.27: the class with n_min has radius 1, the head the largest radius
    assert round(radius[n_min_cls], 2) == 1.00 and radius[n_min_cls] == pytest.approx(1.0, abs=1e-6)
    assert round(radius[head], 2) == 2.18 and round(max(radius), 2) == 2.18 and round(min(radius), 2) == 1.00
    # GA scale s_base * m': the head gets 15.0, the tail 32.7 (within the [s, 50] clamp)
    assert round(ga[head], 1) == 15.0 and round(ga[n_min_cls], 1) == 32.7
    assert round(min(ga), 1) == 15.0 and round(max(ga), 1) == 32.7 and max(ga) <= 50.0
    # margin: tail gets m_max, head the least
    assert loss.margin[n_min_cls].item() == pytest.approx(0.2, abs=1e-7)
    assert int(torch.argmin(loss.margin)) == head


@pytest.mark.parametrize("counts", [CIFAR10_100, SHUFFLED, [7, 3, 1000, 1, 12]])
@pytest.mark.parametrize("m_max", [0.2, 0.5])
def test_constants_follow_the_formulas(counts, m_max):
    r, m, m_prime, s_ga = ref_constants(counts, m_max=m_max)
    loss = KPSLoss(counts, m_max=m_max, ga_clamp=None)
    np.testing.assert_allclose(loss.radius.numpy(), r, rtol=1e-6)
    np.testing.assert_allclose(loss.margin.numpy(), m, rtol=1e-6)
    np.testing.assert_allclose(loss.m_prime.numpy(), m_prime, rtol=1e-6)
    np.testing.assert_allclose(loss.ga_scale.numpy(), s_ga, rtol=1e-6)
    # m'_i = log(n_base * n_max / n_i) / log(n_base) (METHODS.md equivalent form)
    n = np.asarray(counts, dtype=np.float64)
    np.testing.assert_allclose(loss.m_prime.numpy(), np.log(50 * n.max() / n) / np.log(50), rtol=1e-6)


def test_ga_clamp_code_default_and_none():
    counts = [5000, 1]
    r, m, m_prime, s_ga = ref_constants(counts, n_base=2.0)
    assert s_ga.max() > 50  # the raw GA scale exceeds the code's cap here
    clamped = KPSLoss(counts, n_base=2.0)
    np.testing.assert_allclose(clamped.ga_scale.numpy(), np.clip(s_ga, 15.0, 50.0), rtol=1e-6)
    assert clamped.ga_scale.max().item() == 50.0
    free = KPSLoss(counts, n_base=2.0, ga_clamp=None)
    np.testing.assert_allclose(free.ga_scale.numpy(), s_ga, rtol=1e-6)
    custom = KPSLoss(counts, n_base=2.0, ga_clamp=(20.0, 30.0))
    np.testing.assert_allclose(custom.ga_scale.numpy(), np.clip(s_ga, 20.0, 30.0), rtol=1e-6)
    # the lower clamp of the code default is s, not 15
    low = KPSLoss(CIFAR10_100, s=20.0)
    assert low.ga_scale.min().item() == 20.0


def test_bad_parameters_raise_config_error():
    with pytest.raises(ConfigError):
        KPSLoss(CIFAR10_100, n_base=1.0)
    with pytest.raises(ConfigError):
        KPSLoss(CIFAR10_100, ga_clamp="thesis")
    with pytest.raises(ConfigError):
        KPSLoss(CIFAR10_100, s=0)
    with pytest.raises(ConfigError):
        build_loss("kps", CIFAR10_100, no_such_param=1)


# ---------------------------------------------------------------------------------------------
# loss values
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("counts", [CIFAR10_100, SHUFFLED])
@pytest.mark.parametrize("ga", [False, True])
def test_loss_matches_reference(counts, ga):
    cos, target = batch(counts, n=32, seed=1)
    loss = build_loss("kps", counts)
    loss.set_progress(150 if ga else 10, 200)
    got = loss(cos, target)
    assert got.dtype == torch.float32
    want = ref_kps_loss(cos.double().numpy(), target.numpy(), counts, ga=ga)
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_thesis_variant_m_max_and_no_clamp():
    counts = [100000, 20, 1]  # raw GA scale above 50 for the rarest class
    r, m, m_prime, s_ga = ref_constants(counts, m_max=0.5)
    assert s_ga.max() > 50
    cos, target = batch(counts, n=24, seed=2)
    loss = KPSLoss(counts, m_max=0.5, ga_clamp=None, ga_epoch=0)
    want = ref_kps_loss(cos.double().numpy(), target.numpy(), counts, m_max=0.5, ga=True, clamp=None)
    assert loss(cos, target).item() == pytest.approx(want, rel=1e-5)


def test_reduces_to_scaled_cosine_ce_with_equal_counts_and_no_margin():
    counts = [300] * 6
    loss = KPSLoss(counts, m_max=0.0)
    assert torch.equal(loss.radius, torch.ones(6, dtype=torch.float64))
    cos, target = batch(counts, n=20, seed=3)
    want = F.cross_entropy(15.0 * cos, target)
    torch.testing.assert_close(loss(cos, target), want)
    loss.set_progress(120, 200)  # GA: m' = 1 everywhere, so s_y = s_base = s
    torch.testing.assert_close(loss(cos, target), want)


def test_predict_is_scaled_cosine_without_radius_or_margin():
    loss = KPSLoss(CIFAR10_100)
    cos, _ = batch(CIFAR10_100, n=5)
    torch.testing.assert_close(loss.predict(cos), 15.0 * cos)
    loss.set_progress(199, 200)
    torch.testing.assert_close(loss.predict(cos), 15.0 * cos)
    assert loss.predict(cos.bfloat16()).dtype == torch.float32


# ---------------------------------------------------------------------------------------------
# schedules
# ---------------------------------------------------------------------------------------------
def test_ga_switches_exactly_at_ga_epoch_in_place():
    loss = KPSLoss(CIFAR10_100, ga_epoch=120)
    cos, target = batch(CIFAR10_100, n=32, seed=4)
    plain = ref_kps_loss(cos.double().numpy(), target.numpy(), CIFAR10_100, ga=False)
    ga = ref_kps_loss(cos.double().numpy(), target.numpy(), CIFAR10_100, ga=True)
    assert abs(plain - ga) > 1e-3
    ptr = loss.ga_active.data_ptr()
    for epoch, want in [(0, plain), (119, plain), (120, ga), (121, ga), (199, ga), (5, plain)]:
        loss.set_progress(epoch, 200)
        assert loss.ga_active.data_ptr() == ptr  # the buffer is updated in place
        assert loss(cos, target).item() == pytest.approx(want, rel=1e-5), epoch
    assert loss.ga_active.dtype == torch.float32


def test_ga_none_and_ga_zero():
    cos, target = batch(CIFAR10_100, n=32, seed=5)
    plain = ref_kps_loss(cos.double().numpy(), target.numpy(), CIFAR10_100, ga=False)
    ga = ref_kps_loss(cos.double().numpy(), target.numpy(), CIFAR10_100, ga=True)
    off = KPSLoss(CIFAR10_100, ga_epoch=None)
    off.set_progress(199, 200)
    assert off(cos, target).item() == pytest.approx(plain, rel=1e-5)
    on = KPSLoss(CIFAR10_100, ga_epoch=0)  # before any set_progress call
    assert on(cos, target).item() == pytest.approx(ga, rel=1e-5)


def test_drw_switches_at_drw_epoch():
    loss = KPSLoss(CIFAR10_100, ga_epoch=None, drw_epoch=160, beta=0.9999)
    cos, target = batch(CIFAR10_100, n=40, seed=6)
    w = ref_effective_weights(CIFAR10_100, 0.9999)
    plain = ref_kps_loss(cos.double().numpy(), target.numpy(), CIFAR10_100)
    weighted = ref_kps_loss(cos.double().numpy(), target.numpy(), CIFAR10_100, weight=w)
    assert abs(plain - weighted) > 1e-3
    for epoch, want in [(0, plain), (159, plain), (160, weighted), (199, weighted)]:
        loss.set_progress(epoch, 200)
        assert loss(cos, target).item() == pytest.approx(want, rel=1e-5), epoch


# ---------------------------------------------------------------------------------------------
# gradients and extreme inputs
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("epoch", [0, 150])
@pytest.mark.parametrize("drw", [None, 100])
def test_gradcheck_float64(epoch, drw):
    counts = [40, 7, 300, 2, 90]
    loss = KPSLoss(counts, drw_epoch=drw)
    loss.set_progress(epoch, 200)
    cos, target = batch(counts, n=6, seed=7, dtype=torch.float64)
    cos.requires_grad_(True)
    assert loss(cos, target).dtype == torch.float64
    assert torch.autograd.gradcheck(lambda c: loss(c, target), (cos,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("epoch", [0, 150])
def test_extreme_inputs_are_finite(epoch):
    loss = KPSLoss(CIFAR10_100)
    loss.set_progress(epoch, 200)
    n = len(CIFAR10_100)
    target = torch.arange(n)
    cases = [
        torch.full((n, n), 1e4),
        torch.full((n, n), -1e4),
        torch.where(torch.eye(n, dtype=torch.bool), -1e4, 1e4),
        torch.where(torch.eye(n, dtype=torch.bool), 1.0, -1.0),
        torch.where(torch.eye(n, dtype=torch.bool), -1.0, 1.0),
        torch.ones(n, n),
    ]
    for cos in cases:
        cos = cos.clone().requires_grad_(True)
        value = loss(cos, target)
        value.backward()
        assert torch.isfinite(value) and torch.isfinite(cos.grad).all()
    # a batch of one class only
    cos = torch.rand(8, n, requires_grad=True)
    value = loss(cos, torch.full((8,), 9))
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(cos.grad).all()


def test_bf16_input_gives_float32():
    loss = KPSLoss(CIFAR10_100)
    cos, target = batch(CIFAR10_100, n=8, seed=8)
    out = loss(cos.bfloat16(), target)
    assert out.dtype == torch.float32
    want = ref_kps_loss(cos.bfloat16().double().numpy(), target.numpy(), CIFAR10_100)
    assert out.item() == pytest.approx(want, rel=1e-5)


def test_shape_check():
    loss = KPSLoss(CIFAR10_100)
    with pytest.raises(ValueError):
        loss(torch.zeros(4, 9), torch.zeros(4, dtype=torch.long))


# ---------------------------------------------------------------------------------------------
# registry and constants table
# ---------------------------------------------------------------------------------------------
def test_registered_and_flags():
    assert "kps" in LOSSES
    loss = build_loss("kps", CIFAR10_100, m_max=0.5, ga_epoch=None)
    assert isinstance(loss, KPSLoss) and loss.cosine and not loss.needs_features


def test_per_class_constants_and_table():
    loss = KPSLoss(CIFAR10_100)
    consts = per_class_constants(loss)
    assert list(consts) == ["radius", "margin", "m_prime", "ga_scale"]
    r, m, m_prime, s_ga = ref_constants(CIFAR10_100)
    np.testing.assert_allclose(consts["radius"], r, rtol=1e-6)
    np.testing.assert_allclose(consts["ga_scale"], s_ga, rtol=1e-6)
    table = format_constants("kps", CIFAR10_100, decimals=2)
    lines = table.splitlines()
    assert len(lines) == 2 + 10
    assert lines[0].split() == ["class", "count", "radius", "margin", "m_prime", "ga_scale"]
    head = lines[2].split()
    tail = lines[-1].split()
    assert head[:3] == ["0", "5000", "2.18"] and head[-1] == "15.00"
    assert tail[:3] == ["9", "50", "1.00"] and tail[-1] == "32.66"
    assert format_constants(loss) == format_constants("kps", CIFAR10_100)
    with pytest.raises(ConfigError):
        format_constants("kps")


# ---------------------------------------------------------------------------------------------
# CUDA: no host sync in forward, schedule switch seen by a captured graph
# ---------------------------------------------------------------------------------------------
@needs_cuda
def test_cuda_graph_sees_ga_switch_without_recapture():
    dev = torch.device("cuda")
    loss = KPSLoss(CIFAR10_100).to(dev)
    cos, target = batch(CIFAR10_100, n=32, seed=9)
    cos, target = cos.to(dev), target.to(dev)
    plain = ref_kps_loss(cos.double().cpu().numpy(), target.cpu().numpy(), CIFAR10_100, ga=False)
    ga = ref_kps_loss(cos.double().cpu().numpy(), target.cpu().numpy(), CIFAR10_100, ga=True)
    assert_no_host_sync(lambda: loss(cos, target))
    graph, out = capture(lambda: loss(cos, target))
    loss.set_progress(0, 200)
    assert replay(graph, out) == pytest.approx(plain, rel=1e-4)
    loss.set_progress(120, 200)
    assert replay(graph, out) == pytest.approx(ga, rel=1e-4)
