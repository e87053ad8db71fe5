"""Imports every baseline loss module so that its losses register in ``LOSSES``.

Registered names: ce, cb_ce, focal, cb_focal, ldam, la, posthoc_la, balanced_softmax, eql,
cosface, arcface, label_aware_smoothing.
"""
from . import ce, focal, ldam, logit_adjust, balanced_softmax, equalization, margin_softmax  # noqa: F401
from . import label_aware_smoothing  # noqa: F401
