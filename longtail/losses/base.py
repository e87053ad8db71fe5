"""The uniform loss interface every longtail loss implements.

Contract (see ``LongTailLoss``):

* Construction: ``Loss(class_counts, **hyper_parameters)``; ``class_counts`` is the per-class
  number of *training* images (length C, every entry >= 1). Every per-class constant is derived
  from the counts, never from the class index order.
* Call: ``loss(logits, target, features=None) -> scalar tensor``. ``logits`` is the model's raw
  head output of shape (N, C) (for cosine heads: the cosines, unscaled); ``features`` the pooled
  features (N, D) for losses with ``needs_features = True`` (FBL); ``target`` int64 (N,).
  The value is computed in float32 even when the inputs are bf16/fp16 (autocast).
* Schedules: ``set_progress(epoch, total_epochs)`` is called by the trainer at the start of
  every epoch (epoch counts from 0). Schedule state lives in *buffers updated in place* so that
  a step captured in a CUDA graph sees the change without a host synchronization.
* Evaluation: ``predict(logits, features=None)`` maps the raw head output to the logits used for
  prediction and calibration metrics (e.g. ``s * cos`` for cosine losses, prior-corrected logits
  for post-hoc logit adjustment). Default: identity. Noise and margins are training-only.
* Constants: per-class constants (counts, radii, margins, scales, cloud sizes, weights) and
  schedule values are float64 buffers, cast to the compute dtype where they are used: float64
  inputs see float64-exact constants, and float32 results are those of float32 constants (a
  cast of the float64 value rounds as storing it in float32 did). On MPS, which has no
  float64, ``.to("mps")`` makes them float32.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from ..balance import effective_number
from ..errors import ConfigError


def as_counts(class_counts: Sequence[int] | Tensor) -> Tensor:
    """Validate class counts and return them as a float64 CPU tensor."""
    counts = torch.as_tensor(class_counts, dtype=torch.float64).flatten().cpu()
    if counts.numel() < 2:
        raise ConfigError(f"class_counts must list at least 2 classes, got {counts.tolist()}")
    if (counts < 1).any():
        bad = [i for i, c in enumerate(counts.tolist()) if c < 1]
        raise ConfigError(f"class_counts must be >= 1 for every class; classes {bad} have no training images")
    return counts


class LongTailLoss(nn.Module):
    """Base class of every longtail loss.

    Args:
        class_counts: Per-class training counts (length C).

    Attributes:
        needs_features: True if ``forward`` needs the pooled features.
        cosine: True if the loss expects a cosine (normalized, bias-free) head.
    """

    needs_features: bool = False
    cosine: bool = False

    def __init__(self, class_counts: Sequence[int] | Tensor) -> None:
        super().__init__()
        counts = as_counts(class_counts)
        self.num_classes = int(counts.numel())
        self.register_buffer("class_counts", counts, persistent=False)

    def to(self, *args, **kwargs):
        """``nn.Module.to``; moving to MPS (no float64 there) first makes float64 buffers float32."""
        device = torch._C._nn._parse_to(*args, **kwargs)[0]
        if device is not None and device.type == "mps":
            self._apply(lambda t: t.float() if t.dtype == torch.float64 else t)
        return super().to(*args, **kwargs)

    # -- schedule ---------------------------------------------------------------------------
    def set_progress(self, epoch: int, total_epochs: int) -> None:
        """Tell the loss the training progress; default: nothing depends on it."""

    # -- evaluation -------------------------------------------------------------------------
    def predict(self, logits: Tensor, features: Optional[Tensor] = None) -> Tensor:
        """Logits used at evaluation; default identity."""
        return logits

    # -- helpers for subclasses -------------------------------------------------------------
    def _check(self, logits: Tensor, target: Tensor) -> None:
        if logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(
                f"{type(self).__name__}: logits must have shape (N, {self.num_classes}), got {tuple(logits.shape)}"
            )

    def forward(self, logits: Tensor, target: Tensor, features: Optional[Tensor] = None) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}"


def effective_number_weights(class_counts: Sequence[int] | Tensor, beta: float) -> Tensor:
    """Class-balanced weights of Cui et al. (2019): w_j ~ (1 - beta) / (1 - beta^n_j).

    Normalized so that the weights sum to C (the convention of the field's code). ``beta = 0``
    gives uniform weights.

    Returns:
        float64 tensor of shape (C,).
    """
    counts = as_counts(class_counts)
    if not 0.0 <= beta < 1.0:
        raise ConfigError(f"effective-number beta must be in [0, 1), got {beta}")
    w = torch.from_numpy(effective_number(counts.numpy(), beta))
    return w / w.sum() * counts.numel()


class DeferredReweighting(nn.Module):
    """Per-class loss weights with an optional deferred switch (DRW, Cao et al. 2019).

    Before ``drw_epoch`` the weights are ``1``; from ``drw_epoch`` on (epochs count from 0, as
    in the reference code's ``epoch // 160``), they are the effective-number weights with
    ``beta``. ``drw_epoch = 0`` means re-weighting from the start (plain class-balanced loss);
    ``drw_epoch = None`` disables re-weighting. The weights are a float64 buffer updated in
    place (cast to the compute dtype by the losses).

    Args:
        class_counts: Per-class training counts.
        drw_epoch: First re-weighted epoch, or None.
        beta: Effective-number beta (0.9999 in the field's code).
    """

    def __init__(self, class_counts: Sequence[int] | Tensor, drw_epoch: Optional[int] = None, beta: float = 0.9999) -> None:
        super().__init__()
        self.drw_epoch = drw_epoch
        self.register_buffer("balanced", effective_number_weights(class_counts, beta), persistent=False)
        init = self.balanced.clone() if drw_epoch == 0 else torch.ones_like(self.balanced)
        self.register_buffer("weight", init, persistent=False)

    @property
    def enabled(self) -> bool:
        return self.drw_epoch is not None

    def set_progress(self, epoch: int, total_epochs: int) -> None:
        if self.drw_epoch is None:
            return
        with torch.no_grad():
            self.weight.copy_(self.balanced if epoch >= self.drw_epoch else torch.ones_like(self.balanced))
