"""Input mixup (Zhang et al. 2018) for any longtail loss.

``mixup_batch`` mixes a batch with a random permutation of itself, ``mixup_loss`` combines the
loss against both targets. All sampling happens on the batch's device (no host synchronization),
so a training step using mixup can be captured in a CUDA graph.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple, Union

import torch
from torch import Tensor

from ..errors import ConfigError


def _sample_beta(alpha: float, device: torch.device, generator: Optional[torch.Generator]) -> Tensor:
    """lam ~ Beta(alpha, alpha) as a 0-dim float32 tensor on ``device``.

    Sampled as G1 / (G1 + G2) with G1, G2 ~ Gamma(alpha, 1) i.i.d., in float64 (so that both
    gammas underflowing to 0 for small alpha is practically impossible; the sum is still clamped
    to the smallest positive number, giving lam = 0 rather than NaN in that case).
    """
    gen_device = generator.device if generator is not None else device
    conc = torch.full((2,), float(alpha), dtype=torch.float64, device=gen_device)
    g = torch._standard_gamma(conc, generator=generator)
    lam = g[0] / (g[0] + g[1]).clamp_min(torch.finfo(torch.float64).tiny)
    return lam.clamp(0.0, 1.0).to(device=device, dtype=torch.float32)


def mixup_batch(
    x: Tensor, y: Tensor, alpha: float, generator: Optional[torch.Generator] = None
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Mix a batch with a permutation of itself (Zhang et al. 2018).

    x_mixed = lam * x + (1 - lam) * x[perm], lam ~ Beta(alpha, alpha), perm a uniformly random
    permutation of the batch. One lam per batch, as in the reference implementation.

    Args:
        x: Input batch (N, ...), floating point.
        y: Targets (N,).
        alpha: Beta concentration; ``alpha <= 0`` disables mixing (returns x, y, y, lam = 1).
        generator: Optional torch.Generator (its device is used for sampling; the results are
            moved to x's device). None: the default generator of x's device.

    Returns:
        (x_mixed, y_a, y_b, lam): y_a = y, y_b = y[perm], lam a 0-dim float32 tensor on x's device.
    """
    alpha = float(alpha)
    if alpha != alpha:  # NaN
        raise ConfigError("mixup alpha must be a number, got NaN")
    if alpha <= 0:
        return x, y, y, torch.ones((), dtype=torch.float32, device=x.device)
    lam = _sample_beta(alpha, x.device, generator)
    gen_device = generator.device if generator is not None else x.device
    perm = torch.randperm(x.shape[0], generator=generator, device=gen_device).to(x.device)
    lam_x = lam.to(x.dtype)
    x_mixed = lam_x * x + (1.0 - lam_x) * x[perm]
    return x_mixed, y, y[perm], lam


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
        y_a, y_b: The two target sets returned by :func:`mixup_batch`.
        lam: Mixing weight (python float or 0-dim tensor).
        features: Pooled features, forwarded to the loss.
    """
    la = loss_fn(logits, y_a, features=features)
    lb = loss_fn(logits, y_b, features=features)
    if isinstance(lam, Tensor):
        lam = lam.to(device=la.device, dtype=la.dtype)
    return lam * la + (1.0 - lam) * lb
