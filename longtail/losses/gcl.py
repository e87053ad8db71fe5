"""Gaussian Clouded Logit (GCL) loss, thesis chapter 5.

GCL works on a cosine head (``cosine = True``): ``logits`` are the unscaled cosines ``cos_j``.
The clouded cosine logit, eq. (5.11), is

    z^cl_ij = s * (cos_ij - a * delta_j * |eps_ij| - m [j = y_i]),

with ``eps_ij ~ Normal(0, std = 1/3)`` clamped to ``[-1, 1]`` (sec. 5.4.1), drawn afresh for
every sample and every class, target included, at every training forward; ``a`` is the noise
amplitude of the reference code (``noise_mul``), ``m`` an optional target margin (0 in stage 1,
0.1 in the classifier re-balancing stage 2). The loss, eq. (5.12), is the cross-entropy over
``z^cl``; stage 2 adds a focal factor ``(1 - p_y)^gamma`` (gamma = 1 in the code).

Cloud size ``delta_j`` (eq. 5.9, Table 5.4), normalized by its maximum (sec. 5.4.1) so that the
head gets 0 and the tail 1:

* ``"log"`` (default): ``log n_max - log n_j``;
* ``"cos"``: ``cos(n_j / n_max * pi/2)``;
* ``"cbrt"``: ``n_max^(1/3) - n_j^(1/3)``;
* ``"qrt"``: ``n_max^(1/4) - n_j^(1/4)``.

No noise at evaluation: :meth:`GCLLoss.predict` returns ``s * cos``.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ..balance import log_ratio
from ..errors import ConfigError
from . import LOSSES
from .base import DeferredReweighting, LongTailLoss, as_counts
from .functional import class_weighted_mean, compute_dtype, onehot_mask, to_compute

__all__ = ["GCLLoss", "cloud_sizes", "CLOUDS"]

CLOUDS = ("log", "cos", "cbrt", "qrt")


def cloud_sizes(class_counts: Union[Sequence[int], Tensor], cloud: str = "log") -> Tensor:
    """Normalized logit cloud sizes ``delta_j / max(delta)`` (eq. 5.9, Table 5.4), float64.

    The raw size of the largest class is subtracted first, so the head's size is exactly 0
    for every form (``cos(pi/2)`` is ``6e-17`` in floating point); with equal counts every
    size is 0.

    Args:
        class_counts: Per-class training counts.
        cloud: ``"log"``, ``"cos"``, ``"cbrt"`` or ``"qrt"``.
    """
    counts = as_counts(class_counts)
    n_max = counts.max()
    if cloud == "log":
        raw = torch.from_numpy(log_ratio(counts.numpy()))
    elif cloud == "cos":
        raw = torch.cos(counts / n_max * (math.pi / 2.0))
        raw = raw - torch.cos(torch.ones((), dtype=raw.dtype) * (math.pi / 2.0))
    elif cloud == "cbrt":
        raw = n_max ** (1.0 / 3.0) - counts ** (1.0 / 3.0)
    elif cloud == "qrt":
        raw = n_max**0.25 - counts**0.25
    else:
        raise ConfigError(f"gcl: unknown cloud {cloud!r}; valid: {', '.join(CLOUDS)}")
    raw = raw.clamp_min(0.0)
    top = raw.max()
    return raw / top if top > 0 else torch.zeros_like(raw)


@LOSSES.register("gcl")
class GCLLoss(LongTailLoss):
    r"""Gaussian clouded logit loss, eqs. (5.11)-(5.12).

    Stage 1 (representation learning) uses the defaults ``s = 30, m = 0, gamma = 0``; stage 2
    (classifier re-balancing with the CBEN sampler) uses ``m = 0.1, s = 20`` (15 on Places-LT)
    and ``gamma = 1``. The noise amplitude ``noise_mul`` (``a``) is 0.5 on CIFAR and ImageNet-LT
    and 1.0 on Places-LT in the reference code; the thesis eq. (5.11) corresponds to ``a = 1``.

    Noise is drawn only when the module is in training mode (``self.training``, the
    ``nn.Module`` default) and no explicit ``noise`` is given; it is drawn with
    ``torch.randn(..., device=logits.device)``, which a CUDA graph can capture (a custom
    ``generator`` must then be registered with the graph).

    Args:
        class_counts: Per-class training counts.
        s: Scale of the cosine logits.
        noise_mul: Cloud amplitude ``a``.
        noise_std: Standard deviation of ``eps`` (1/3, sec. 5.4.1).
        noise_clamp: ``eps`` is clamped to ``[-noise_clamp, noise_clamp]`` (1, sec. 5.4.1);
            ``None`` does not clamp.
        m: Target margin subtracted from the target cosine.
        gamma: Focal factor ``(1 - p_y)^gamma`` on the per-sample loss (0: plain CE).
        focal_detach: Detach the focal factor from the graph, as the reference code does
            (default True); False gives the usual focal-loss gradient.
        cloud: Cloud-size form, see :func:`cloud_sizes`.
        weight: Optional static per-class loss weights (length C).
        drw_epoch: Deferred re-weighting: first epoch with class-balanced weights, or None.
        beta: Effective-number beta of the DRW weights.
        generator: Optional ``torch.Generator`` for the noise (on the logits' device).
    """

    cosine = True

    def __init__(
        self,
        class_counts: Union[Sequence[int], Tensor],
        s: float = 30.0,
        noise_mul: float = 0.5,
        noise_std: float = 1.0 / 3.0,
        noise_clamp: Optional[float] = 1.0,
        m: float = 0.0,
        gamma: float = 0.0,
        focal_detach: bool = True,
        cloud: str = "log",
        weight: Optional[Union[Sequence[float], Tensor]] = None,
        drw_epoch: Optional[int] = None,
        beta: float = 0.9999,
        generator: Optional[torch.Generator] = None,
    ) -> None:
        super().__init__(class_counts)
        if not s > 0:
            raise ConfigError(f"gcl: s must be > 0, got {s}")
        if noise_mul < 0 or noise_std < 0:
            raise ConfigError(f"gcl: noise_mul and noise_std must be >= 0, got {noise_mul}, {noise_std}")
        if noise_clamp is not None and not noise_clamp > 0:
            raise ConfigError(f"gcl: noise_clamp must be > 0 or None, got {noise_clamp}")
        if gamma < 0:
            raise ConfigError(f"gcl: gamma must be >= 0, got {gamma}")
        self.s = float(s)
        self.noise_mul = float(noise_mul)
        self.noise_std = float(noise_std)
        self.noise_clamp = None if noise_clamp is None else float(noise_clamp)
        self.m = float(m)
        self.gamma = float(gamma)
        self.focal_detach = bool(focal_detach)
        self.cloud = cloud
        self.generator = generator
        # float64, cast to the compute dtype at use (see longtail.losses.base)
        self.register_buffer("delta", cloud_sizes(self.class_counts, cloud), persistent=False)
        if weight is not None:
            w = torch.as_tensor(weight, dtype=torch.float64).flatten().cpu()
            if w.numel() != self.num_classes:
                raise ConfigError(f"gcl: weight must have {self.num_classes} entries, got {w.numel()}")
            if (w < 0).any():
                raise ConfigError("gcl: weight entries must be >= 0")
            self.register_buffer("static_weight", w, persistent=False)
        else:
            self.static_weight = None
        self.drw = DeferredReweighting(self.class_counts, drw_epoch=drw_epoch, beta=beta)

    # -- schedule ---------------------------------------------------------------------------
    def set_progress(self, epoch: int, total_epochs: int) -> None:
        """Only the optional DRW weights depend on the epoch (updated in place)."""
        self.drw.set_progress(epoch, total_epochs)

    # -- loss -------------------------------------------------------------------------------
    def sample_noise(self, shape: Sequence[int], device: torch.device, dtype: torch.dtype) -> Tensor:
        """A raw draw ``eps ~ Normal(0, noise_std)`` of ``shape`` (before clamp and ``| |``)."""
        return torch.randn(tuple(shape), device=device, dtype=dtype, generator=self.generator) * self.noise_std

    def clouded_logits(self, logits: Tensor, target: Tensor, noise: Optional[Tensor] = None) -> Tensor:
        """Clouded cosine logits of eq. (5.11), with target margin ``m``.

        Args:
            logits: Cosines ``(N, C)``.
            target: Labels ``(N,)``.
            noise: Raw ``eps`` of shape ``(N, C)`` (clamped and made absolute here), or None for
                no cloud. :meth:`forward` passes a fresh draw in training mode.

        Returns:
            ``s * (cos_j - a * delta_j * |clamp(eps_j)| - m [j = y])`` in float32 (float64 for
            float64 input).
        """
        self._check(logits, target)
        dt = compute_dtype(logits)
        cos = logits.to(dt)
        if noise is not None:
            eps = noise.to(dt)
            if eps.shape != cos.shape:
                raise ValueError(f"GCLLoss: noise must have shape {tuple(cos.shape)}, got {tuple(eps.shape)}")
            if self.noise_clamp is not None:
                eps = eps.clamp(-self.noise_clamp, self.noise_clamp)
            cos = cos - self.noise_mul * self.delta.to(dt) * eps.abs()  # eq. (5.11)
        if self.m != 0.0:
            onehot = onehot_mask(target, self.num_classes).to(dt)
            cos = cos - self.m * onehot
        return self.s * cos

    def _class_weight(self, dtype: torch.dtype) -> Optional[Tensor]:
        w = None
        if self.static_weight is not None:
            w = self.static_weight.to(dtype)
        if self.drw.enabled:
            d = self.drw.weight.to(dtype)
            w = d if w is None else w * d
        return w

    def forward(
        self, logits: Tensor, target: Tensor, features: Optional[Tensor] = None, noise: Optional[Tensor] = None
    ) -> Tensor:
        """GCL loss, eq. (5.12), optionally focal-weighted.

        Args:
            logits: Cosines ``(N, C)``.
            target: Labels ``(N,)``.
            features: Unused.
            noise: Explicit raw ``eps`` ``(N, C)``, used in any mode (for tests and analysis).
                None: a fresh draw in training mode, no cloud in evaluation mode.

        Returns:
            Scalar. Mean over the batch, weighted by the class weights if any
            (``sum_i w_yi l_i / sum_i w_yi``, as ``F.cross_entropy``); with ``gamma > 0``,
            ``l_i = (1 - p_i)^gamma * CE_i`` with ``p_i`` the (unweighted) target probability.
        """
        if noise is None and self.training and self.noise_mul > 0 and self.noise_std > 0:
            noise = self.sample_noise(logits.shape, logits.device, compute_dtype(logits))
        out = self.clouded_logits(logits, target, noise)
        weight = self._class_weight(out.dtype)
        if self.gamma == 0.0:
            return F.cross_entropy(out, target, weight=weight)
        ce = F.cross_entropy(out, target, reduction="none")
        p = torch.exp(-ce)
        factor = (1.0 - p).clamp_min(0.0)
        if self.focal_detach:
            factor = factor.detach()
        return class_weighted_mean(factor.pow(self.gamma) * ce, target, weight)

    def predict(self, logits: Tensor, features: Optional[Tensor] = None) -> Tensor:
        """``s * cos``: no cloud and no margin at evaluation."""
        return self.s * to_compute(logits)

    # -- introspection ----------------------------------------------------------------------
    def constants(self) -> dict:
        """Per-class constants: normalized cloud size ``delta`` (eq. 5.9 / Table 5.4)."""
        out = {"delta": self.delta, "a_delta": self.noise_mul * self.delta}
        if self.static_weight is not None:
            out["weight"] = self.static_weight
        if self.drw.enabled:
            out["drw_weight"] = self.drw.balanced
        return out

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, s={self.s}, noise_mul={self.noise_mul}, noise_std={self.noise_std}, "
            f"noise_clamp={self.noise_clamp}, m={self.m}, gamma={self.gamma}, cloud={self.cloud!r}, "
            f"drw_epoch={self.drw.drw_epoch}"
        )
