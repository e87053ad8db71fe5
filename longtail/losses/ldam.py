"""LDAM loss (Cao et al. 2019), optionally with deferred re-weighting (LDAM-DRW)."""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from ..errors import ConfigError
from . import LOSSES
from .base import DeferredReweighting, LongTailLoss, as_counts
from .functional import Counts, check_drw, class_weighted_mean, onehot_mask, smoothed_nll, to_compute


@LOSSES.register("ldam")
class LDAMLoss(LongTailLoss):
    """Label-distribution-aware margin loss on a cosine head (thesis Table 1.1, Cao et al. 2019).

    Margins m_j = c * n_j^{-1/4} with c chosen so that max_j m_j = ``max_m`` (the rarest class
    gets ``max_m``). With cosine logits cos_j the loss is
    CE over s * (cos_j - m_y [j = y]), i.e. the margin is subtracted from the target cosine only.
    With DRW the CE is weighted by effective-number weights from ``drw_epoch`` on, reduced as
    sum_i w_{y_i} l_i / sum_i w_{y_i} (``F.cross_entropy(weight=...)`` as in the reference code).
    The LDAM-DRW recipe uses ``drw_epoch = 160`` (of 200); the default here is plain LDAM.

    Args:
        class_counts: Per-class training counts.
        max_m: Largest margin (>= 0; 0 gives scaled cosine CE).
        s: Logit scale s > 0.
        drw_epoch: First re-weighted epoch, or None (no DRW).
        beta: Effective-number beta of the DRW weights.
    """

    cosine = True

    def __init__(self, class_counts: Counts, max_m: float = 0.5, s: float = 30.0,
                 drw_epoch: Optional[int] = None, beta: float = 0.9999) -> None:
        super().__init__(class_counts)
        if float(max_m) < 0:
            raise ConfigError(f"ldam max_m must be >= 0, got {max_m}")
        if float(s) <= 0:
            raise ConfigError(f"ldam s must be > 0, got {s}")
        self.max_m = float(max_m)
        self.s = float(s)
        m = as_counts(class_counts).pow(-0.25)
        m = m * (self.max_m / m.max())
        self.register_buffer("margins", m, persistent=False)  # float64, cast at use
        self.drw = DeferredReweighting(class_counts, check_drw(drw_epoch), beta)

    def set_progress(self, epoch: int, total_epochs: int) -> None:
        self.drw.set_progress(epoch, total_epochs)

    def forward(self, logits: Tensor, target: Tensor, features: Optional[Tensor] = None) -> Tensor:
        self._check(logits, target)
        cos = to_compute(logits)
        target = target.long()
        onehot = onehot_mask(target, self.num_classes).to(cos.dtype)
        z = self.s * (cos - onehot * self.margins.to(cos.dtype)[target].unsqueeze(1))
        per = smoothed_nll(z, target)
        return class_weighted_mean(per, target, self.drw.weight if self.drw.enabled else None)

    def predict(self, logits: Tensor, features: Optional[Tensor] = None) -> Tensor:
        """Evaluation logits s * cos (no margin)."""
        return self.s * to_compute(logits)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, max_m={self.max_m}, s={self.s}, drw_epoch={self.drw.drw_epoch}"
