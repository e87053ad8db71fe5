"""The EQL recipes' lambda marks a sensible share of each data set's classes rare.

lambda is a threshold on the class frequency n_j / N (Tan et al. 2020); the loss default
(5.5e-3) would call 987 of ImageNet-LT's 1000 classes rare, so the recipes set it per data set.
Counts are computed here from the data sets' definitions, not by longtail.
"""
from __future__ import annotations

import numpy as np
import pytest

from longtail.config import load_config
from longtail.losses import build_loss


def cifar_lt_counts(n_max, classes, rho):
    """CIFAR-LT exponential profile (Cao et al. 2019): n_i = int(n_max * (1/rho)^(i/(C-1)))."""
    return [int(n_max * (1.0 / rho) ** (i / (classes - 1.0))) for i in range(classes)]


def rare_mask(recipe, counts):
    cfg = load_config(recipe)
    assert cfg["loss"]["name"] == "eql"
    loss = build_loss("eql", counts, **cfg["loss"]["params"])
    n = np.asarray(counts, dtype=np.float64)
    lam = cfg["loss"]["params"]["lambda_"]
    np.testing.assert_array_equal(loss.rare.numpy(), n / n.sum() < lam)  # f_j < lambda
    return loss.rare.numpy(), cfg


@pytest.mark.parametrize("recipe, n_max, classes, want_at_100", [
    ("cifar10_lt/eql", 5000, 10, 5),
    ("cifar100_lt/eql", 500, 100, 52),
])
def test_cifar_recipes_mark_the_tail_half_rare(recipe, n_max, classes, want_at_100):
    for rho in (50, 100, 200):
        counts = cifar_lt_counts(n_max, classes, rho)
        rare, cfg = rare_mask(recipe, counts)
        assert 0.3 * classes <= rare.sum() <= 0.7 * classes, (rho, rare.sum())
        # the rare classes are exactly the smallest ones, and the head is never rare
        order = np.argsort(counts, kind="stable")
        assert rare[order].tolist() == sorted(rare.tolist(), reverse=True)
        assert not rare[int(np.argmax(counts))]
        if rho == 100:
            assert rare.sum() == want_at_100
    assert cfg["loss"]["params"]["gamma"] == 0.9


@pytest.mark.realdata
def test_imagenet_lt_recipe_marks_classes_under_50_images_rare(shared_data):
    table = np.loadtxt(shared_data / "lt_splits" / "ImageNet_LT_train_class_counts.txt", dtype=np.int64)
    counts = table[:, 1].tolist()
    assert len(counts) == 1000 and sum(counts) == 115846
    rare, _ = rare_mask("imagenet_lt/eql", counts)
    assert rare.sum() == 374 and rare.tolist() == [n < 50 for n in counts]
    default = build_loss("eql", counts)  # the default lambda: nearly everything rare
    assert default.rare.sum() == 987
