"""torchvision ResNet backbones (ResNet-50, ResNeXt-50 32x4d, ResNet-152) and weight loading.

The backbones are torchvision's own models built with ``weights=None`` (nothing is downloaded)
and ``fc`` replaced by ``nn.Identity``, so they return the globally average-pooled 2048-d
feature (after the final ReLU) and their ``state_dict`` keys are torchvision's minus ``fc.*``.

Pretrained weights come only from a local file (:func:`load_pretrained`), e.g. a torchvision
ImageNet checkpoint saved with ``torch.save(model.state_dict(), path)``.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Dict, Union

import torch
import torchvision
from torch import Tensor, nn

from ..errors import CheckpointError
from .state import quote_keys, state_mismatch

__all__ = ["resnet50", "resnext50_32x4d", "resnet152", "load_pretrained"]


def _torchvision_backbone(arch: str) -> nn.Module:
    """Build ``torchvision.models.<arch>(weights=None)`` with ``fc`` removed."""
    net = getattr(torchvision.models, arch)(weights=None)
    feature_dim = int(net.fc.in_features)
    net.fc = nn.Identity()
    net.feature_dim = feature_dim
    net.linear_head_init = "default"
    net.arch = arch
    return net


def resnet50() -> nn.Module:
    """torchvision ResNet-50 without ``fc``; features (N, 2048)."""
    return _torchvision_backbone("resnet50")


def resnext50_32x4d() -> nn.Module:
    """torchvision ResNeXt-50 (32x4d) without ``fc``; features (N, 2048)."""
    return _torchvision_backbone("resnext50_32x4d")


def resnet152() -> nn.Module:
    """torchvision ResNet-152 without ``fc``; features (N, 2048)."""
    return _torchvision_backbone("resnet152")


def _read_state_dict(path: Path) -> Dict[str, Tensor]:
    """Load ``path`` safely (``weights_only=True``) and return a flat name -> tensor mapping."""
    if not path.is_file():
        raise CheckpointError(f"pretrained weight file '{path}' does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unreadable, truncated, not a torch file, unsafe pickle, ...
        raise CheckpointError(f"cannot read pretrained weight file '{path}': {type(err).__name__}: {err}") from err
    # Tolerate the usual wrappers {"state_dict": {...}} / {"model": {...}}.
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
            break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(
            f"pretrained weight file '{path}' does not hold a state_dict (got {type(obj).__name__})"
        )
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"pretrained weight file '{path}': entries that are not named tensors: {quote_keys(bad)}")
    state = dict(obj)
    # Checkpoints of DataParallel models prefix every key with "module.".
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_pretrained(backbone: nn.Module, path: Union[str, "os.PathLike[str]"], name: str = "backbone") -> None:
    """Load a local state_dict into ``backbone``, strictly.

    Keys ``fc.*`` (the classifier of a torchvision checkpoint) are ignored. Missing
    ``num_batches_tracked`` buffers are tolerated (old checkpoints predate them). Any other
    missing key, unexpected key or shape mismatch raises, and nothing is loaded.

    Args:
        backbone: The module to load into (its keys are torchvision's minus ``fc.*``).
        path: The weight file (``torch.save(state_dict)``), read with ``weights_only=True``.
        name: Backbone name used in error messages.

    Raises:
        CheckpointError: Naming the file and the first offending keys.
    """
    path = Path(path)
    state = _read_state_dict(path)
    state = {k: v for k, v in state.items() if not (k == "fc" or k.startswith("fc."))}
    problems = state_mismatch(backbone.state_dict(), state, optional=lambda k: k.endswith("num_batches_tracked"))
    if problems:
        raise CheckpointError(f"pretrained weight file '{path}' does not fit {name}: {problems}")
    backbone.load_state_dict(state, strict=False)
