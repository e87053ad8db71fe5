"""Tests of longtail.data.samplers: formulas, empirical frequencies, determinism, ranks, errors."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from longtail.data.samplers import SAMPLERS, build_sampler, cben_gammas
from longtail.errors import ConfigError, DataError

# A CIFAR-10-LT-like profile (rho = 100), scaled down so that tests stay fast.
COUNTS = np.array([500, 300, 180, 108, 65, 39, 23, 14, 8, 5])
C = len(COUNTS)
N = int(COUNTS.sum())
# Labels shuffled so that nothing can depend on samples being sorted by class.
TARGETS = np.random.default_rng(123).permutation(np.repeat(np.arange(C), COUNTS))
# ImageNet-LT style: labels not sorted by size (class 3 is the head here).
UNSORTED = np.array([40, 7, 120, 300, 2, 55])

ALL_NAMES = ["instance", "class_balanced", "sqrt", "power", "progressive", "effective_number", "cben"]
T_EPOCHS = 10


def make(name, targets=TARGETS, **kw):
    kw.setdefault("total_epochs", T_EPOCHS)
    num_classes = kw.pop("num_classes", int(np.max(targets)) + 1)
    return build_sampler(name, targets, num_classes, **kw)


# ---------------------------------------------------------------------------------------------
# independent reference formulas (plain python / numpy, written from the thesis & papers)
# ---------------------------------------------------------------------------------------------
def ref_cben_gamma(counts, a, b):
    """Eq. 5.13-5.15 written out element by element (plain python floats)."""
    n_max = max(counts)
    delta = [math.log(n_max) - math.log(n) for n in counts]
    dmax = max(delta)
    delta = [d / dmax for d in delta]  # sec. 5.4.1: head 0, tail 1
    lo, hi = min(delta), max(delta)
    beta = [b * (d - lo) / (hi - lo) + a for d in delta]  # eq. 5.15
    gamma = [(1 - bj) / (1 - bj ** n) for bj, n in zip(beta, counts)]  # eq. 5.13
    s = sum(gamma)
    return [g / s for g in gamma]  # eq. 5.14


def ref_class_probs(name, counts, epoch=0, total=T_EPOCHS, **p):
    n = np.asarray(counts, dtype=np.float64)
    if name == "instance":
        w = n
    elif name == "class_balanced":
        w = np.ones_like(n)
    elif name == "sqrt":
        w = np.sqrt(n)
    elif name == "power":
        w = n ** p.get("q", 0.5)
    elif name == "progressive":
        t = epoch / total
        return (1 - t) * n / n.sum() + t / len(n)
    elif name == "effective_number":
        beta = p.get("beta", 0.9999)
        w = np.array([(1 - beta) / (1 - beta ** k) for k in counts])
        if p.get("per", "sample") == "sample":
            w = w * n  # each *sample* weighted by w_j -> class total n_j w_j
    elif name == "cben":
        g = np.array(ref_cben_gamma(list(counts), p.get("a", 0.9999), p.get("b", 1e-5)))
        w = g * n if p.get("per", "sample") == "sample" else g
    else:
        raise KeyError(name)
    return w / w.sum()


# ---------------------------------------------------------------------------------------------
# registry / formulas
# ---------------------------------------------------------------------------------------------
def test_registry_names():
    for name in ALL_NAMES:
        assert name in SAMPLERS


@pytest.mark.parametrize("name", ALL_NAMES)
def test_class_probs_match_reference(name):
    s = make(name)
    np.testing.assert_allclose(s.class_probs(0), ref_class_probs(name, COUNTS), rtol=1e-10, atol=0)
    assert s.class_probs(0).shape == (C,)
    assert abs(s.class_probs(0).sum() - 1) < 1e-12


@pytest.mark.parametrize("name", ALL_NAMES)
def test_sample_weights_consistent(name):
    s = make(name)
    w = s.sample_weights(3)
    assert isinstance(w, torch.Tensor) and w.dtype == torch.float64 and w.shape == (N,)
    assert abs(float(w.sum()) - 1) < 1e-12
    wn = w.numpy()
    # uniform within a class, and summing per class gives class_probs
    for j in range(C):
        wj = wn[TARGETS == j]
        assert np.ptp(wj) <= 1e-15
    per_class = np.bincount(TARGETS, weights=wn, minlength=C)
    np.testing.assert_allclose(per_class, s.class_probs(3), rtol=1e-10)


def test_class_probs_use_counts_not_index_order():
    targets = np.repeat(np.arange(len(UNSORTED)), UNSORTED)
    for name, params in [("cben", {}), ("cben", {"a": 0.999, "b": 0.0009}), ("effective_number", {}), ("sqrt", {})]:
        s = make(name, targets, **params)
        np.testing.assert_allclose(s.class_probs(), ref_class_probs(name, UNSORTED, **params), rtol=1e-10)


def test_power_special_cases():
    np.testing.assert_allclose(make("power", q=0.0).class_probs(), np.full(C, 1 / C), rtol=1e-12)
    np.testing.assert_allclose(make("power", q=1.0).class_probs(), COUNTS / N, rtol=1e-12)
    np.testing.assert_allclose(make("power", q=0.5).class_probs(), make("sqrt").class_probs(), rtol=1e-12)
    np.testing.assert_allclose(make("power", q=-1.0).class_probs(), ref_class_probs("power", COUNTS, q=-1.0))


def test_progressive_endpoints():
    s = make("progressive", total_epochs=20)
    np.testing.assert_allclose(s.class_probs(0), COUNTS / N, rtol=1e-12)  # t = 0: instance
    np.testing.assert_allclose(s.class_probs(20), np.full(C, 1 / C), rtol=1e-12)  # t = T: balanced
    np.testing.assert_allclose(s.class_probs(10), 0.5 * COUNTS / N + 0.5 / C, rtol=1e-12)
    np.testing.assert_allclose(s.class_probs(7), ref_class_probs("progressive", COUNTS, 7, 20), rtol=1e-12)
    # the sample weights follow the epoch, including through set_epoch
    s.set_epoch(20)
    np.testing.assert_allclose(s.sample_weights().numpy(), np.full(N, 1 / C)[0] / COUNTS[TARGETS], rtol=1e-10)
    assert s.replacement


def test_cben_constants_exact():
    """Eq. 5.13-5.15 on a 2-class example computed by hand."""
    counts = [100, 10]
    a, b = 0.999, 0.0009
    # delta = [0, log 10] -> normalized [0, 1] -> beta = [a, a + b]
    g0 = (1 - a) / (1 - a ** 100)
    g1 = (1 - (a + b)) / (1 - (a + b) ** 10)
    expected_gamma = np.array([g0, g1]) / (g0 + g1)
    np.testing.assert_allclose(cben_gammas(np.array(counts), a, b), expected_gamma, rtol=1e-10)
    targets = np.repeat([0, 1], counts)
    s = build_sampler("cben", targets, 2, a=a, b=b)
    w = s.sample_weights().numpy()
    # per-sample semantics: one sample of class j has probability proportional to gamma_j
    np.testing.assert_allclose(w[0] / w[-1], expected_gamma[0] / expected_gamma[1], rtol=1e-10)
    np.testing.assert_allclose(w[0], expected_gamma[0] / (100 * expected_gamma[0] + 10 * expected_gamma[1]), rtol=1e-10)
    cls = np.array([100 * expected_gamma[0], 10 * expected_gamma[1]])
    np.testing.assert_allclose(s.class_probs(), cls / cls.sum(), rtol=1e-10)
    # per="class": the class probability is gamma_j itself
    s2 = build_sampler("cben", targets, 2, a=a, b=b, per="class")
    np.testing.assert_allclose(s2.class_probs(), expected_gamma, rtol=1e-10)


def test_cben_defaults_are_code_values_and_thesis_selectable():
    d = make("cben")
    assert (d.a, d.b) == (0.9999, 1e-5)
    np.testing.assert_allclose(d.gammas, ref_cben_gamma(list(COUNTS), 0.9999, 1e-5), rtol=1e-10)
    t = make("cben", a=0.999, b=0.0009)
    np.testing.assert_allclose(t.gammas, ref_cben_gamma(list(COUNTS), 0.999, 0.0009), rtol=1e-10)
    # beta grows towards the tail, so the per-sample gamma grows towards the tail
    assert np.all(np.diff(t.gammas) > 0)
    assert not np.allclose(d.class_probs(), t.class_probs(), rtol=1e-3)


def test_cben_equal_counts_is_uniform():
    targets = np.repeat(np.arange(4), 25)
    np.testing.assert_allclose(build_sampler("cben", targets, 4).class_probs(), np.full(4, 0.25), rtol=1e-12)


def test_effective_number_limits():
    # beta = 0: every sample weight 1 -> instance distribution (per sample) / balanced (per class)
    np.testing.assert_allclose(make("effective_number", beta=0.0).class_probs(), COUNTS / N, rtol=1e-12)
    np.testing.assert_allclose(make("effective_number", beta=0.0, per="class").class_probs(), np.full(C, 1 / C), rtol=1e-12)
    # numerically stable for beta extremely close to 1 (-> 1/n per sample -> class balanced)
    p = make("effective_number", beta=1 - 1e-12).class_probs()
    np.testing.assert_allclose(p, np.full(C, 1 / C), rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# empirical frequencies
# ---------------------------------------------------------------------------------------------
DRAWS = 200_000


def frequency_check(idx, targets, probs, draws):
    """Each class count within 5 binomial standard deviations (+1 count) of its expectation."""
    counts = np.bincount(np.asarray(targets)[np.asarray(idx)], minlength=len(probs))
    expected = draws * probs
    sd = np.sqrt(draws * probs * (1 - probs))
    assert np.all(np.abs(counts - expected) <= 5 * sd + 1), (counts, expected)
    return counts


@pytest.mark.parametrize("name", ALL_NAMES)
def test_empirical_class_frequencies(name):
    s = make(name, num_samples=DRAWS, seed=7)
    s.set_epoch(4)  # progressive: an intermediate mixture
    idx = list(s)
    assert len(idx) == DRAWS == len(s)
    frequency_check(idx, TARGETS, s.class_probs(4), DRAWS)


def test_frequency_tolerance_discriminates():
    """The tolerance above is tight enough to tell the two readings of CBEN (and of the
    effective number) apart, and a progressive sampler from its neighbouring epochs."""
    probs = make("cben", a=0.999, b=0.0009).class_probs()
    wrong = make("cben", a=0.999, b=0.0009, per="class").class_probs()
    sd = np.sqrt(DRAWS * probs * (1 - probs))
    assert np.any(np.abs(DRAWS * (probs - wrong)) > 20 * sd)
    p4, p5 = make("progressive").class_probs(4), make("progressive").class_probs(5)
    assert np.any(np.abs(DRAWS * (p4 - p5)) > 10 * np.sqrt(DRAWS * p4))


def test_within_class_uniform():
    s = make("class_balanced", num_samples=DRAWS, seed=3)
    idx = np.asarray(list(s))
    tail = np.flatnonzero(TARGETS == C - 1)  # 5 samples, each expected DRAWS / C / 5 times
    hits = np.array([(idx == i).sum() for i in tail])
    e = DRAWS / C / len(tail)
    assert np.all(np.abs(hits - e) <= 5 * math.sqrt(e))


# ---------------------------------------------------------------------------------------------
# instance sampler, determinism, epochs
# ---------------------------------------------------------------------------------------------
def test_instance_is_permutation():
    s = make("instance", seed=5)
    assert s.replacement is False
    for e in range(3):
        s.set_epoch(e)
        idx = list(s)
        assert sorted(idx) == list(range(N))


def test_instance_num_samples_larger_and_smaller():
    s = make("instance", num_samples=2 * N + 17)
    idx = np.asarray(list(s))
    assert len(idx) == 2 * N + 17
    occ = np.bincount(idx, minlength=N)
    assert occ.min() >= 2 and occ.max() <= 3
    s = make("instance", num_samples=100)
    idx = list(s)
    assert len(idx) == 100 and len(set(idx)) == 100


@pytest.mark.parametrize("name", ALL_NAMES)
def test_determinism_and_epochs(name):
    a, b = make(name, seed=11), make(name, seed=11)
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b)
    assert list(a) == list(a)  # iterating does not advance the stream
    b.set_epoch(3)
    assert list(a) != list(b)
    c = make(name, seed=12)
    c.set_epoch(2)
    assert list(a) != list(c)
    # seed/epoch are not simply added: (seed 0, epoch 1) != (seed 1, epoch 0)
    x, y = make(name, seed=0), make(name, seed=1)
    x.set_epoch(1)
    assert list(x) != list(y)


def test_resume_matches_uninterrupted_run():
    s = make("cben", seed=4)
    seen = []
    for e in range(4):
        s.set_epoch(e)
        seen.append(list(s))
    fresh = make("cben", seed=4)
    fresh.set_epoch(3)
    assert list(fresh) == seen[3]


def test_works_with_dataloader():
    ds = torch.utils.data.TensorDataset(torch.as_tensor(TARGETS))
    s = make("sqrt", num_samples=300)
    batches = list(torch.utils.data.DataLoader(ds, batch_size=64, sampler=s))
    assert sum(len(b[0]) for b in batches) == 300


# ---------------------------------------------------------------------------------------------
# distributed
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["instance", "cben", "progressive"])
@pytest.mark.parametrize("num_samples,world", [(N, 4), (1000, 3), (999, 3), (2, 3)])
def test_distributed_slices(name, num_samples, world):
    full = list(make(name, seed=9, num_samples=num_samples))
    per_rank = [list(make(name, seed=9, num_samples=num_samples, rank=r, world_size=world)) for r in range(world)]
    length = math.ceil(num_samples / world)
    assert all(len(p) == length for p in per_rank)
    # interleaving the ranks reproduces the shared draw, cyclically padded
    inter = [per_rank[k % world][k // world] for k in range(length * world)]
    padded = [full[k % num_samples] for k in range(length * world)]
    assert inter == padded
    assert set().union(*map(set, per_rank)) == set(full)
    if name == "instance" and num_samples % world == 0:
        sets = [set(p) for p in per_rank]
        for i in range(world):
            for j in range(i + 1, world):
                assert not sets[i] & sets[j]
        assert sum(map(len, sets)) == num_samples


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------
def test_unknown_sampler():
    with pytest.raises(ConfigError, match="nope"):
        build_sampler("nope", TARGETS, C)


@pytest.mark.parametrize(
    "name,params,culprit",
    [
        ("cben", {"beta": 0.9}, "beta"),
        ("instance", {"q": 0.5}, "q"),
        ("sqrt", {"q": 0.3}, "q"),
        ("effective_number", {"beta": 1.0}, "beta"),
        ("effective_number", {"beta": -0.1}, "beta"),
        ("effective_number", {"beta": "high"}, "beta"),
        ("effective_number", {"per": "both"}, "per"),
        ("cben", {"a": 0.99999, "b": 1e-5}, "a"),
        ("cben", {"b": -1e-5}, "b"),
        ("cben", {"a": 1.0}, "a"),
        ("power", {"q": float("nan")}, "q"),
    ],
)
def test_bad_params(name, params, culprit):
    with pytest.raises(ConfigError, match=f"'{culprit}'"):
        build_sampler(name, TARGETS, C, total_epochs=T_EPOCHS, **params)


@pytest.mark.parametrize(
    "kw,culprit",
    [
        ({"num_samples": 0}, "num_samples"),
        ({"seed": -1}, "seed"),
        ({"rank": 2, "world_size": 2}, "rank"),
        ({"world_size": 0}, "world_size"),
        ({"total_epochs": 0}, "total_epochs"),
    ],
)
def test_bad_common_options(kw, culprit):
    with pytest.raises(ConfigError, match=culprit):
        build_sampler("instance", TARGETS, C, **kw)


def test_progressive_needs_total_epochs():
    with pytest.raises(ConfigError, match="total_epochs"):
        build_sampler("progressive", TARGETS, C)


def test_bad_epoch():
    s = make("cben")
    with pytest.raises(ConfigError, match="epoch"):
        s.set_epoch(-1)


def test_empty_class_is_data_error():
    targets = np.array([0, 0, 1, 3, 3])
    with pytest.raises(DataError, match="class 2"):
        build_sampler("class_balanced", targets, 4)


def test_label_out_of_range_is_data_error():
    with pytest.raises(DataError, match="targets"):
        build_sampler("instance", np.array([0, 1, 5]), 3)
    with pytest.raises(DataError, match="targets"):
        build_sampler("instance", np.array([0, -1, 1]), 3)


def test_accepts_tensor_and_list_targets():
    a = build_sampler("cben", torch.as_tensor(TARGETS), C, seed=1)
    b = build_sampler("cben", TARGETS.tolist(), C, seed=1)
    assert list(a) == list(b)
