"""Checking a state dict against a model before loading it: one message for every mismatch.

Used by stage-1 checkpoints (:func:`longtail.engine.checkpoint.load_model_state`), local
torchvision weights (:func:`longtail.models.resnet_tv.load_pretrained`) and local timm weights.
"""
from __future__ import annotations

from typing import Callable, List, Mapping

_SHOW = 5  # offending keys quoted in an error message


def quote_keys(keys: List[str]) -> str:
    """``[a, b, c, d, e, ... (12 in all)]``: the first few keys of a long list."""
    more = f", ... ({len(keys)} in all)" if len(keys) > _SHOW else ""
    return f"[{', '.join(keys[:_SHOW])}{more}]"


def state_mismatch(expected: Mapping, state: Mapping, *, optional: Callable[[str], bool] = lambda key: False) -> str:
    """What keeps ``state`` from loading strictly into a module whose state dict is ``expected``.

    Args:
        expected: The module's ``state_dict()``.
        state: The state dict to load.
        optional: Keys of ``expected`` that ``state`` may lack (e.g. ``num_batches_tracked``).

    Returns:
        ``""`` when every key matches in name and shape; otherwise the missing keys, the
        unexpected keys and the shape mismatches, joined by ``"; "``.
    """
    missing = [k for k in expected if k not in state and not optional(k)]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
              for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    problems = [f"{what} {quote_keys(keys)}" for what, keys in
                (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)) if keys]
    return "; ".join(problems)
