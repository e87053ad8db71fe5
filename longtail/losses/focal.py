"""Focal loss (Lin et al. 2017) and class-balanced focal loss (Cui et al. 2019), softmax form."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from . import LOSSES
from .base import DeferredReweighting, LongTailLoss
from .functional import Counts, check_drw, to_compute


@LOSSES.register("focal")
class FocalLoss(LongTailLoss):
    """Softmax focal loss, FL = -(1 - p_y)^gamma log p_y (thesis Table 1.1; Lin et al. 2017).

    Per sample l_i = w_{y_i} (1 - p_{i,y_i})^gamma (-log p_{i,y_i}) with p = softmax(z) and the
    class weight w (1 without re-weighting; effective-number weights from ``drw_epoch`` on).

    Normalization: the batch loss is the plain mean (1/N) sum_i l_i, as in the LDAM-DRW reference
    code's ``FocalLoss`` (``loss.mean()``), *not* the weighted mean sum w l / sum w of
    ``F.cross_entropy``; so ``gamma = 0`` equals CE only without weights. Unlike that code, p_y
    is the true softmax probability (the code derives it from the *weighted* CE, p = p_y^{w_y}).
    1 - p_y is computed as -expm1(log p_y) for accuracy and clamped to the smallest normal
    number, so gradients stay finite for gamma < 1 when p_y rounds to 1.

    Args:
        class_counts: Per-class training counts.
        gamma: Focusing parameter gamma >= 0 (0: CE).
        drw_epoch: First re-weighted epoch (0: class-balanced from the start), or None.
        beta: Effective-number beta of the class weights.
    """

    def __init__(self, class_counts: Counts, gamma: float = 1.0, drw_epoch: Optional[int] = None,
                 beta: float = 0.9999) -> None:
        super().__init__(class_counts)
        if float(gamma) < 0:
            raise ConfigError(f"focal gamma must be >= 0, got {gamma}")
        self.gamma = float(gamma)
        self.drw = DeferredReweighting(class_counts, check_drw(drw_epoch), beta)

    def set_progress(self, epoch: int, total_epochs: int) -> None:
        self.drw.set_progress(epoch, total_epochs)

    def forward(self, logits: Tensor, target: Tensor, features: Optional[Tensor] = None) -> Tensor:
        self._check(logits, target)
        z = to_compute(logits)
        target = target.long()
        logp_y = F.log_softmax(z, dim=1).gather(1, target.unsqueeze(1)).squeeze(1)
        per = -logp_y
        if self.gamma != 0:
            one_minus_p = (-torch.expm1(logp_y)).clamp_min(torch.finfo(z.dtype).tiny)
            per = one_minus_p.pow(self.gamma) * per
        if self.drw.enabled:
            per = self.drw.weight.to(z.dtype)[target] * per
        return per.mean()

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, gamma={self.gamma}, drw_epoch={self.drw.drw_epoch}"


@LOSSES.register("cb_focal")
class ClassBalancedFocal(FocalLoss):
    """Class-balanced softmax focal loss (Cui et al. 2019): focal loss weighted by effective-number
    weights from epoch 0 (the softmax "CB-Focal" of the LDAM-DRW code; Cui et al.'s paper also has
    a sigmoid variant, not implemented here).

    Args:
        class_counts: Per-class training counts.
        gamma: Focusing parameter.
        beta: Effective-number beta (0.9999).
    """

    def __init__(self, class_counts: Counts, gamma: float = 1.0, beta: float = 0.9999) -> None:
        super().__init__(class_counts, gamma=gamma, drw_epoch=0, beta=beta)
