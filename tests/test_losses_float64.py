"""float64 inputs see float64-exact per-class constants (KPS, FBL, GCL and the baselines).

Each loss is compared, for float64 inputs, with an independent float64 formula written here
(explicit loops, ``math``), to a relative 1e-13. The same formula with the constants rounded to
float32 (as the losses stored them before) is checked to be off by far more, so a loss that
rounded its constants would fail. Float32 results are unchanged by keeping the constants in
float64 (a cast at use rounds as storing in float32 did); that is pinned here too.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from longtail.losses import build_loss

COUNTS = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
C = len(COUNTS)
N = 12
TIGHT = 1e-13  # float64 constants: agreement to rounding of the float64 arithmetic
LOOSE = 1e-11  # float32-rounded constants (rel. error up to 6e-8) move the loss by more than this


def r32(values):
    return [float(np.float32(v)) for v in values]


def lse(row):
    m = max(row)
    return m + math.log(sum(math.exp(v - m) for v in row))


def ce_rows(rows, target, weight=None, smoothing=None):
    """(Weighted) mean CE over rows; ``smoothing[i]`` per-sample label-smoothing eps."""
    tot = wsum = 0.0
    for i, row in enumerate(rows):
        y = target[i]
        logz = lse(row)
        nll = logz - row[y]
        if smoothing is not None:
            nll = (1 - smoothing[i]) * nll + smoothing[i] * sum(logz - v for v in row) / len(row)
        w = 1.0 if weight is None else weight[y]
        tot += w * nll
        wsum += w
    return tot / wsum


def effective(beta=0.9999):
    w = [(1 - beta) / (1 - beta**n) for n in COUNTS]
    return [x * C / sum(w) for x in w]


# -- per-loss independent formulas: (name, params, set_progress, reference(z, f, noise, y, rnd)) --
def kps_ref(z, f, noise, y, rnd):
    rp = [math.log(n * 50.0 / min(COUNTS)) for n in COUNTS]  # eq. (3.27)
    r = [v / min(rp) for v in rp]
    mp = [max(r) + 1 - v for v in r]  # eq. (3.28)
    m = [v * 0.2 / max(mp) for v in mp]  # eq. (3.29)
    s_ga = [min(max(15.0 * v, 15.0), 50.0) for v in mp]  # eq. (3.30), code clamp
    r, m, s_ga = rnd(r), rnd(m), rnd(s_ga)
    rows = [[s_ga[y[i]] * (r[j] * z[i][j] - (m[j] if j == y[i] else 0.0)) for j in range(C)] for i in range(N)]
    return ce_rows(rows, y)


def fbl_ref(z, f, noise, y, rnd):
    lam = [math.log(max(COUNTS)) - math.log(n) for n in COUNTS]  # eq. (4.4), normalized
    strength = rnd([60.0 * v / max(lam) for v in lam])
    alpha = rnd([(150 / 190) ** 2])[0]
    rows = []
    for i in range(N):
        norm = math.sqrt(sum(v * v for v in f[i]))
        rows.append([z[i][j] - alpha * strength[j] / (norm + 1e-12) for j in range(C)])  # eq. (4.6)
    return ce_rows(rows, y)


def gcl_ref(z, f, noise, y, rnd):
    raw = [math.log(max(COUNTS)) - math.log(n) for n in COUNTS]  # eq. (5.9), log form
    delta = rnd([v / max(raw) for v in raw])
    weight = rnd([0.25 + 0.1 * j for j in range(C)])
    drw = rnd(effective())
    w = [a * b for a, b in zip(weight, drw)]
    rows = [[20.0 * (z[i][j] - 0.5 * delta[j] * abs(max(-1.0, min(1.0, noise[i][j])))
                     - (0.1 if j == y[i] else 0.0)) for j in range(C)] for i in range(N)]  # eq. (5.11)
    return ce_rows(rows, y, weight=w)


def ldam_ref(z, f, noise, y, rnd):
    m = [n ** -0.25 for n in COUNTS]
    m = rnd([v * 0.5 / max(m) for v in m])
    rows = [[30.0 * (z[i][j] - (m[y[i]] if j == y[i] else 0.0)) for j in range(C)] for i in range(N)]
    return ce_rows(rows, y, weight=rnd(effective()))


def la_ref(z, f, noise, y, rnd):
    lp = rnd([math.log(n / sum(COUNTS)) for n in COUNTS])
    return ce_rows([[z[i][j] + 0.7 * lp[j] for j in range(C)] for i in range(N)], y)


def bs_ref(z, f, noise, y, rnd):
    lc = rnd([math.log(n) for n in COUNTS])
    return ce_rows([[z[i][j] + lc[j] for j in range(C)] for i in range(N)], y)


def las_ref(z, f, noise, y, rnd):
    lo, hi = min(COUNTS), max(COUNTS)
    eps = rnd([0.0 + 0.3 * math.sin(math.pi / 2 * (n - lo) / (hi - lo)) for n in COUNTS])  # concave
    return ce_rows(z, y, smoothing=[eps[t] for t in y])


def ce_drw_ref(z, f, noise, y, rnd):
    return ce_rows(z, y, weight=rnd(effective()))


def focal_drw_ref(z, f, noise, y, rnd):
    w = rnd(effective())
    tot = 0.0
    for i in range(N):
        logp = z[i][y[i]] - lse(z[i])
        tot += w[y[i]] * (1 - math.exp(logp)) ** 2 * -logp
    return tot / N


CASES = {
    "kps": ({"ga_epoch": 0}, None, kps_ref),
    "fbl": ({}, (150, 200), fbl_ref),
    "gcl": ({"s": 20.0, "m": 0.1, "weight": [0.25 + 0.1 * j for j in range(C)], "drw_epoch": 0}, None, gcl_ref),
    "ldam": ({"drw_epoch": 0}, None, ldam_ref),
    "la": ({"tau": 0.7}, None, la_ref),
    "balanced_softmax": ({}, None, bs_ref),
    "label_aware_smoothing": ({}, None, las_ref),
    "ce": ({"drw_epoch": 0}, None, ce_drw_ref),
    "focal": ({"drw_epoch": 0, "gamma": 2.0}, None, focal_drw_ref),
}


def inputs(name, dtype):
    g = torch.Generator().manual_seed(sorted(CASES).index(name))
    z = torch.rand(N, C, generator=g, dtype=torch.float64) * 2 - 1
    f = torch.rand(N, 6, generator=g, dtype=torch.float64) * 3
    noise = torch.randn(N, C, generator=g, dtype=torch.float64) / 3
    y = torch.randint(0, C, (N,), generator=g)
    return z.to(dtype), f.to(dtype), noise.to(dtype), y


def call(loss, name, z, f, noise, y):
    return loss(z, y, noise=noise) if name == "gcl" else loss(z, y, f)


def build(name):
    params, progress, _ = CASES[name]
    loss = build_loss(name, COUNTS, **params)
    if progress is not None:
        loss.set_progress(*progress)
    return loss


@pytest.mark.parametrize("name", sorted(CASES))
def test_float64_input_uses_float64_exact_constants(name):
    loss = build(name)
    z, f, noise, y = inputs(name, torch.float64)
    got = call(loss, name, z, f, noise, y)
    assert got.dtype == torch.float64
    ref = CASES[name][2]
    args = (z.tolist(), f.tolist(), noise.tolist(), y.tolist())
    want = ref(*args, rnd=lambda v: list(v))
    rounded = ref(*args, rnd=r32)
    assert got.item() == pytest.approx(want, rel=TIGHT, abs=0)
    assert abs(rounded - want) > LOOSE * abs(want)  # the check above would catch float32 constants


@pytest.mark.parametrize("name", sorted(CASES))
def test_constants_are_float64_buffers(name):
    loss = build(name)
    floats = {k: b.dtype for k, b in loss.named_buffers() if b.is_floating_point() and k != "ga_active"}
    assert floats and set(floats.values()) == {torch.float64}, floats


@pytest.mark.parametrize("name", sorted(CASES))
def test_float32_result_is_that_of_float32_constants(name):
    """Casting the float64 constants at use equals holding them in float32."""
    loss = build(name)
    z, f, noise, y = inputs(name, torch.float32)
    got = call(loss, name, z, f, noise, y)
    assert got.dtype == torch.float32
    old = build(name)
    old._apply(lambda t: t.float() if t.dtype == torch.float64 else t)  # the float32 buffers of before
    assert torch.equal(got, call(old, name, z, f, noise, y))


def test_moving_to_mps_makes_float64_buffers_float32(monkeypatch):
    """MPS has no float64: ``.to("mps")`` turns the float64 constants to float32 first."""
    moved = []
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **k: moved.append(a) or self)
    loss = build("kps")
    radius = loss.radius.clone()
    loss.to("cpu")
    assert loss.radius.dtype == torch.float64
    loss.to("mps")
    assert moved == [("cpu",), ("mps",)]
    assert loss.radius.dtype == torch.float32 and torch.equal(loss.radius, radius.float())
