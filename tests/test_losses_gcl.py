"""Gaussian clouded logit loss (thesis chapter 5) against independent computations."""
import math
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import longtail.losses.gcl as gcl_module
from helpers_cuda import assert_no_host_sync, capture, needs_cuda, replay
from longtail.errors import ConfigError
from longtail.losses import LOSSES, build_loss
from longtail.losses.constants import per_class_constants
from longtail.losses.gcl import GCLLoss

CIFAR10_100 = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
SHUFFLED = [83, 5000, 232, 50, 1796, 645, 2997, 139, 387, 1077]


def ref_delta(counts, cloud="log"):
    n = np.asarray(counts, dtype=np.float64)
    if cloud == "log":
        d = np.array([math.log(n.max()) - math.log(v) for v in n])
    elif cloud == "cos":
        d = np.array([math.cos(v / n.max() * math.pi / 2) for v in n])
    elif cloud == "cbrt":
        d = np.array([n.max() ** (1 / 3) - v ** (1 / 3) for v in n])
    else:
        d = np.array([n.max() ** 0.25 - v**0.25 for v in n])
    return d / d.max()


def ref_gcl_loss(cos, target, counts, eps, s=30.0, a=0.5, m=0.0, gamma=0.0, cloud="log", clamp=1.0, weight=None):
    delta = ref_delta(counts, cloud)
    cos = np.asarray(cos, dtype=np.float64)
    eps = np.asarray(eps, dtype=np.float64)
    total, wsum = 0.0, 0.0
    for i in range(cos.shape[0]):
        y = int(target[i])
        z = []
        for j in range(cos.shape[1]):
            e = min(max(eps[i, j], -clamp), clamp)
            z.append(s * (cos[i, j] - a * delta[j] * abs(e) - (m if j == y else 0.0)))  # eq. 5.11
        zmax = max(z)
        lse = zmax + math.log(sum(math.exp(v - zmax) for v in z))
        ce = lse - z[y]
        p = math.exp(-ce)
        w = 1.0 if weight is None else weight[y]
        total += w * (1 - p) ** gamma * ce
        wsum += w
    return total / wsum


def expected_abs_clamped_normal(std=1 / 3, clamp=1.0):
    """E|clamp(X, -c, c)| for X ~ N(0, std^2), by numerical integration."""
    x = np.linspace(0.0, clamp, 200001)
    pdf = np.exp(-0.5 * (x / std) ** 2) / (std * math.sqrt(2 * math.pi))
    inner = np.trapezoid(x * pdf, x) if hasattr(np, "trapezoid") else np.trapz(x * pdf, x)
    tail = 0.5 * math.erfc(clamp / (std * math.sqrt(2)))
    return 2 * inner + 2 * clamp * tail


def batch(counts, n=16, seed=0, dtype=torch.float32, noise_scale=0.6):
    g = torch.Generator().manual_seed(seed)
    cos = torch.rand(n, len(counts), generator=g, dtype=torch.float64) * 2 - 1
    target = torch.randint(0, len(counts), (n,), generator=g)
    eps = torch.randn(n, len(counts), generator=g, dtype=torch.float64) * noise_scale  # some beyond +-1
    return cos.to(dtype), target, eps.to(dtype)


def capture_logits(monkeypatch):
    """Make the GCL module's cross-entropy record its input logits."""
    seen = []

    def cross_entropy(input, target, *args, **kwargs):
        seen.append(input.detach().clone())
        return F.cross_entropy(input, target, *args, **kwargs)

    monkeypatch.setattr(gcl_module, "F", types.SimpleNamespace(cross_entropy=cross_entropy))
    return seen


