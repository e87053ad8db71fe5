"""Label-aware smoothing, the stage-2 loss of MiSLAS (Zhong et al. 2021)."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from ..errors import ConfigError
from . import LOSSES
from .base import LongTailLoss, as_counts
from .functional import Counts, smoothed_nll, to_compute

SHAPES = ("concave", "linear", "convex", "exp")


def label_aware_eps(class_counts: Counts, head_eps: float, tail_eps: float, shape: str = "concave",
                    power: float = 2.0) -> Tensor:
    """Per-class smoothing eps_j of MiSLAS (Zhong et al. 2021, label-aware smoothing), float64 (C,).

    With r_j = (n_j - n_min) / (n_max - n_min) in [0, 1] (1 for the largest class, 0 for the
    smallest; computed from the counts, whatever the class order), eps_1 = ``head_eps``,
    eps_K = ``tail_eps``:

    * concave: eps_j = eps_K + (eps_1 - eps_K) sin(pi/2 * r_j)
    * linear:  eps_j = eps_K + (eps_1 - eps_K) r_j
    * convex:  eps_j = eps_1 + (eps_1 - eps_K) sin(3 pi/2 + pi/2 * r_j)
    * exp:     eps_j = eps_K + (eps_1 - eps_K) r_j^power

    All shapes give eps_K to the smallest class and eps_1 to the largest. With all counts equal
    (n_max = n_min) r_j = 1, i.e. every class gets ``head_eps``.
    """
    if shape not in SHAPES:
        raise ConfigError(f"label_aware_smoothing shape must be one of {SHAPES}, got {shape!r}")
    counts = as_counts(class_counts)
    span = counts.max() - counts.min()
    r = (counts - counts.min()) / span if span > 0 else torch.ones_like(counts)
    h, t = float(head_eps), float(tail_eps)
    if shape == "concave":
        eps = t + (h - t) * torch.sin(0.5 * math.pi * r)
    elif shape == "linear":
        eps = t + (h - t) * r
    elif shape == "convex":
        eps = h + (h - t) * torch.sin(1.5 * math.pi + 0.5 * math.pi * r)
    else:
        eps = t + (h - t) * r.pow(float(power))
    return eps


@LOSSES.register("label_aware_smoothing")
class LabelAwareSmoothing(LongTailLoss):
    """MiSLAS label-aware smoothing cross-entropy (Zhong et al. 2021, stage 2).

    l_i = -sum_j q_ij log p_ij,  q_i = (1 - eps_{y_i}) onehot(y_i) + eps_{y_i} / C,
    with the class-dependent eps of :func:`label_aware_eps` (head classes smoothed more, i.e. less
    over-confident); batch mean. Defaults are the MiSLAS CIFAR-10-LT config (head 0.3, tail 0.0,
    concave); its CIFAR-100-LT config uses head 0.4, tail 0.1. Prediction uses the plain logits.

    Args:
        class_counts: Per-class training counts.
        head_eps: eps_1 of the largest class, in [0, 1].
        tail_eps: eps_K of the smallest class, in [0, 1].
        shape: "concave" | "linear" | "convex" | "exp".
        power: Exponent of the "exp" shape.
    """

    def __init__(self, class_counts: Counts, head_eps: float = 0.3, tail_eps: float = 0.0,
                 shape: str = "concave", power: float = 2.0) -> None:
        super().__init__(class_counts)
        for name, v in (("head_eps", head_eps), ("tail_eps", tail_eps)):
            if not 0.0 <= float(v) <= 1.0:
                raise ConfigError(f"label_aware_smoothing {name} must be in [0, 1], got {v}")
        self.head_eps, self.tail_eps, self.shape = float(head_eps), float(tail_eps), shape
        self.register_buffer("smoothing", label_aware_eps(class_counts, head_eps, tail_eps, shape, power),
                             persistent=False)

    def forward(self, logits: Tensor, target: Tensor, features: Optional[Tensor] = None) -> Tensor:
        self._check(logits, target)
        z = to_compute(logits)
        eps = self.smoothing.to(z.dtype)[target.long()]
        return smoothed_nll(z, target, eps).mean()

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, head_eps={self.head_eps}, tail_eps={self.tail_eps}, "
                f"shape={self.shape!r}")
