"""``model.backbone=timm/<name>``: any `timm <https://github.com/huggingface/pytorch-image-models>`_
model as a backbone (optional: ``pip install -e '.[timm]'``).

The model is created with ``timm.create_model(name, pretrained=False, num_classes=0)``, so it
returns pooled features ``(N, num_features)`` and longtail's heads (linear, cosine, LWS) sit on top.
Nothing is ever downloaded: ``model.pretrained=PATH`` loads a local state_dict saved from the same
timm model (``torch.load(PATH, weights_only=True)``; a ``state_dict`` / ``model`` entry is
unwrapped, the model's own classifier weights are dropped, everything else must match).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

import torch
from torch import Tensor, nn

from ..errors import CheckpointError, ConfigError
from .state import state_mismatch


class TimmBackbone(nn.Module):
    """A timm model without its classifier; ``forward`` returns pooled features (N, D)."""

    def __init__(self, net: nn.Module, name: str) -> None:
        super().__init__()
        self.net = net
        self.name = name
        self.feature_dim = int(net.num_features)

    def forward(self, x: Tensor) -> Tensor:
        out = self.net(x)
        return out.flatten(1) if out.dim() > 2 else out


def _classifier_prefixes(net: nn.Module) -> tuple:
    cfg = getattr(net, "pretrained_cfg", None) or getattr(net, "default_cfg", None) or {}
    names = cfg.get("classifier") or ()
    if isinstance(names, str):
        names = (names,)
    return tuple(f"{n}." for n in names)


def load_timm_weights(net: nn.Module, path: Union[str, "os.PathLike[str]"], name: str) -> None:
    """Load a local timm state_dict into ``net`` (classifier keys dropped); errors name the keys."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"model.pretrained: weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"model.pretrained: cannot load {path} with weights_only=True: {err}") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise CheckpointError(f"model.pretrained: {path} holds no state_dict")
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    drop = _classifier_prefixes(net)
    state = {k: v for k, v in state.items() if not k.startswith(drop)}
    problems = state_mismatch(net.state_dict(), state)
    if problems:
        raise CheckpointError(f"model.pretrained: {path} does not fit timm model '{name}': {problems}")
    net.load_state_dict(state)


def build_timm_backbone(name: str, pretrained: Optional[Union[str, "os.PathLike[str]"]] = None) -> TimmBackbone:
    """Build timm model ``name`` (no download) as a feature backbone, optionally with local weights."""
    try:
        import timm
    except ImportError:
        raise ConfigError(f"model.backbone=timm/{name} needs the timm package: pip install -e '.[timm]'") from None
    if not name or not timm.is_model(name):
        close = timm.list_models(f"*{name}*")[:10] if name else []
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise ConfigError(f"model.backbone: unknown timm model '{name}'{hint}")
    net = timm.create_model(name, pretrained=False, num_classes=0)
    if pretrained is not None:
        load_timm_weights(net, pretrained, name)
    return TimmBackbone(net, name)
