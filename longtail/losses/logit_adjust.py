"""Logit adjustment (Menon et al. 2021): the logit-adjusted loss and post-hoc logit adjustment."""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from ..errors import ConfigError
from . import LOSSES
from .base import LongTailLoss, as_counts
from .ce import CrossEntropy
from .functional import Counts, smoothed_nll, to_compute


def log_prior(class_counts: Counts) -> Tensor:
    """log pi_j = log(n_j / sum_k n_k), float64 (C,)."""
    counts = as_counts(class_counts)
    return (counts / counts.sum()).log()


def _check_tau(tau: float) -> float:
    tau = float(tau)
    if tau < 0:
        raise ConfigError(f"logit-adjustment tau must be >= 0, got {tau}")
    return tau


@LOSSES.register("la")
class LogitAdjustedLoss(LongTailLoss):
    """Logit-adjusted softmax cross-entropy (Menon et al. 2021; thesis eq. 4.9).

    L = -log( e^{z_y + tau log pi_y} / sum_j e^{z_j + tau log pi_j} ), pi_j = n_j / sum_k n_k.
    Prediction uses the plain logits z. ``tau = 1`` coincides with balanced softmax (the constant
    -log sum_k n_k cancels in the softmax); ``tau = 0`` is CE.

    Args:
        class_counts: Per-class training counts.
        tau: Adjustment strength tau >= 0.
    """

    def __init__(self, class_counts: Counts, tau: float = 1.0) -> None:
        super().__init__(class_counts)
        self.tau = _check_tau(tau)
        self.register_buffer("log_prior", log_prior(class_counts), persistent=False)

    def forward(self, logits: Tensor, target: Tensor, features: Optional[Tensor] = None) -> Tensor:
        self._check(logits, target)
        z = to_compute(logits)
        return smoothed_nll(z + self.tau * self.log_prior.to(z.dtype), target).mean()

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, tau={self.tau}"


@LOSSES.register("posthoc_la")
class PosthocLogitAdjustment(CrossEntropy):
    """Post-hoc logit adjustment (Menon et al. 2021): train with CE (all ``ce`` options), predict
    with z_j - tau * log pi_j, pi_j = n_j / sum_k n_k.

    Args:
        class_counts: Per-class training counts.
        tau: Adjustment strength tau >= 0 (1: the Bayes-optimal balanced-error correction).
        drw_epoch, beta, label_smoothing: as for ``ce``.
    """

    def __init__(self, class_counts: Counts, tau: float = 1.0, drw_epoch: Optional[int] = None,
                 beta: float = 0.9999, label_smoothing: float = 0.0) -> None:
        super().__init__(class_counts, drw_epoch=drw_epoch, beta=beta, label_smoothing=label_smoothing)
        self.tau = _check_tau(tau)
        self.register_buffer("log_prior", log_prior(class_counts), persistent=False)

    def predict(self, logits: Tensor, features: Optional[Tensor] = None) -> Tensor:
        """Prior-corrected logits z - tau * log pi (in the compute dtype)."""
        z = to_compute(logits)
        return z - self.tau * self.log_prior.to(z.dtype)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", tau={self.tau}"
