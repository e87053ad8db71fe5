"""Feature-balanced loss (thesis chapter 4) against independent computations."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers_cuda import assert_no_host_sync, capture, needs_cuda, replay
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


def ref_alpha(curriculum, t, T, variant, S=200):
    """Table 4.4 with t = epoch index from 0, T = total epochs; code: parabolic (t/(T-10))^2 in
    the code's run of S epochs, its offset kept at the same fraction (10 T/S epochs) when T != S."""
    table = {
        "linear_decrease": 1 - t / T,
        "linear_increase": t / T,
        "sine": math.sin(t / T * math.pi / 2),
        "cosine": 1 - math.cos(t / T * math.pi / 2),
        "parabolic": (t / T) ** 2,
    }
    if variant == "code" and curriculum == "parabolic":
        return (t / (T - 10 * T / S)) ** 2
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


def test_code_parabolic_at_full_length_is_the_code_form_exactly():
    """At T = S the scaled offset is exactly 10: the values are bit-identical to (t/(T-10))^2."""
    for t in range(200):
        assert fbl_alpha("parabolic", t, 200, "code") == (t / (200 - 10)) ** 2
    for S in (180, 90):  # ImageNet-LT / iNaturalist and Places-LT recipes
        for t in range(S):
            assert fbl_alpha("parabolic", t, S, "code", schedule_epochs=S) == (t / (S - 10)) ** 2


def test_code_parabolic_offset_scales_with_the_run():
    # T = 20: the last epoch is at the fraction 19/20 = 190/200 of the run, as in the 200-epoch run
    assert fbl_alpha("parabolic", 19, 20, "code") == fbl_alpha("parabolic", 190, 200, "code") == 1.0
    for T in (200, 100, 40, 20, 10):
        for t in range(T):  # the same fraction of the run gives the same alpha
            want = fbl_alpha("parabolic", t * (200 // T), 200, "code")
            assert fbl_alpha("parabolic", t, T, "code") == pytest.approx(want, rel=1e-12)
    # no blow-up in short runs (a fixed 10-epoch offset gave 3.6 at T = 20 and 100 at T = 11)
    bound = (200 / 190) ** 2
    for T in range(1, 401):
        top = max(fbl_alpha("parabolic", t, T, "code") for t in range(T))
        assert top <= bound * (1 + 1e-12), T
    assert fbl_alpha("parabolic", 10, 11, "code") == pytest.approx((10 / (11 * 0.95)) ** 2)
    assert fbl_alpha("parabolic", 29, 30, "code") == pytest.approx((29 / 28.5) ** 2)
    loss = FeatureBalancedLoss(CIFAR10_100)
    loss.set_progress(10, 11)
    assert loss.alpha.item() == pytest.approx((10 / 10.45) ** 2)
    # a recipe of S epochs: the offset is 10 epochs at T = S and 10 T/S otherwise
    assert fbl_alpha("parabolic", 89, 90, "code", schedule_epochs=180) == pytest.approx((89 / 85) ** 2)
    with pytest.raises(ConfigError):
        FeatureBalancedLoss(CIFAR10_100, schedule_epochs=10)


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
    # zero-norm (dead) features: no stimulus, plain CE; one-class batch
    z = torch.randn(5, n, requires_grad=True)
    f = torch.zeros(5, 8, requires_grad=True)
    value = loss(z, torch.full((5,), 9), f)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(z.grad).all() and torch.isfinite(f.grad).all()


def old_balanced_logits(loss, z, f):
    """eq. (4.6) as computed before dead samples were special-cased (float32 path)."""
    norm = torch.linalg.vector_norm(f.flatten(1), dim=1, keepdim=True)
    return z - loss.alpha.float() * loss.strength.float() / (norm + loss.eps)


def test_dead_sample_gets_no_stimulus_and_the_rest_is_unchanged():
    loss = FeatureBalancedLoss(CIFAR10_100)
    loss.set_progress(199, 200)
    z, f, target = batch(CIFAR10_100, n=16, d=12, seed=11)
    # normal inputs: bit-identical to eq. (4.6) as computed before
    assert torch.equal(loss.balanced_logits(z, f), old_balanced_logits(loss, z, f))
    # one dead sample (all features 0) whose target is the rarest class: before, its loss was ~1e13
    f[3] = 0.0
    target[3] = 9
    assert old_balanced_logits(loss, z, f)[3, 0] - old_balanced_logits(loss, z, f)[3, 9] > 1e13
    zb = loss.balanced_logits(z, f)
    assert torch.equal(zb[3], z[3])  # plain logits for the dead sample
    live = torch.arange(16) != 3
    assert torch.equal(zb[live], old_balanced_logits(loss, z, f)[live])
    zz = z.clone().requires_grad_(True)
    ff = f.clone().requires_grad_(True)
    value = loss(zz, target, ff)
    value.backward()
    alpha = ref_alpha("parabolic", 199, 200, "code")
    per_live = [ref_fbl_loss(z[i:i + 1].double().numpy(), f[i:i + 1].double().numpy(), target[i:i + 1].numpy(),
                             CIFAR10_100, alpha) for i in range(16) if i != 3]
    dead = F.cross_entropy(z[3:4].double(), target[3:4]).item()
    assert value.item() == pytest.approx((sum(per_live) + dead) / 16, rel=1e-5)
    assert value.item() < 20  # of the order of a normal batch, not swamped
    assert torch.isfinite(zz.grad).all() and torch.isfinite(ff.grad).all()
    assert torch.equal(ff.grad[3], torch.zeros(12))  # no stimulus, no feature gradient
    want_dead = (torch.softmax(z[3].double(), 0) - F.one_hot(target[3], 10)) / 16
    torch.testing.assert_close(zz.grad[3].double(), want_dead, rtol=1e-5, atol=1e-7)


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


@needs_cuda
def test_cuda_graph_sees_alpha_update_without_recapture():
    dev = torch.device("cuda")
    loss = FeatureBalancedLoss(CIFAR10_100).to(dev)
    z, f, target = batch(CIFAR10_100, n=16, seed=7)
    z, f, target = z.to(dev), f.to(dev), target.to(dev)
    assert_no_host_sync(lambda: loss(z, target, f))
    graph, out = capture(lambda: loss(z, target, f))
    for epoch in [0, 100, 199]:
        loss.set_progress(epoch, 200)
        got = replay(graph, out)
        want = ref_fbl_loss(
            z.double().cpu().numpy(), f.double().cpu().numpy(), target.cpu().numpy(), CIFAR10_100,
            ref_alpha("parabolic", epoch, 200, "code"),
        )
        assert got == pytest.approx(want, rel=1e-4), epoch
