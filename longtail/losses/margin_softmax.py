"""Additive-margin cosine softmax losses: CosFace (Wang et al. 2018) and ArcFace (Deng et al. 2019)."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from ..errors import ConfigError
from . import LOSSES
from .base import LongTailLoss
from .functional import Counts, onehot_mask, smoothed_nll, to_compute


def _check_sm(name: str, s: float, m: float) -> tuple[float, float]:
    if float(s) <= 0:
        raise ConfigError(f"{name} s must be > 0, got {s}")
    if float(m) < 0:
        raise ConfigError(f"{name} m must be >= 0, got {m}")
    return float(s), float(m)


@LOSSES.register("cosface")
class CosFaceLoss(LongTailLoss):
    """Large-margin cosine loss, CosFace (Wang et al. 2018):

    CE over s * (cos_j - m [j = y]) on a cosine head. Defaults s = 30, m = 0.35 (the paper uses
    m = 0.35 with s = 64 for faces; s = 30 is the scale of the long-tailed cosine baselines).
    Prediction: s * cos.

    Args:
        class_counts: Per-class training counts (unused by the loss value).
        s: Scale s > 0.
        m: Additive cosine margin m >= 0.
    """

    cosine = True

    def __init__(self, class_counts: Counts, s: float = 30.0, m: float = 0.35) -> None:
        super().__init__(class_counts)
        self.s, self.m = _check_sm("cosface", s, m)

    def forward(self, logits: Tensor, target: Tensor, features: Optional[Tensor] = None) -> Tensor:
        self._check(logits, target)
        cos = to_compute(logits)
        onehot = onehot_mask(target, self.num_classes).to(cos.dtype)
        return smoothed_nll(self.s * (cos - self.m * onehot), target).mean()

    def predict(self, logits: Tensor, features: Optional[Tensor] = None) -> Tensor:
        """Evaluation logits s * cos."""
        return self.s * to_compute(logits)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, s={self.s}, m={self.m}"


@LOSSES.register("arcface")
class ArcFaceLoss(LongTailLoss):
    """Additive angular margin loss, ArcFace (Deng et al. 2019):

    CE over s * psi_j with psi_j = cos_j for j != y and, for the target, with theta = arccos(cos_y),
    psi_y = cos(theta + m) = cos_y cos m - sin_y sin m          if theta + m < pi
    psi_y = cos_y - m sin m                                      otherwise (standard fallback),
    where sin_y = sqrt(1 - cos_y^2). The fallback keeps psi_y decreasing in theta beyond
    pi - m (cos(theta + m) would increase again there). ``easy_margin=True`` instead uses
    psi_y = cos(theta + m) only where cos_y > 0 and cos_y otherwise.

    Numerical safety: cos_y is clamped to [-1 + eps, 1 - eps] before the square root, so a
    cosine of exactly +-1 gives a finite value and a finite (zero) gradient through the clamp.
    Defaults s = 30, m = 0.5 (the paper's m; its s = 64 is for faces). Prediction: s * cos.

    Args:
        class_counts: Per-class training counts (unused by the loss value).
        s: Scale s > 0.
        m: Additive angular margin m in [0, pi).
        easy_margin: Use the easy-margin variant.
        eps: Clamp distance from +-1.
    """

    cosine = True

    def __init__(self, class_counts: Counts, s: float = 30.0, m: float = 0.5, easy_margin: bool = False,
                 eps: float = 1e-6) -> None:
        super().__init__(class_counts)
        self.s, self.m = _check_sm("arcface", s, m)
        if self.m >= math.pi:
            raise ConfigError(f"arcface m must be < pi, got {m}")
        if not 0.0 < float(eps) < 0.5:
            raise ConfigError(f"arcface eps must be in (0, 0.5), got {eps}")
        self.easy_margin = bool(easy_margin)
        self.eps = float(eps)
        self._cos_m, self._sin_m = math.cos(self.m), math.sin(self.m)
        self._threshold = math.cos(math.pi - self.m)  # theta + m < pi  <=>  cos_y > cos(pi - m)

    def forward(self, logits: Tensor, target: Tensor, features: Optional[Tensor] = None) -> Tensor:
        self._check(logits, target)
        cos = to_compute(logits)
        target = target.long()
        c = cos.gather(1, target.unsqueeze(1)).clamp(-1.0 + self.eps, 1.0 - self.eps)
        sin = torch.sqrt(1.0 - c * c)
        phi = c * self._cos_m - sin * self._sin_m
        if self.easy_margin:
            phi = torch.where(c > 0, phi, c)
        else:
            phi = torch.where(c > self._threshold, phi, c - self.m * self._sin_m)
        is_target = onehot_mask(target, self.num_classes)
        z = self.s * torch.where(is_target, phi, cos)
        return smoothed_nll(z, target).mean()

    def predict(self, logits: Tensor, features: Optional[Tensor] = None) -> Tensor:
        """Evaluation logits s * cos."""
        return self.s * to_compute(logits)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, s={self.s}, m={self.m}, easy_margin={self.easy_margin}"
