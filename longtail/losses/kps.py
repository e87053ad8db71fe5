"""Key Point Sensitive (KPS) loss with Gradient Adjustment (GA), thesis chapter 3.

The loss works on a cosine head (``cosine = True``): ``logits`` are the unscaled cosines
``cos_j`` between the pooled feature and the class anchors.

Per-class constants (sec. 3.5.2), all computed from the class counts:

* radius, eq. (3.27): ``r'_i = log(n_i * n_base / n_min)``, ``r_i = r'_i / min(r')``
  (the class with ``n_min`` gets radius 1, the head the largest radius);
* margin, eq. (3.28)-(3.29): ``m'_i = max(r) + 1 - r_i``, ``m_i = m'_i * m_max / max(m')``
  (the tail gets ``m_max``, the head the least);
* GA scale, eq. (3.25), (3.30): ``s_i = s_base * m'_i`` (the reference code clamps it to
  ``[s, 50]``).

Loss, eq. (3.16) / (3.21)-(3.22): cross-entropy over ``s * (r_j cos_j - m_j [j = y])``. With GA,
eq. (3.26), the scale of the *whole row* of a sample of class ``y`` is ``s_y`` instead of ``s``;
Algorithm 3.1 trains plain KPS first and switches GA on later (epoch 120 of 200 in the code).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from . import LOSSES
from .base import DeferredReweighting, LongTailLoss, as_counts
from .functional import compute_dtype, onehot_mask, to_compute

__all__ = ["KPSLoss", "kps_constants"]


def kps_constants(
    class_counts: Union[Sequence[int], Tensor], n_base: float = 50.0, m_max: float = 0.2, s_base: float = 15.0
) -> dict:
    """Per-class KPS constants of eqs. (3.27)-(3.30), in float64.

    Args:
        class_counts: Per-class training counts.
        n_base: The count the smallest class is mapped to before the log (eq. 3.27), > 1.
        m_max: The largest margin, given to the class with the largest ``m'`` (eq. 3.29).
        s_base: The stage-1 scale that multiplies ``m'`` into the GA scale (eq. 3.30).

    Returns:
        dict with float64 tensors ``radius`` (r, eq. 3.27), ``m_prime`` (m', eq. 3.28),
        ``margin`` (m, eq. 3.29) and ``ga_scale_raw`` (``s_base * m'``, eq. 3.30, unclamped).
    """
    counts = as_counts(class_counts)
    if not n_base > 1.0:
        raise ConfigError(f"kps: n_base must be > 1 (log(n_base) is the smallest radius before normalization), got {n_base}")
    if m_max < 0:
        raise ConfigError(f"kps: m_max must be >= 0, got {m_max}")
    r_prime = torch.log(counts * (float(n_base) / counts.min()))  # eq. (3.27), first step
    radius = r_prime / r_prime.min()  # eq. (3.27)
    m_prime = radius.max() + 1.0 - radius  # eq. (3.28)
    margin = m_prime * (float(m_max) / m_prime.max())  # eq. (3.29)
    return {"radius": radius, "m_prime": m_prime, "margin": margin, "ga_scale_raw": float(s_base) * m_prime}


@LOSSES.register("kps")
class KPSLoss(LongTailLoss):
    r"""KPS loss (eq. 3.16) with the Gradient Adjustment schedule (eq. 3.26, Algorithm 3.1).

    ``loss(cos, y) = CE(scale * (r_j cos_j - m_j [j = y]), y)`` where ``scale = s`` before
    ``ga_epoch`` and ``scale = s_y = clamp(s_base * m'_y, *ga_clamp)`` from ``ga_epoch`` on.

    Defaults are the authors' CIFAR code (``s = s_base = 15``, ``n_base = 50``, ``m_max = 0.2``,
    GA from epoch 120, GA scale clamped to ``[s, 50]``). The thesis text (sec. 3.5.2) states
    ``m_max = 0.5`` for CIFAR, 0.35 for ImageNet-LT and 0.3 for iNaturalist and no clamp:
    select it with ``m_max=0.5, ga_clamp=None``. Table 3.4's ablations: KPS alone is
    ``ga_epoch=None``; KPS + DRW is ``ga_epoch=None, drw_epoch=160``.

    Prediction (:meth:`predict`) uses ``s * cos_j``, without radius or margin: the thesis
    distinguishes the *class boundary* of the training objective, ``r_2 cos_2 - m_2 = r_1 cos_1``
    (sec. 3.4.2.1), from the *decision boundary* "defined by the standard cross-entropy function
    which is used during testing" (footnote 1 of sec. 3.1), ``cos_2 = cos_1`` (slope 1 in
    Figure 3.3); the margins are the distances between the two. The reference code also
    evaluates with the raw cosine output of the model.

    Args:
        class_counts: Per-class training counts.
        s: Scale of the plain KPS stage (eq. 3.16) and lower clamp of the GA scale in the code.
        s_base: Base scale of the GA scale ``s_i = s_base * m'_i`` (eq. 3.30).
        n_base: Count the smallest class is mapped to in the radius (eq. 3.27).
        m_max: Largest margin (eq. 3.29); code 0.2 (CIFAR), thesis 0.5 (CIFAR).
        ga_epoch: First epoch (counting from 0) trained with GA; ``None`` disables GA,
            ``0`` uses GA from the start.
        ga_clamp: ``"code"`` (default) clamps the GA scale to ``[s, 50]`` like the reference code;
            a pair ``(low, high)`` (either may be None) clamps to it; ``None`` does not clamp
            (thesis eq. 3.30).
        drw_epoch: Deferred re-weighting (Table 3.4 "KPS-DRW"): first epoch with class-balanced
            weights, or None.
        beta: Effective-number beta of the DRW weights.
    """

    cosine = True

    def __init__(
        self,
        class_counts: Union[Sequence[int], Tensor],
        s: float = 15.0,
        s_base: float = 15.0,
        n_base: float = 50.0,
        m_max: float = 0.2,
        ga_epoch: Optional[int] = 120,
        ga_clamp: Union[str, Sequence[Optional[float]], None] = "code",
        drw_epoch: Optional[int] = None,
        beta: float = 0.9999,
    ) -> None:
        super().__init__(class_counts)
        if not s > 0 or not s_base > 0:
            raise ConfigError(f"kps: s and s_base must be > 0, got s={s}, s_base={s_base}")
        if ga_epoch is not None and int(ga_epoch) < 0:
            raise ConfigError(f"kps: ga_epoch must be >= 0 or None, got {ga_epoch}")
        self.s = float(s)
        self.s_base = float(s_base)
        self.n_base = float(n_base)
        self.m_max = float(m_max)
        self.ga_epoch = None if ga_epoch is None else int(ga_epoch)
        self.ga_clamp = self._parse_clamp(ga_clamp, self.s)

        const = kps_constants(self.class_counts, n_base=self.n_base, m_max=self.m_max, s_base=self.s_base)
        ga_scale = const["ga_scale_raw"]
        if self.ga_clamp is not None:
            low, high = self.ga_clamp
            ga_scale = ga_scale.clamp(min=low, max=high)
        # float64, cast to the compute dtype at use (see longtail.losses.base)
        self.register_buffer("radius", const["radius"], persistent=False)
        self.register_buffer("margin", const["margin"], persistent=False)
        self.register_buffer("m_prime", const["m_prime"], persistent=False)
        self.register_buffer("ga_scale", ga_scale, persistent=False)
        # 0/1 flag switched in place by set_progress: a captured CUDA graph sees the switch.
        ga_on = 1.0 if self.ga_epoch == 0 else 0.0
        self.register_buffer("ga_active", torch.tensor(ga_on), persistent=False)
        self.drw = DeferredReweighting(self.class_counts, drw_epoch=drw_epoch, beta=beta)

    @staticmethod
    def _parse_clamp(ga_clamp, s: float) -> Optional[Tuple[Optional[float], Optional[float]]]:
        if ga_clamp is None:
            return None
        if isinstance(ga_clamp, str):
            if ga_clamp != "code":
                raise ConfigError(f"kps: ga_clamp must be 'code', a pair (low, high) or None, got {ga_clamp!r}")
            return (s, 50.0)
        try:
            low, high = ga_clamp
        except (TypeError, ValueError):
            raise ConfigError(f"kps: ga_clamp must be 'code', a pair (low, high) or None, got {ga_clamp!r}") from None
        low = None if low is None else float(low)
        high = None if high is None else float(high)
        if low is not None and high is not None and low > high:
            raise ConfigError(f"kps: ga_clamp low {low} > high {high}")
        return (low, high)

    # -- schedule ---------------------------------------------------------------------------
    def set_progress(self, epoch: int, total_epochs: int) -> None:
        """Switch GA on from ``ga_epoch`` (Algorithm 3.1) and DRW from ``drw_epoch``, in place."""
        if self.ga_epoch is not None:
            with torch.no_grad():
                self.ga_active.fill_(1.0 if epoch >= self.ga_epoch else 0.0)
        self.drw.set_progress(epoch, total_epochs)

    # -- loss -------------------------------------------------------------------------------
    def kps_logits(self, logits: Tensor, target: Tensor) -> Tensor:
        """The scaled KPS logits ``scale_i * (r_j cos_ij - m_j [j = y_i])`` (eq. 3.16, 3.26).

        Args:
            logits: Cosines ``(N, C)``.
            target: Labels ``(N,)``.

        Returns:
            ``(N, C)`` tensor in float32 (float64 for float64 input).
        """
        self._check(logits, target)
        dt = compute_dtype(logits)
        cos = logits.to(dt)
        onehot = onehot_mask(target, self.num_classes).to(dt)
        z_hat = self.radius.to(dt) * cos - self.margin.to(dt) * onehot  # eq. (3.21)
        if self.ga_epoch is None:
            return self.s * z_hat  # eq. (3.22)
        s_y = self.ga_scale.to(dt)[target]  # eq. (3.25): the target's class picks the row scale
        scale = torch.where(self.ga_active > 0.5, s_y, torch.full_like(s_y, self.s))
        return scale.unsqueeze(1) * z_hat  # eq. (3.26)

    def forward(self, logits: Tensor, target: Tensor, features: Optional[Tensor] = None) -> Tensor:
        """KPS (eq. 3.16) or KPS-GA (eq. 3.26) loss, mean over the batch (DRW-weighted mean if on)."""
        out = self.kps_logits(logits, target)
        weight = self.drw.weight.to(out.dtype) if self.drw.enabled else None
        return F.cross_entropy(out, target, weight=weight)

    def predict(self, logits: Tensor, features: Optional[Tensor] = None) -> Tensor:
        """``s * cos``: the decision boundary used at test time ignores radius and margin."""
        return self.s * to_compute(logits)

    # -- introspection ----------------------------------------------------------------------
    def constants(self) -> dict:
        """Per-class constants: radius (3.27), margin (3.29), m' (3.28), GA scale (3.30, clamped)."""
        out = {
            "radius": self.radius,
            "margin": self.margin,
            "m_prime": self.m_prime,
            "ga_scale": self.ga_scale,
        }
        if self.drw.enabled:
            out["drw_weight"] = self.drw.balanced
        return out

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, s={self.s}, s_base={self.s_base}, n_base={self.n_base}, "
            f"m_max={self.m_max}, ga_epoch={self.ga_epoch}, ga_clamp={self.ga_clamp}, drw_epoch={self.drw.drw_epoch}"
        )
