"""Balanced softmax (Ren et al. 2020)."""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from . import LOSSES
from .base import LongTailLoss, as_counts
from .functional import Counts, smoothed_nll, to_compute


@LOSSES.register("balanced_softmax")
class BalancedSoftmax(LongTailLoss):
    """Balanced softmax cross-entropy (Ren et al. 2020; thesis eq. 4.10):

    L = -log( e^{z_y + log n_y} / sum_j e^{z_j + log n_j} ).

    Equal to the logit-adjusted loss with tau = 1 (``la``): log n_j and log pi_j differ by the
    constant log sum_k n_k, which cancels in the softmax. Prediction uses the plain logits.

    Args:
        class_counts: Per-class training counts.
    """

    def __init__(self, class_counts: Counts) -> None:
        super().__init__(class_counts)
        self.register_buffer("log_counts", as_counts(class_counts).log(), persistent=False)  # float64

    def forward(self, logits: Tensor, target: Tensor, features: Optional[Tensor] = None) -> Tensor:
        self._check(logits, target)
        z = to_compute(logits)
        return smoothed_nll(z + self.log_counts.to(z.dtype), target).mean()