# ---------------------------------------------------------------------------------------------
# cloud sizes
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("counts", [CIFAR10_100, SHUFFLED, [3, 900, 41, 41]])
@pytest.mark.parametrize("cloud", ["log", "cos", "cbrt", "qrt"])
def test_cloud_sizes(counts, cloud):
    loss = GCLLoss(counts, cloud=cloud)
    np.testing.assert_allclose(loss.delta.numpy(), ref_delta(counts, cloud), rtol=1e-6, atol=1e-7)
    assert loss.delta[int(np.argmax(counts))].item() == 0.0  # the head: exactly no cloud
    assert loss.delta[int(np.argmin(counts))].item() == pytest.approx(1.0)
    np.testing.assert_allclose(per_class_constants(loss)["delta"], ref_delta(counts, cloud), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("cloud", ["log", "cos", "cbrt", "qrt"])
def test_equal_counts_have_no_cloud(cloud):
    assert GCLLoss([50] * 4, cloud=cloud).delta.abs().max().item() == 0.0


def test_bad_parameters():
    with pytest.raises(ConfigError):
        GCLLoss(CIFAR10_100, cloud="sqrt")
    with pytest.raises(ConfigError):
        GCLLoss(CIFAR10_100, weight=[1.0, 2.0])
    with pytest.raises(ConfigError):
        build_loss("gcl", CIFAR10_100, sigma=1)


# ---------------------------------------------------------------------------------------------
# deterministic part (fixed noise)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("counts", [CIFAR10_100, SHUFFLED])
@pytest.mark.parametrize(
    "params",
    [
        {},
        {"m": 0.1, "s": 20.0, "gamma": 1.0},
        {"noise_mul": 1.0, "cloud": "qrt"},
        {"cloud": "cos", "m": 0.2},
        {"cloud": "cbrt", "gamma": 2.0, "s": 15.0},
    ],
)
def test_fixed_noise_matches_reference(counts, params):
    loss = build_loss("gcl", counts, **params)
    cos, target, eps = batch(counts, n=24, seed=1)
    got = loss(cos, target, noise=eps)
    assert got.dtype == torch.float32
    want = ref_gcl_loss(
        cos.double().numpy(), target.numpy(), counts, eps.double().numpy(),
        s=params.get("s", 30.0), a=params.get("noise_mul", 0.5), m=params.get("m", 0.0),
        gamma=params.get("gamma", 0.0), cloud=params.get("cloud", "log"),
    )
    assert got.item() == pytest.approx(want, rel=1e-5)
    loss.eval()  # an explicit noise is used in any mode
    assert loss(cos, target, noise=eps).item() == pytest.approx(want, rel=1e-5)


def test_clouded_logits_formula():
    loss = GCLLoss(CIFAR10_100, m=0.1)
    cos, target, eps = batch(CIFAR10_100, n=5, seed=2, noise_scale=2.0)
    out = loss.clouded_logits(cos, target, eps).double().numpy()
    delta = ref_delta(CIFAR10_100)
    for i in range(5):
        for j in range(10):
            e = min(max(eps[i, j].item(), -1.0), 1.0)
            want = 30 * (cos[i, j].item() - 0.5 * delta[j] * abs(e) - (0.1 if j == target[i] else 0.0))
            assert out[i, j] == pytest.approx(want, rel=1e-5, abs=1e-5)


def test_weights_and_drw():
    counts = CIFAR10_100
    cos, target, eps = batch(counts, n=40, seed=3)
    w_static = [1.0 + 0.1 * j for j in range(10)]
    n = np.asarray(counts, dtype=np.float64)
    w_drw = (1 - 0.9999) / (1 - 0.9999**n)
    w_drw = w_drw / w_drw.sum() * 10
    loss = GCLLoss(counts, weight=w_static, drw_epoch=160)
    for epoch, w in [(0, np.array(w_static)), (160, np.array(w_static) * w_drw)]:
        loss.set_progress(epoch, 200)
        want = ref_gcl_loss(cos.double().numpy(), target.numpy(), counts, eps.double().numpy(), weight=w)
        assert loss(cos, target, noise=eps).item() == pytest.approx(want, rel=1e-5), epoch
    focal = GCLLoss(counts, weight=w_static, gamma=1.0)
    want = ref_gcl_loss(cos.double().numpy(), target.numpy(), counts, eps.double().numpy(), gamma=1.0, weight=w_static)
    assert focal(cos, target, noise=eps).item() == pytest.approx(want, rel=1e-5)


# ---------------------------------------------------------------------------------------------
# reductions
# ---------------------------------------------------------------------------------------------
def test_equal_counts_or_zero_amplitude_is_scaled_cosine_ce():
    cos, target, _ = batch([10] * 10, n=32, seed=4)
    want = F.cross_entropy(30.0 * cos, target)
    equal = GCLLoss([10] * 10)  # training mode: noise drawn, but every cloud size is 0
    torch.testing.assert_close(equal(cos, target), want)
    silent = GCLLoss(CIFAR10_100, noise_mul=0.0)
    torch.testing.assert_close(silent(cos, target), want)


def test_eval_mode_has_no_noise_and_predict_is_scaled_cosine():
    loss = GCLLoss(CIFAR10_100, m=0.1, s=20.0)
    cos, target, _ = batch(CIFAR10_100, n=32, seed=5)
    loss.eval()
    onehot = F.one_hot(target, 10).float()
    want = F.cross_entropy(20.0 * (cos - 0.1 * onehot), target)
    first = loss(cos, target)
    torch.testing.assert_close(first, want)
    torch.testing.assert_close(loss(cos, target), first)  # deterministic
    torch.testing.assert_close(loss.predict(cos), 20.0 * cos)
    loss.train()
    torch.testing.assert_close(loss.predict(cos), 20.0 * cos)
    assert loss.predict(cos.bfloat16()).dtype == torch.float32


# ---------------------------------------------------------------------------------------------
# noise statistics (training forward)
# ---------------------------------------------------------------------------------------------
def test_noise_statistics(monkeypatch):
    torch.manual_seed(0)
    seen = capture_logits(monkeypatch)
    counts = SHUFFLED
    s, a = 30.0, 0.5
    loss = GCLLoss(counts, s=s, noise_mul=a)
    n = 20000
    cos = torch.rand(n, 10) * 2 - 1
    target = torch.randint(0, 10, (n,))
    loss(cos, target)
    shift = (seen[-1].double() - s * cos.double()).numpy()  # = -s * a * delta_j * |eps_ij|
    delta = ref_delta(counts)
    e_abs = expected_abs_clamped_normal()
    assert e_abs == pytest.approx((1 / 3) * math.sqrt(2 / math.pi), rel=2e-3)
    head = int(np.argmax(counts))
    assert torch.equal(seen[-1][:, head], s * cos[:, head])  # the head class has no cloud, exactly
    assert np.all(shift <= 1e-5)  # the cloud only lowers logits
    for j in range(10):
        want = -s * a * delta[j] * e_abs
        se = s * a * delta[j] * 0.21 / math.sqrt(n)  # sd(|eps|) < 0.21
        assert shift[:, j].mean() == pytest.approx(want, abs=5 * se + 1e-6), j
        # |eps| <= 1 after the clamp: the shift never exceeds s * a * delta_j
        assert shift[:, j].min() >= -s * a * delta[j] * (1 + 1e-6) - 1e-5
    # fresh per sample and per class: the shifts of two cloudy classes are uncorrelated
    tail = int(np.argmin(counts))
    other = counts.index(83)
    corr = np.corrcoef(shift[:, tail], shift[:, other])[0, 1]
    assert abs(corr) < 0.05
    # the clamp: the fraction of |eps| at exactly 1 is P(|N(0,1/3)| > 1) ~ 0.27%
    at_bound = np.mean(np.isclose(shift[:, tail], -s * a, rtol=0, atol=1e-4))
    assert 0.0005 < at_bound < 0.006
    # and a new draw at every forward
    loss(cos[:100], target[:100])
    loss(cos[:100], target[:100])
    assert not torch.equal(seen[-1], seen[-2])


def test_noise_applies_to_the_target_class_too(monkeypatch):
    torch.manual_seed(1)
    seen = capture_logits(monkeypatch)
    loss = GCLLoss(CIFAR10_100)
    n = 4000
    cos = torch.zeros(n, 10)
    target = torch.full((n,), 9)  # every sample is of the tail class
    loss(cos, target)
    shift = seen[-1][:, 9].double().numpy()
    assert shift.mean() == pytest.approx(-30 * 0.5 * expected_abs_clamped_normal(), rel=0.03)


def test_generator_makes_noise_reproducible():
    cos, target, _ = batch(CIFAR10_100, n=32, seed=6)
    a = GCLLoss(CIFAR10_100, generator=torch.Generator().manual_seed(7))(cos, target)
    b = GCLLoss(CIFAR10_100, generator=torch.Generator().manual_seed(7))(cos, target)
    c = GCLLoss(CIFAR10_100, generator=torch.Generator().manual_seed(8))(cos, target)
    torch.testing.assert_close(a, b)
    assert a.item() != c.item()


# ---------------------------------------------------------------------------------------------
# gradients and extreme inputs
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "params", [{}, {"m": 0.1, "s": 20.0}, {"gamma": 1.0, "focal_detach": False, "m": 0.1}, {"drw_epoch": 0}]
)
def test_gradcheck_float64_fixed_noise(params):
    counts = [40, 7, 300, 2, 90]
    loss = GCLLoss(counts, s=5.0, **{k: v for k, v in params.items() if k != "s"})
    cos, target, eps = batch(counts, n=6, seed=8, dtype=torch.float64, noise_scale=0.3)
    cos.requires_grad_(True)
    assert loss(cos, target, noise=eps).dtype == torch.float64
    assert torch.autograd.gradcheck(lambda c: loss(c, target, noise=eps), (cos,), eps=1e-6, atol=1e-6)


