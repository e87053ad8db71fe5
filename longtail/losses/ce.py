"""Cross-entropy (optionally with deferred re-weighting and label smoothing) and class-balanced CE.

The numerical helpers every loss shares (compute dtype, one-hot mask, smoothed negative
log-likelihood, class-weighted mean) live in :mod:`longtail.losses.functional`.
"""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from ..errors import ConfigError
from . import LOSSES
from .base import DeferredReweighting, LongTailLoss
from .functional import Counts, check_drw, class_weighted_mean, smoothed_nll, to_compute


# -- losses --------------------------------------------------------------------------------------
@LOSSES.register("ce")
class CrossEntropy(LongTailLoss):
    """Softmax cross-entropy, L = -log softmax(z)_y (thesis Table 1.1, "Cross entropy").

    Options: deferred re-weighting (DRW, Cao et al. 2019) with effective-number class weights
    w_j = (1 - beta) / (1 - beta^{n_j}) normalized to sum C (Cui et al. 2019), switched on from
    ``drw_epoch`` (``set_progress``); and label smoothing with a uniform eps
    (q = (1 - eps) onehot + eps / C). With weights the batch reduction is
    sum_i w_{y_i} l_i / sum_i w_{y_i} (as ``F.cross_entropy(weight=...)``); note that with both
    weights and smoothing the weight is the *target's* class weight for the whole smoothed
    row (torch's ``F.cross_entropy`` weights the smoothing term per class instead).

    Args:
        class_counts: Per-class training counts.
        drw_epoch: First re-weighted epoch (0: class-balanced from the start), or None.
        beta: Effective-number beta of the class weights.
        label_smoothing: Uniform smoothing eps in [0, 1).
    """

    def __init__(
        self,
        class_counts: Counts,
        drw_epoch: Optional[int] = None,
        beta: float = 0.9999,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__(class_counts)
        if not 0.0 <= float(label_smoothing) < 1.0:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)
        self.drw = DeferredReweighting(class_counts, check_drw(drw_epoch), beta)

    def set_progress(self, epoch: int, total_epochs: int) -> None:
        self.drw.set_progress(epoch, total_epochs)

    def _weight(self) -> Optional[Tensor]:
        return self.drw.weight if self.drw.enabled else None

    def forward(self, logits: Tensor, target: Tensor, features: Optional[Tensor] = None) -> Tensor:
        self._check(logits, target)
        per = smoothed_nll(to_compute(logits), target, self.label_smoothing)
        return class_weighted_mean(per, target, self._weight())

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, drw_epoch={self.drw.drw_epoch}, "
                f"label_smoothing={self.label_smoothing}")


@LOSSES.register("cb_ce")
class ClassBalancedCE(CrossEntropy):
    """Class-balanced softmax CE (Cui et al. 2019): CE weighted by the effective-number weights
    w_j ∝ (1 - beta) / (1 - beta^{n_j}) (thesis Table 1.1, "Effective number") from epoch 0.

    Args:
        class_counts: Per-class training counts.
        beta: Effective-number beta (0.9999 as in the field's code).
        label_smoothing: Uniform smoothing eps in [0, 1).
    """

    def __init__(self, class_counts: Counts, beta: float = 0.9999, label_smoothing: float = 0.0) -> None:
        super().__init__(class_counts, drw_epoch=0, beta=beta, label_smoothing=label_smoothing)
