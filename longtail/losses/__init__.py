"""Drop-in losses for long-tailed recognition, all with one signature.

``build_loss(name, class_counts, **params)`` builds any registered loss; ``LOSSES.names()`` lists
them. See :mod:`longtail.losses.base` for the interface.
"""
from ..registry import Registry

LOSSES = Registry("loss")

from .base import LongTailLoss  # noqa: E402,F401
from . import baselines  # noqa: E402,F401  (CE, focal, CB, LDAM, LA, BS, EQL, CosFace, ArcFace, LAS)
from . import kps, fbl, gcl  # noqa: E402,F401  (the thesis's methods)
from .mixup import MixupSchedule, mixup_loss  # noqa: E402,F401


def build_loss(name: str, class_counts, **params) -> LongTailLoss:
    """Build the loss registered as ``name`` from the training class counts."""
    return LOSSES.build(name, class_counts, **params)