def test_focal_detach_matches_code_gradient():
    """With the code's detached factor the gradient is (1 - p_i)^gamma times the CE gradient."""
    counts = CIFAR10_100
    cos, target, eps = batch(counts, n=8, seed=9, dtype=torch.float64)
    loss = GCLLoss(counts, gamma=1.0)
    c1 = cos.clone().requires_grad_(True)
    loss(c1, target, noise=eps).backward()
    c2 = cos.clone().requires_grad_(True)
    z = loss.clouded_logits(c2, target, eps)
    ce = F.cross_entropy(z, target, reduction="none")
    factor = (1 - torch.exp(-ce)).detach()
    (factor * ce).mean().backward()
    torch.testing.assert_close(c1.grad, c2.grad)


def test_extreme_inputs_are_finite():
    n = len(CIFAR10_100)
    target = torch.arange(n)
    for params in [{}, {"gamma": 1.0, "m": 0.1}]:
        loss = GCLLoss(CIFAR10_100, **params)
        cases = [
            torch.full((n, n), 1e4),
            torch.full((n, n), -1e4),
            torch.where(torch.eye(n, dtype=torch.bool), -1e4, 1e4),
            torch.where(torch.eye(n, dtype=torch.bool), 1.0, -1.0),
            torch.where(torch.eye(n, dtype=torch.bool), -1.0, 1.0),
        ]
        for cos in cases:
            cos = cos.clone().requires_grad_(True)
            value = loss(cos, target)
            value.backward()
            assert torch.isfinite(value) and torch.isfinite(cos.grad).all()
        cos = torch.rand(8, n, requires_grad=True)
        value = loss(cos, torch.full((8,), 3))  # one class only
        value.backward()
        assert torch.isfinite(value) and torch.isfinite(cos.grad).all()


