"""Feature-balanced loss (thesis chapter 4) against independent computations."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from longtail.errors import ConfigError
from longtail.losses import LOSSES, build_loss
from longtail.losses.constants import per_class_constants
from longtail.losses.fbl import FeatureBalancedLoss, fbl_alpha

CIFAR10_100 = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
SHUFFLED = [83, 5000, 232, 50, 1796, 645, 2997, 139, 387, 1077]


def ref_lambda(counts, stimulus="normalized"):
    n = np.asarray(counts, dtype=np.float64)
    lam = np.array([math.log(n.max()) - math.log(ni) for ni in n])  # eq. 4.4
    if stimulus == "normalized":
        lam = lam / lam.max() if lam.max() > 0 else np.zeros_like(lam)
    return lam


def ref_alpha(curriculum, t, T, variant):
    """Table 4.4 with t = epoch index from 0, T = total epochs; code: parabolic (t/(T-10))^2."""
    table = {
        "linear_decrease": 1 - t / T,
        "linear_increase": t / T,
        "sine": math.sin(t / T * math.pi / 2),
        "cosine": 1 - math.cos(t / T * math.pi / 2),
        "parabolic": (t / T) ** 2,
    }
    if variant == "code" and curriculum == "parabolic":
        return (t / (T - 10)) ** 2
    return table[curriculum]


def ref_fbl_loss(z, f, target, counts, alpha, A=60.0, stimulus="normalized", eps=1e-12):
    lam = ref_lambda(counts, stimulus)
    z = np.asarray(z, dtype=np.float64)
    f = np.asarray(f, dtype=np.float64)
    total = 0.0
    for i in range(z.shape[0]):
        norm = math.sqrt(sum(v * v for v in f[i]))
        zb = [z[i, j] - alpha * A * lam[j] / (norm + eps) for j in range(z.shape[1])]  # eq. 4.6
        zmax = max(zb)
        lse = zmax + math.log(sum(math.exp(v - zmax) for v in zb))
        total += lse - zb[int(target[i])]
    return total / z.shape[0]


def batch(counts, n=16, d=12, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    z = (torch.randn(n, len(counts), generator=g, dtype=torch.float64) * 3).to(dtype)
    f = (torch.rand(n, d, generator=g, dtype=torch.float64) * 2).to(dtype)  # post-ReLU features
    target = torch.randint(0, len(counts), (n,), generator=g)
    return z, f, target


# ---------------------------------------------------------------------------------------------
# curricula
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("curriculum", ["linear_decrease", "linear_increase", "sine", "cosine", "parabolic"])
@pytest.mark.parametrize("variant", ["code", "thesis"])
def test_alpha_schedule_matches_table_4_4(curriculum, variant):
    loss = FeatureBalancedLoss(CIFAR10_100, curriculum=curriculum, curriculum_variant=variant)
    ptr = loss.alpha.data_ptr()
    for epoch in [0, 1, 37, 100, 150, 189, 190, 195, 199]:
        loss.set_progress(epoch, 200)
        want = ref_alpha(curriculum, epoch, 200, variant)
        assert loss.alpha.item() == pytest.approx(want, rel=1e-6, abs=1e-7), (curriculum, variant, epoch)
        assert fbl_alpha(curriculum, epoch, 200, variant) == pytest.approx(want, rel=1e-12, abs=1e-15)
        assert loss.alpha.data_ptr() == ptr  # updated in place


def test_code_parabolic_is_uncapped_and_thesis_is_not():
    assert fbl_alpha("parabolic", 199, 200, "code") == pytest.approx((199 / 190) ** 2)
    assert fbl_alpha("parabolic", 199, 200, "code") > 1.0
    assert fbl_alpha("parabolic", 190, 200, "code") == pytest.approx(1.0)
    assert fbl_alpha("parabolic", 199, 200, "thesis") == pytest.approx((199 / 200) ** 2)
    # short runs (T <= 10): the code's offset is dropped
    assert fbl_alpha("parabolic", 3, 5, "code") == pytest.approx((3 / 5) ** 2)


def test_initial_alpha_before_set_progress():
    assert FeatureBalancedLoss(CIFAR10_100).alpha.item() == 0.0
    assert FeatureBalancedLoss(CIFAR10_100, curriculum="linear_decrease").alpha.item() == 1.0


def test_bad_names_raise_config_error():
    with pytest.raises(ConfigError):
        FeatureBalancedLoss(CIFAR10_100, curriculum="quadratic")
    with pytest.raises(ConfigError):
        FeatureBalancedLoss(CIFAR10_100, curriculum_variant="paper")
    with pytest.raises(ConfigError):
        FeatureBalancedLoss(CIFAR10_100, stimulus="log")


# ---------------------------------------------------------------------------------------------
# stimulus and loss values
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("counts", [CIFAR10_100, SHUFFLED])
@pytest.mark.parametrize("stimulus", ["normalized", "raw"])
def test_stimulus(counts, stimulus):
    loss = FeatureBalancedLoss(counts, stimulus=stimulus)
    lam = ref_lambda(counts, stimulus)
    np.testing.assert_allclose(loss.lam.numpy(), lam, rtol=1e-6, atol=1e-7)
    A = 60.0 if stimulus == "normalized" else 1.0  # A=None defaults
    np.testing.assert_allclose(loss.strength.numpy(), A * lam, rtol=1e-6, atol=1e-6)
    assert loss.lam[int(np.argmax(counts))].item() == 0.0
    consts = per_class_constants(loss)
    np.testing.assert_allclose(consts["lambda"], lam, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("counts", [CIFAR10_100, SHUFFLED])
@pytest.mark.parametrize(
    "params",
    [
        {},
        {"curriculum_variant": "thesis"},
        {"stimulus": "raw", "curriculum_variant": "thesis"},
        {"stimulus": "raw", "A": 5.0, "curriculum": "sine"},
        {"A": 150.0, "curriculum": "linear_decrease"},
    ],
)
def test_loss_matches_reference(counts, params):
    loss = build_loss("fbl", counts, **params)
    z, f, target = batch(counts, n=24, seed=1)
    stimulus = params.get("stimulus", "normalized")
    A = params.get("A", 60.0 if stimulus == "normalized" else 1.0)
    for epoch in [0, 80, 195]:
        loss.set_progress(epoch, 200)
        alpha = ref_alpha(params.get("curriculum", "parabolic"), epoch, 200, params.get("curriculum_variant", "code"))
        got = loss(z, target, f)
        assert got.dtype == torch.float32
        want = ref_fbl_loss(z.double().numpy(), f.double().numpy(), target.numpy(), counts, alpha, A=A, stimulus=stimulus)
        assert got.item() == pytest.approx(want, rel=1e-5), epoch


def test_alpha_zero_is_plain_ce_and_predict_is_plain_logits():
    loss = FeatureBalancedLoss(CIFAR10_100)
    z, f, target = batch(CIFAR10_100, n=20, seed=2)
    loss.set_progress(0, 200)  # parabolic: alpha(0) = 0
    torch.testing.assert_close(loss(z, target, f), F.cross_entropy(z, target))
    loss.set_progress(150, 200)
    assert abs(loss(z, target, f).item() - F.cross_entropy(z, target).item()) > 1e-3
    torch.testing.assert_close(loss.predict(z, f), z)
    torch.testing.assert_close(loss.predict(z), z)


def test_equal_counts_give_plain_ce():
    loss = FeatureBalancedLoss([100] * 5)
    z, f, target = batch([100] * 5, n=10, seed=3)
    loss.set_progress(150, 200)
    torch.testing.assert_close(loss(z, target, f), F.cross_entropy(z, target))


def test_features_are_required_and_flattened():
    loss = FeatureBalancedLoss(CIFAR10_100)
    z, f, target = batch(CIFAR10_100, n=6, d=12, seed=4)
    with pytest.raises(ValueError):
        loss(z, target)
    with pytest.raises(ValueError):
        loss(z, target, f[:3])
    loss.set_progress(100, 200)
    torch.testing.assert_close(loss(z, target, f.view(6, 3, 2, 2)), loss(z, target, f))


# ---------------------------------------------------------------------------------------------
# gradients and extreme inputs
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stimulus", ["normalized", "raw"])
def test_gradcheck_float64(stimulus):
    counts = [40, 7, 300, 2, 90]
    loss = FeatureBalancedLoss(counts, stimulus=stimulus, A=3.0)
    loss.set_progress(150, 200)
    z, f, target = batch(counts, n=6, d=4, seed=5, dtype=torch.float64)
    f = f + 0.5  # keep away from the non-differentiable zero norm
    z.requires_grad_(True)
    f.requires_grad_(True)
    assert loss(z, target, f).dtype == torch.float64
    assert torch.autograd.gradcheck(lambda a, b: loss(a, target, b), (z, f), eps=1e-6, atol=1e-6)


def test_extreme_inputs_are_finite():
    loss = FeatureBalancedLoss(CIFAR10_100)
    loss.set_progress(199, 200)  # alpha > 1 (code parabolic)
    n = len(CIFAR10_100)
    target = torch.arange(n)
    feats = [torch.zeros(n, 8), torch.rand(n, 8), torch.full((n, 8), 1e-30), torch.full((n, 8), 1e4)]
    logits = [torch.full((n, n), 1e4), torch.full((n, n), -1e4), torch.where(torch.eye(n, dtype=torch.bool), -1e4, 1e4)]
    for f0 in feats:
        for z0 in logits:
            z = z0.clone().requires_grad_(True)
            f = f0.clone().requires_grad_(True)
            value = loss(z, target, f)
            value.backward()
            assert torch.isfinite(value), (f0[0, 0], z0[0, 0])
            assert torch.isfinite(z.grad).all() and torch.isfinite(f.grad).all()
    # zero-norm features: the penalty is large but finite; one-class batch
    z = torch.randn(5, n, requires_grad=True)
    f = torch.zeros(5, 8, requires_grad=True)
    value = loss(z, torch.full((5,), 9), f)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(z.grad).all() and torch.isfinite(f.grad).all()


def test_bf16_input_gives_float32():
    loss = FeatureBalancedLoss(CIFAR10_100)
    loss.set_progress(120, 200)
    z, f, target = batch(CIFAR10_100, n=8, seed=6)
    out = loss(z.bfloat16(), target, f.bfloat16())
    assert out.dtype == torch.float32
    want = ref_fbl_loss(
        z.bfloat16().double().numpy(), f.bfloat16().double().numpy(), target.numpy(), CIFAR10_100,
        ref_alpha("parabolic", 120, 200, "code"),
    )
    assert out.item() == pytest.approx(want, rel=1e-5)


def test_registered_and_flags():
    assert "fbl" in LOSSES
    loss = build_loss("fbl", CIFAR10_100)
    assert loss.needs_features and not loss.cosine


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_sees_alpha_update_without_recapture():
    dev = torch.device("cuda")
    loss = FeatureBalancedLoss(CIFAR10_100).to(dev)
    z, f, target = batch(CIFAR10_100, n=16, seed=7)
    z, f, target = z.to(dev), f.to(dev), target.to(dev)
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss(z, target, f)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            loss(z, target, f)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = loss(z, target, f)
    for epoch in [0, 100, 199]:
        loss.set_progress(epoch, 200)
        graph.replay()
        torch.cuda.synchronize()
        want = ref_fbl_loss(
            z.double().cpu().numpy(), f.double().cpu().numpy(), target.cpu().numpy(), CIFAR10_100,
            ref_alpha("parabolic", epoch, 200, "code"),
        )
        assert out.item() == pytest.approx(want, rel=1e-4), epoch
