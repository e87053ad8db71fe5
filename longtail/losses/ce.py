"""Cross-entropy (optionally with deferred re-weighting and label smoothing) and class-balanced CE.

Also hosts the numerical helpers the baseline losses share (compute dtype, smoothed negative
log-likelihood, class-weighted mean), so that every baseline reduces the same way.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from . import LOSSES
from .base import DeferredReweighting, LongTailLoss

Counts = Union[Sequence[int], Tensor]


# -- shared helpers ------------------------------------------------------------------------------
def compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype a loss computes in: float32 for bf16/fp16/fp32 inputs, float64 for float64.

    Low-precision (autocast) inputs are promoted to float32 as the interface requires; float64
    inputs stay float64 so that ``torch.autograd.gradcheck`` sees an exact float64 computation.
    """
    return torch.promote_types(x.dtype, torch.float32)


def to_compute(x: Tensor) -> Tensor:
    """Cast ``x`` to :func:`compute_dtype` (a no-op for float32/float64)."""
    return x.to(compute_dtype(x))


def onehot_mask(target: Tensor, num_classes: int) -> Tensor:
    """Boolean (N, C) mask of the target entries, built by comparison with ``arange`` (no host
    synchronization on CUDA, unlike value-checking one-hot helpers)."""
    return target.long().unsqueeze(1) == torch.arange(num_classes, device=target.device)


def smoothed_nll(logits: Tensor, target: Tensor, smoothing: Union[float, Tensor] = 0.0) -> Tensor:
    """Per-sample cross-entropy against a smoothed one-hot target.

    l_i = -sum_j q_ij log p_ij with q_i = (1 - eps_i) onehot(y_i) + eps_i / C, i.e.
    l_i = (1 - eps_i) * (-log p_{i,y_i}) + eps_i * mean_j(-log p_ij)  (Szegedy et al. 2016).

    Args:
        logits: (N, C) logits in the compute dtype.
        target: (N,) class indices.
        smoothing: A python float (same eps for every sample; 0 skips the smoothing term) or an
            (N,) tensor of per-sample eps (label-aware smoothing).

    Returns:
        (N,) per-sample losses.
    """
    logp = F.log_softmax(logits, dim=1)
    nll = -logp.gather(1, target.long().unsqueeze(1)).squeeze(1)
    if isinstance(smoothing, (int, float)) and smoothing == 0:
        return nll
    if isinstance(smoothing, Tensor):
        smoothing = smoothing.to(logp.dtype)
    return (1.0 - smoothing) * nll - smoothing * logp.mean(dim=1)


def class_weighted_mean(per_sample: Tensor, target: Tensor, weight: Optional[Tensor]) -> Tensor:
    """Mean of per-sample losses, weighted by the target's class weight when ``weight`` is given.

    Weighted: sum_i w_{y_i} l_i / sum_i w_{y_i} -- the normalization of ``F.cross_entropy`` with
    ``weight=`` (and of the LDAM-DRW reference code). Unweighted: the plain mean.
    """
    if weight is None:
        return per_sample.mean()
    w = weight.to(per_sample.dtype)[target.long()]
    return (w * per_sample).sum() / w.sum()


def check_drw(drw_epoch: Optional[int]) -> Optional[int]:
    """Validate a DRW epoch (None or an int >= 0)."""
    if drw_epoch is None:
        return None
    if isinstance(drw_epoch, bool) or not isinstance(drw_epoch, int) or drw_epoch < 0:
        raise ConfigError(f"drw_epoch must be None or an integer >= 0, got {drw_epoch!r}")
    return drw_epoch


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