def test_bf16_input_gives_float32():
    loss = GCLLoss(CIFAR10_100)
    cos, target, eps = batch(CIFAR10_100, n=8, seed=10)
    out = loss(cos.bfloat16(), target, noise=eps.bfloat16())
    assert out.dtype == torch.float32
    want = ref_gcl_loss(cos.bfloat16().double().numpy(), target.numpy(), CIFAR10_100, eps.bfloat16().double().numpy())
    assert out.item() == pytest.approx(want, rel=1e-5)
    assert loss(cos.bfloat16(), target).dtype == torch.float32  # random noise path


def test_registered_and_flags():
    assert "gcl" in LOSSES
    loss = build_loss("gcl", CIFAR10_100, m=0.1, s=20.0, gamma=1.0)
    assert loss.cosine and not loss.needs_features


@needs_cuda
def test_cuda_graph_draws_fresh_noise_on_replay():
    dev = torch.device("cuda")
    loss = GCLLoss(CIFAR10_100).to(dev)
    cos, target, _ = batch(CIFAR10_100, n=64, seed=11)
    cos, target = cos.to(dev), target.to(dev)
    assert_no_host_sync(lambda: loss(cos, target))
    graph, out = capture(lambda: loss(cos, target))
    values = [replay(graph, out) for _ in range(3)]
    assert len(set(values)) == 3 and all(math.isfinite(v) for v in values)
