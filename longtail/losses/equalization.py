"""Softmax equalization loss (Tan et al. 2020)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..errors import ConfigError
from . import LOSSES
from .base import LongTailLoss, as_counts
from .functional import Counts, onehot_mask, smoothed_nll, to_compute


@LOSSES.register("eql")
class EqualizationLoss(LongTailLoss):
    """Softmax equalization loss (Tan et al. 2020, "softmax EQL"; thesis Table 1.1).

    L = -log( e^{z_y} / sum_k w_k e^{z_k} ),  w_k = 1 - beta_k T_lambda(f_k) (1 - y_k),

    with f_k = n_k / sum_j n_j the class frequency, T_lambda(f) = 1 if f < lambda else 0, y the
    one-hot target and beta_k a Bernoulli variable equal to 1 with probability ``gamma``. So the
    non-target logits of *rare* classes (f_k < lambda) are removed from the denominator
    (w_k = 0) and receive no discouraging gradient; the target is never removed. Implemented as
    CE over logits where the suppressed entries are set to -inf.

    ``gamma = 1`` (default) suppresses deterministically; ``0 < gamma < 1`` draws beta
    independently per sample and per class on the logits' device at every call (not
    reproducible without seeding, and not valid for gradcheck); ``gamma = 0`` is plain CE.
    Prediction uses the plain logits.

    Args:
        class_counts: Per-class training counts.
        lambda_: Frequency threshold lambda on f_k = n_k / N (5.5e-3 by default; the number of
            suppressed classes depends on the data set, so recipes should set it).
        gamma: Probability that a rare non-target class is suppressed, in [0, 1].
    """

    def __init__(self, class_counts: Counts, lambda_: float = 5.5e-3, gamma: float = 1.0) -> None:
        super().__init__(class_counts)
        if not 0.0 <= float(gamma) <= 1.0:
            raise ConfigError(f"eql gamma must be in [0, 1], got {gamma}")
        if float(lambda_) < 0:
            raise ConfigError(f"eql lambda_ must be >= 0, got {lambda_}")
        self.lambda_ = float(lambda_)
        self.gamma = float(gamma)
        counts = as_counts(class_counts)
        self.register_buffer("rare", (counts / counts.sum()) < self.lambda_, persistent=False)

    def forward(self, logits: Tensor, target: Tensor, features: Optional[Tensor] = None) -> Tensor:
        self._check(logits, target)
        z = to_compute(logits)
        target = target.long()
        if self.gamma > 0:
            nontarget = ~onehot_mask(target, self.num_classes)
            suppress = nontarget & self.rare.unsqueeze(0)
            if self.gamma < 1:
                suppress = suppress & (torch.rand(z.shape, device=z.device) < self.gamma)
            z = z.masked_fill(suppress, float("-inf"))
        return smoothed_nll(z, target).mean()

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, lambda_={self.lambda_}, gamma={self.gamma}"
