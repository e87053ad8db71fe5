"""Numerical helpers every longtail loss shares, so that all losses compute and reduce alike.

* :func:`compute_dtype` / :func:`to_compute`: float32 for bf16/fp16/fp32 inputs (autocast),
  float64 for float64 inputs (exact ``gradcheck``);
* :func:`onehot_mask`: the (N, C) target mask, without a host synchronization;
* :func:`smoothed_nll`: per-sample cross-entropy against a (label-)smoothed target;
* :func:`class_weighted_mean`: the batch reduction of ``F.cross_entropy(weight=...)``;
* :func:`check_drw`: validation of a deferred re-weighting epoch.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError

__all__ = ["Counts", "compute_dtype", "to_compute", "onehot_mask", "smoothed_nll", "class_weighted_mean",
           "check_drw"]

Counts = Union[Sequence[int], Tensor]


def compute_dtype(*tensors: Tensor) -> torch.dtype:
    """The dtype a loss computes in: float32 for bf16/fp16/fp32 inputs, float64 for float64.

    Low-precision (autocast) inputs are promoted to float32 as the interface requires; float64
    inputs stay float64 so that ``torch.autograd.gradcheck`` sees an exact float64 computation.

    Args:
        *tensors: The inputs (e.g. logits, or logits and features); their dtypes are promoted
            together with float32.
    """
    dtype = torch.float32
    for x in tensors:
        dtype = torch.promote_types(dtype, x.dtype)
    return dtype


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
