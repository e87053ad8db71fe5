"""Baseline losses: values against independent loop/numpy references, gradients, edge cases.

References are written here from the papers' formulas with explicit Python loops in float64;
they never call longtail code.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from longtail.errors import ConfigError
from longtail.losses import LOSSES, build_loss

# The baselines owned by this test module (the thesis losses are tested elsewhere).
BASELINES = (
    "ce", "cb_ce", "focal", "cb_focal", "ldam", "la", "posthoc_la", "balanced_softmax", "eql",
    "cosface", "arcface", "label_aware_smoothing",
)
COSINE = {"ldam", "cosface", "arcface"}
# Deliberately not sorted by size: per-class constants must come from the counts, not the index.
COUNTS = [40, 500, 3, 120, 10, 300]
C = len(COUNTS)
RTOL, ATOL = 2e-5, 1e-6


# -- independent references ----------------------------------------------------------------------
def ref_log_softmax(row):
    """log softmax of one row, explicit loop, float64 (entries may be -inf)."""
    m = max(row)
    s = sum(math.exp(v - m) for v in row)
    return [v - m - math.log(s) for v in row]


def ref_cb_weights(counts, beta):
    w = [(1.0 - beta) / (1.0 - beta ** n) for n in counts]
    tot = sum(w)
    return [x * len(counts) / tot for x in w]


def ref_ce(z, y, eps=0.0, weights=None):
    """Weighted-mean CE with uniform label smoothing, loop form."""
    num = den = 0.0
    for row, t in zip(z.tolist(), y.tolist()):
        lp = ref_log_softmax(row)
        loss = -(1 - eps) * lp[t] - eps * sum(lp) / len(lp)
        w = 1.0 if weights is None else weights[t]
        num += w * loss
        den += w
    return num / den


def ref_focal(z, y, gamma, weights=None):
    tot = 0.0
    for row, t in zip(z.tolist(), y.tolist()):
        lp = ref_log_softmax(row)[t]
        p = math.exp(lp)
        w = 1.0 if weights is None else weights[t]
        tot += w * (1 - p) ** gamma * (-lp)
    return tot / z.shape[0]


def rand_inputs(n=16, seed=0, cosine=False, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    if cosine:
        z = torch.rand(n, C, generator=g, dtype=torch.float64) * 1.7 - 0.8  # in (-0.8, 0.9)
    else:
        z = torch.randn(n, C, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, C, (n,), generator=g)
    y[:C] = torch.arange(C)  # every class present
    return z.to(dtype), y


def close(actual, expected, rtol=RTOL, atol=ATOL):
    assert actual.dtype == torch.float32
    assert actual.dim() == 0
    np.testing.assert_allclose(actual.item(), expected, rtol=rtol, atol=atol)


# -- registry ------------------------------------------------------------------------------------
def test_all_baselines_registered():
    for name in BASELINES:
        assert name in LOSSES, name


@pytest.mark.parametrize("name", BASELINES)
def test_builds_from_counts_only_and_cosine_flag(name):
    loss = build_loss(name, COUNTS)
    assert loss.cosine == (name in COSINE)
    assert not loss.needs_features


def test_unknown_hparam_is_config_error():
    with pytest.raises(ConfigError):
        build_loss("ce", COUNTS, gamma=2.0)


@pytest.mark.parametrize("name,bad", [
    ("ce", {"label_smoothing": 1.0}), ("ce", {"drw_epoch": -1}), ("focal", {"gamma": -1}),
    ("ldam", {"max_m": -0.1}), ("ldam", {"s": 0}), ("la", {"tau": -1}), ("eql", {"gamma": 1.5}),
    ("arcface", {"m": 4.0}), ("label_aware_smoothing", {"shape": "wavy"}),
    ("label_aware_smoothing", {"head_eps": 1.5}), ("cb_ce", {"beta": 1.0}),
])
def test_bad_hparams_rejected(name, bad):
    with pytest.raises(ConfigError):
        build_loss(name, COUNTS, **bad)


# -- CE / class-balanced / DRW -------------------------------------------------------------------
@pytest.mark.parametrize("ls", [0.0, 0.1, 0.3])
def test_ce_value(ls):
    z, y = rand_inputs()
    close(build_loss("ce", COUNTS, label_smoothing=ls)(z, y), ref_ce(z, y, eps=ls))


@pytest.mark.parametrize("beta", [0.9999, 0.99])
def test_cb_ce_value(beta):
    z, y = rand_inputs(seed=1)
    close(build_loss("cb_ce", COUNTS, beta=beta)(z, y), ref_ce(z, y, weights=ref_cb_weights(COUNTS, beta)))


def test_cb_ce_with_smoothing_value():
    z, y = rand_inputs(seed=2)
    w = ref_cb_weights(COUNTS, 0.9999)
    close(build_loss("cb_ce", COUNTS, label_smoothing=0.2)(z, y), ref_ce(z, y, eps=0.2, weights=w))


@pytest.mark.parametrize("name", ["ce", "focal", "ldam", "posthoc_la"])
def test_drw_switches_exactly_at_drw_epoch(name):
    drw = 7
    loss = build_loss(name, COUNTS, drw_epoch=drw)
    z, y = rand_inputs(seed=3, cosine=name == "ldam")
    w = ref_cb_weights(COUNTS, 0.9999)

    def ref(weights):
        if name == "focal":
            return ref_focal(z, y, 1.0, weights)
        if name == "ldam":
            m = [n ** -0.25 for n in COUNTS]
            m = [v * 0.5 / max(m) for v in m]
            zz = 30.0 * (z.double() - torch.nn.functional.one_hot(y, C) * torch.tensor(m)[y][:, None])
            return ref_ce(zz, y, weights=weights)
        return ref_ce(z, y, weights=weights)

    buf = loss.drw.weight
    ptr = buf.data_ptr()
    for epoch in (0, drw - 1):
        loss.set_progress(epoch, 200)
        close(loss(z, y), ref(None))
    for epoch in (drw, drw + 50):
        loss.set_progress(epoch, 200)
        close(loss(z, y), ref(w))
    loss.set_progress(0, 200)  # resuming an earlier epoch switches back
    close(loss(z, y), ref(None))
    assert loss.drw.weight is buf and buf.data_ptr() == ptr  # updated in place (CUDA graphs)


def test_ce_without_drw_ignores_progress():
    loss = build_loss("ce", COUNTS)
    z, y = rand_inputs(seed=4)
    loss.set_progress(199, 200)
    close(loss(z, y), ref_ce(z, y))


# -- focal ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0])
def test_focal_value(gamma):
    z, y = rand_inputs(seed=5)
    close(build_loss("focal", COUNTS, gamma=gamma)(z, y), ref_focal(z, y, gamma))


def test_focal_gamma0_is_ce():
    z, y = rand_inputs(seed=6)
    torch.testing.assert_close(build_loss("focal", COUNTS, gamma=0.0)(z, y), build_loss("ce", COUNTS)(z, y))


@pytest.mark.parametrize("gamma", [1.0, 2.0])
def test_cb_focal_value(gamma):
    z, y = rand_inputs(seed=7)
    w = ref_cb_weights(COUNTS, 0.9999)
    close(build_loss("cb_focal", COUNTS, gamma=gamma)(z, y), ref_focal(z, y, gamma, w))


# -- LDAM ----------------------------------------------------------------------------------------
def ref_ldam(cos, y, max_m, s, counts=COUNTS):
    m = [n ** -0.25 for n in counts]
    m = [v * max_m / max(m) for v in m]
    tot = 0.0
    for row, t in zip(cos.tolist(), y.tolist()):
        logits = [s * (c - (m[t] if j == t else 0.0)) for j, c in enumerate(row)]
        tot += -ref_log_softmax(logits)[t]
    return tot / cos.shape[0]


@pytest.mark.parametrize("max_m,s", [(0.5, 30.0), (0.3, 15.0)])
def test_ldam_value(max_m, s):
    cos, y = rand_inputs(seed=8, cosine=True)
    close(build_loss("ldam", COUNTS, max_m=max_m, s=s)(cos, y), ref_ldam(cos, y, max_m, s))


def test_ldam_margins_largest_for_rarest_class():
    loss = build_loss("ldam", COUNTS)
    m = loss.margins.tolist()
    assert m[COUNTS.index(min(COUNTS))] == pytest.approx(0.5)
    assert m[COUNTS.index(max(COUNTS))] == pytest.approx(0.5 * (3 / 500) ** 0.25)


def test_ldam_max_m_zero_is_scaled_cosine_ce():
    cos, y = rand_inputs(seed=9, cosine=True)
    close(build_loss("ldam", COUNTS, max_m=0.0)(cos, y), ref_ce(30.0 * cos.double(), y))
    torch.testing.assert_close(build_loss("ldam", COUNTS, max_m=0.0)(cos, y),
                               build_loss("ce", COUNTS)(30.0 * cos, y))


# -- logit adjustment / balanced softmax ---------------------------------------------------------
def ref_adjusted_ce(z, y, offsets):
    zz = z.double() + torch.tensor(offsets, dtype=torch.float64)
    return ref_ce(zz, y)


@pytest.mark.parametrize("tau", [0.5, 1.0, 2.0])
def test_la_value(tau):
    z, y = rand_inputs(seed=10)
    tot = sum(COUNTS)
    close(build_loss("la", COUNTS, tau=tau)(z, y), ref_adjusted_ce(z, y, [tau * math.log(n / tot) for n in COUNTS]))


def test_la_tau0_is_ce():
    z, y = rand_inputs(seed=11)
    torch.testing.assert_close(build_loss("la", COUNTS, tau=0.0)(z, y), build_loss("ce", COUNTS)(z, y))


def test_balanced_softmax_value():
    z, y = rand_inputs(seed=12)
    close(build_loss("balanced_softmax", COUNTS)(z, y), ref_adjusted_ce(z, y, [math.log(n) for n in COUNTS]))


def test_balanced_softmax_equals_la_tau1():
    for seed in range(5):
        z, y = rand_inputs(seed=seed)
        a = build_loss("balanced_softmax", COUNTS)(z, y)
        b = build_loss("la", COUNTS, tau=1.0)(z, y)
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)  # equal up to float32 rounding


@pytest.mark.parametrize("tau", [1.0, 0.5])
def test_posthoc_la_trains_with_ce_and_predicts_adjusted(tau):
    z, y = rand_inputs(seed=13)
    loss = build_loss("posthoc_la", COUNTS, tau=tau)
    close(loss(z, y), ref_ce(z, y))
    tot = sum(COUNTS)
    expected = z.double() - tau * torch.tensor([math.log(n / tot) for n in COUNTS], dtype=torch.float64)
    torch.testing.assert_close(loss.predict(z).double(), expected, rtol=1e-6, atol=1e-5)
    # the correction favours the rare class: equal logits predict the rarest class
    assert loss.predict(torch.zeros(1, C)).argmax().item() == COUNTS.index(min(COUNTS))


# -- equalization loss ---------------------------------------------------------------------------
def ref_eql(z, y, lam, suppress_prob_one=True):
    tot_n = sum(COUNTS)
    tot = 0.0
    for row, t in zip(z.tolist(), y.tolist()):
        den = 0.0
        for k, v in enumerate(row):
            rare = COUNTS[k] / tot_n < lam
            w = 1.0 - (1.0 if (suppress_prob_one and rare) else 0.0) * (0.0 if k == t else 1.0)
            den += w * math.exp(v)
        tot += -(row[t] - math.log(den))
    return tot / z.shape[0]


@pytest.mark.parametrize("lam", [5.5e-3, 0.05, 0.2])
def test_eql_value(lam):
    z, y = rand_inputs(seed=14)
    close(build_loss("eql", COUNTS, lambda_=lam)(z, y), ref_eql(z, y, lam))


def test_eql_gamma0_is_ce_and_random_gamma_is_between():
    z, y = rand_inputs(seed=15)
    ce = build_loss("ce", COUNTS)(z, y)
    torch.testing.assert_close(build_loss("eql", COUNTS, lambda_=0.2, gamma=0.0)(z, y), ce)
    full = build_loss("eql", COUNTS, lambda_=0.2, gamma=1.0)(z, y)
    assert full < ce  # removing terms from the denominator lowers the loss
    torch.manual_seed(0)
    rnd = build_loss("eql", COUNTS, lambda_=0.2, gamma=0.5)
    vals = torch.stack([rnd(z, y) for _ in range(50)])
    assert (vals <= ce + 1e-6).all() and (vals >= full - 1e-6).all()
    assert vals.std() > 0  # actually random


# -- CosFace / ArcFace ---------------------------------------------------------------------------
def ref_margin(cos, y, s, target_fn):
    tot = 0.0
    for row, t in zip(cos.tolist(), y.tolist()):
        logits = [s * (target_fn(c) if j == t else c) for j, c in enumerate(row)]
        tot += -ref_log_softmax(logits)[t]
    return tot / cos.shape[0]


@pytest.mark.parametrize("s,m", [(30.0, 0.35), (64.0, 0.2)])
def test_cosface_value(s, m):
    cos, y = rand_inputs(seed=16, cosine=True)
    close(build_loss("cosface", COUNTS, s=s, m=m)(cos, y), ref_margin(cos, y, s, lambda c: c - m))


def ref_arc_target(m, easy=False):
    def f(c):
        theta = math.acos(c)
        if easy:
            return math.cos(theta + m) if c > 0 else c
        return math.cos(theta + m) if theta + m < math.pi else c - m * math.sin(m)
    return f


@pytest.mark.parametrize("m,easy", [(0.5, False), (0.3, False), (0.5, True)])
def test_arcface_value(m, easy):
    cos, y = rand_inputs(seed=17, cosine=True)
    cos = cos * (0.99 / 0.9)  # some targets beyond pi - m use the fallback
    cos[0, y[0]] = -0.97
    loss = build_loss("arcface", COUNTS, m=m, easy_margin=easy)
    close(loss(cos, y), ref_margin(cos, y, 30.0, ref_arc_target(m, easy)))


@pytest.mark.parametrize("name", ["arcface", "cosface", "ldam"])
def test_cosine_losses_at_cos_exactly_pm1(name):
    loss = build_loss(name, COUNTS)
    cos = torch.tensor([[1.0, -1.0, 0.0, 1.0, -1.0, 0.5]] * 4)
    y = torch.tensor([0, 1, 3, 4])
    cos.requires_grad_(True)
    val = loss(cos, y)
    val.backward()
    assert torch.isfinite(val) and torch.isfinite(cos.grad).all()


# -- label-aware smoothing -----------------------------------------------------------------------
def ref_las_eps(counts, head, tail, shape, power=2.0):
    n1, nk = max(counts), min(counts)
    out = []
    for n in counts:
        r = (n - nk) / (n1 - nk)
        if shape == "concave":
            out.append(tail + (head - tail) * math.sin(math.pi / 2 * r))
        elif shape == "linear":
            out.append(tail + (head - tail) * r)
        elif shape == "convex":
            out.append(head + (head - tail) * math.sin(3 * math.pi / 2 + math.pi / 2 * r))
        else:
            out.append(tail + (head - tail) * r ** power)
    return out


@pytest.mark.parametrize("shape", ["concave", "linear", "convex", "exp"])
@pytest.mark.parametrize("head,tail", [(0.3, 0.0), (0.4, 0.1)])
def test_label_aware_smoothing_value(shape, head, tail):
    z, y = rand_inputs(seed=18)
    eps = ref_las_eps(COUNTS, head, tail, shape)
    loss = build_loss("label_aware_smoothing", COUNTS, head_eps=head, tail_eps=tail, shape=shape)
    np.testing.assert_allclose(loss.smoothing.numpy(), eps, rtol=1e-6, atol=1e-7)
    assert eps[COUNTS.index(max(COUNTS))] == pytest.approx(head)
    assert eps[COUNTS.index(min(COUNTS))] == pytest.approx(tail, abs=1e-12)
    ref = 0.0
    for row, t in zip(z.tolist(), y.tolist()):
        lp = ref_log_softmax(row)
        q = [eps[t] / C + (1 - eps[t] if j == t else 0.0) for j in range(C)]
        ref += -sum(qj * lpj for qj, lpj in zip(q, lp))
    close(loss(z, y), ref / z.shape[0])


def test_label_aware_smoothing_shapes_ordered():
    """concave >= linear >= convex for every class (same endpoints)."""
    e = {s: build_loss("label_aware_smoothing", COUNTS, shape=s).smoothing for s in ("concave", "linear", "convex")}
    assert (e["concave"] >= e["linear"] - 1e-7).all() and (e["linear"] >= e["convex"] - 1e-7).all()


def test_label_aware_smoothing_equal_eps_is_label_smoothed_ce():
    z, y = rand_inputs(seed=19)
    las = build_loss("label_aware_smoothing", COUNTS, head_eps=0.2, tail_eps=0.2)
    torch.testing.assert_close(las(z, y), build_loss("ce", COUNTS, label_smoothing=0.2)(z, y))


# -- properties over all baselines ---------------------------------------------------------------
@pytest.mark.parametrize("name", BASELINES)
def test_class_order_invariance(name):
    """Permuting the classes (counts, logit columns, targets) leaves the loss unchanged."""
    z, y = rand_inputs(seed=20, cosine=name in COSINE)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    inv = torch.argsort(perm)
    a = build_loss(name, COUNTS)(z, y)
    b = build_loss(name, [COUNTS[i] for i in perm.tolist()])(z[:, perm], inv[y])
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", BASELINES)
def test_gradcheck_float64(name):
    params = {"ce": {"label_smoothing": 0.1}, "focal": {"gamma": 2.0, "drw_epoch": 0},
              "eql": {"lambda_": 0.05}, "ldam": {"drw_epoch": 0}}.get(name, {})
    loss = build_loss(name, COUNTS, **params)
    z, y = rand_inputs(n=6, seed=21, cosine=name in COSINE, dtype=torch.float64)
    z.requires_grad_(True)
    assert loss(z, y).dtype == torch.float64
    assert torch.autograd.gradcheck(lambda t: loss(t, y), (z,), eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", BASELINES)
def test_gradient_matches_float32(name):
    """float32 autograd gradient equals the float64 one (no hidden precision loss)."""
    loss = build_loss(name, COUNTS)
    z, y = rand_inputs(seed=22, cosine=name in COSINE)
    g = []
    for dt in (torch.float32, torch.float64):
        t = z.detach().to(dt).clone().requires_grad_(True)
        loss(t, y).backward()
        g.append(t.grad.double())
    torch.testing.assert_close(g[0], g[1], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", BASELINES)
def test_predict(name):
    loss = build_loss(name, COUNTS)
    z, _ = rand_inputs(seed=23, cosine=name in COSINE)
    out = loss.predict(z)
    assert out.shape == z.shape
    if name in COSINE:
        torch.testing.assert_close(out, loss.s * z)
    elif name != "posthoc_la":
        torch.testing.assert_close(out, z)


# -- robustness over every registered loss (the thesis losses included) --------------------------
def _features(loss, n, dtype=None):
    if not loss.needs_features:
        return None
    feats = torch.rand(n, 8, generator=torch.Generator().manual_seed(1)) + 0.1
    return feats if dtype is None else feats.to(dtype)


def _call(loss, z, y, dtype=None):
    return loss(z, y, features=_features(loss, z.shape[0], dtype))


@pytest.mark.parametrize("name", LOSSES.names())
@pytest.mark.parametrize("case", ["huge", "single_class_head", "single_class_tail"])
def test_extreme_inputs_finite(name, case):
    loss = build_loss(name, COUNTS)
    loss.train()
    g = torch.Generator().manual_seed(24)
    n = 12
    if case == "huge":
        z = (torch.randint(0, 2, (n, C), generator=g) * 2 - 1).float() * 1e4
        y = torch.randint(0, C, (n,), generator=g)
    else:
        z = torch.randn(n, C, generator=g) * 5
        y = torch.full((n,), COUNTS.index(max(COUNTS) if case.endswith("head") else min(COUNTS)))
    if loss.cosine and case != "huge":
        z = torch.tanh(z)
    z.requires_grad_(True)
    val = _call(loss, z, y)
    val.backward()
    assert val.dim() == 0 and torch.isfinite(val), (name, case, val)
    assert torch.isfinite(z.grad).all(), (name, case)


@pytest.mark.parametrize("name", LOSSES.names())
def test_bf16_inputs_give_float32(name):
    loss = build_loss(name, COUNTS)
    z, y = rand_inputs(seed=25, cosine=loss.cosine)
    val = _call(loss, z.bfloat16(), y, dtype=torch.bfloat16)
    assert val.dtype == torch.float32 and val.dim() == 0 and torch.isfinite(val)
    ref = _call(loss, z.bfloat16().float(), y)
    if name in BASELINES and name != "eql":  # deterministic: bf16 input == its float32 upcast
        torch.testing.assert_close(val, ref)


@pytest.mark.parametrize("name", LOSSES.names())
def test_registry_builds_every_loss_from_counts_only(name):
    loss = build_loss(name, COUNTS)
    z, y = rand_inputs(seed=26, cosine=loss.cosine)
    val = _call(loss, z, y)
    assert val.dtype == torch.float32 and val.dim() == 0 and torch.isfinite(val)
    loss.set_progress(0, 10)
    assert loss.predict(z, features=_features(loss, z.shape[0])).shape == z.shape
