"""Learning-rate schedules, evaluated per epoch as the field's CIFAR-LT code does.

``lr_at(epoch, optim_cfg)`` gives the learning rate of an epoch (counting from 0):

* linear warm-up: ``lr * (epoch + 1) / warmup_epochs`` for ``epoch < warmup_epochs``;
* ``multistep``: ``lr * milestone_factors[k]`` from ``milestones[k]`` on (absolute factors: the
  CIFAR-LT recipe has ``[160, 180]`` and ``[0.01, 0.0001]``; epochs count from 0, so the factor
  applies when ``epoch >= milestone``, which is the reference code's ``epoch > 160`` with 1-based
  epochs);
* ``cosine``: ``min_lr + (lr - min_lr) * (1 + cos(pi * e / E)) / 2`` over the post-warm-up epochs;
* ``constant``.
"""
from __future__ import annotations

import math

from ..errors import ConfigError

SCHEDULES = ("multistep", "cosine", "constant")


def check_schedule(optim: dict) -> None:
    """Raise ConfigError for an inconsistent schedule block."""
    if optim["schedule"] not in SCHEDULES:
        raise ConfigError(f"optim.schedule '{optim['schedule']}' unknown; valid: {', '.join(SCHEDULES)}")
    if optim["schedule"] == "multistep" and len(optim["milestones"]) != len(optim["milestone_factors"]):
        raise ConfigError(
            f"optim.milestones {optim['milestones']} and optim.milestone_factors "
            f"{optim['milestone_factors']} must have the same length"
        )
    if optim["epochs"] < 1:
        raise ConfigError(f"optim.epochs must be >= 1, got {optim['epochs']}")


def lr_at(epoch: int, optim: dict) -> float:
    """Learning rate for ``epoch`` (0-based) under the ``optim`` config block."""
    base = float(optim["lr"])
    warm = int(optim.get("warmup_epochs", 0) or 0)
    if epoch < warm:
        return base * (epoch + 1) / warm
    kind = optim["schedule"]
    if kind == "constant":
        return base
    if kind == "multistep":
        factor = 1.0
        for m, f in zip(optim["milestones"], optim["milestone_factors"]):
            if epoch >= m:
                factor = float(f)
        return base * factor
    if kind == "cosine":
        span = max(1, int(optim["epochs"]) - warm)
        t = min(epoch - warm, span)
        lo = float(optim.get("min_lr", 0.0) or 0.0)
        return lo + (base - lo) * 0.5 * (1.0 + math.cos(math.pi * t / span))
    raise ConfigError(f"optim.schedule '{kind}' unknown; valid: {', '.join(SCHEDULES)}")
