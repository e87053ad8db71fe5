"""Input mixup (Zhang et al. 2018) for any longtail loss: the one implementation training uses.

:class:`MixupSchedule` mixes each training batch with a random permutation of itself, with one
``lam ~ Beta(alpha, alpha)`` per step; :func:`mixup_loss` combines the loss against both target
sets. All sampling happens on the batch's device (no host synchronization), so a training step
using mixup can be captured in a CUDA graph (:class:`longtail.engine.step.TrainStep`).
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Tuple, Union

import torch
from torch import Tensor

from ..errors import ConfigError

__all__ = ["MixupSchedule", "mixup_loss"]


class MixupSchedule:
    """Per-epoch mixup coefficients on the device (one ``lam`` per training step).

    ``start_epoch(steps)`` draws ``lam ~ Beta(alpha, alpha)`` for every step of the epoch at
    once, from the global RNG of the device (which the trainer re-seeds every epoch), without a
    host sync; :meth:`mix` uses the next one, counted by a device tensor. A step past the end
    reuses the last coefficient. The coefficient tensor keeps its address across epochs of the
    same length, so a captured CUDA graph keeps reading the current epoch's values.

    Args:
        alpha: Beta concentration, > 0 (the trainer does not build a schedule for 0).
        device: Device of the batches.

    Raises:
        ConfigError: ``alpha`` is not a positive number.
    """

    def __init__(self, alpha: float, device: torch.device) -> None:
        alpha = float(alpha)
        if not (alpha > 0 and math.isfinite(alpha)):
            raise ConfigError(f"mixup alpha must be a positive number, got {alpha}")
        self.alpha = alpha
        self.device = device
        self.lams = torch.ones(1, device=device)
        self.index = torch.zeros((), dtype=torch.long, device=device)

    def start_epoch(self, steps: int) -> None:
        """Draw the coefficients of an epoch of ``steps`` steps and restart the step counter."""
        a = torch.full((steps + 1,), self.alpha, device=self.device)
        lams = torch.distributions.Beta(a, a, validate_args=False).sample()  # no host-side check
        if self.lams.shape == lams.shape:
            self.lams.copy_(lams)  # keep the address a captured graph reads
        else:
            self.lams = lams
        self.index.zero_()

    def mix(self, x: Tensor, y: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """Mix a batch with a permutation of itself: ``lam * x + (1 - lam) * x[perm]``.

        Args:
            x: Input batch ``(N, ...)``, floating point (its dtype is kept).
            y: Targets ``(N,)``.

        Returns:
            ``(x_mixed, y_a, y_b, lam)``: ``y_a = y``, ``y_b = y[perm]``, ``lam`` the step's 0-dim
            float32 coefficient; ``perm`` is ``argsort`` of ``N`` uniform draws of the device's
            global RNG.
        """
        lam = self.lams.index_select(0, self.index.clamp(max=self.lams.numel() - 1).reshape(1)).reshape(())
        self.index.add_(1)
        perm = torch.argsort(torch.rand(x.shape[0], device=x.device))
        lam_x = lam.to(x.dtype)
        x = lam_x * x + (1 - lam_x) * x.index_select(0, perm)
        return x, y, y.index_select(0, perm), lam


def mixup_loss(
    loss_fn: Callable[..., Tensor],
    logits: Tensor,
    y_a: Tensor,
    y_b: Tensor,
    lam: Union[float, Tensor],
    features: Optional[Tensor] = None,
) -> Tensor:
    """Mixup loss lam * L(logits, y_a) + (1 - lam) * L(logits, y_b) (Zhang et al. 2018).

    Works with every longtail loss (``loss_fn(logits, target, features=None)``): the loss is
    evaluated once per target set, so losses with per-call randomness draw it twice.

    Args:
        loss_fn: A loss with the longtail signature.
        logits: Head output (N, C).
        y_a, y_b: The two target sets returned by :meth:`MixupSchedule.mix`.
        lam: Mixing weight (python float or 0-dim tensor).
        features: Pooled features, forwarded to the loss.
    """
    la = loss_fn(logits, y_a, features=features)
    lb = loss_fn(logits, y_b, features=features)
    if isinstance(lam, Tensor):
        lam = lam.to(device=la.device, dtype=la.dtype)
    return lam * la + (1.0 - lam) * lb
