"""Backbones and classifier heads.

``build_model(backbone, head, num_classes, ...)`` -> :class:`LongTailModel`, whose forward returns
``ModelOutput(logits, features)``.
"""
from .model import BACKBONES, HEADS, LongTailModel, ModelOutput, build_model  # noqa: F401
from .heads import CosineHead, LinearHead, LWSHead, tau_normalize  # noqa: F401
