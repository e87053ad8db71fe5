"""Stage 2 on cached features: the frozen backbone runs once, the classifier trains on its output.

Classifier re-training (cRT, LWS) keeps the backbone frozen, BatchNorm included. When nothing
varies the images between epochs -- no augmentation (``data.augment=none``) and no mixup -- every
epoch feeds the head the same feature of each image, so the backbone's forward pass can be done
once and the head trained on the stored features, as the decoupling literature does (Kang et al.
2020). On a CPU this turns a stage 2 that costs a forward pass of the backbone per sample per
epoch into one that costs a single pass in all.

The batches are drawn by the same sampler, from the same ``(seed, epoch)`` streams, as the image
loader would draw them, so the head sees the same samples in the same order; with random
augmentation or mixup the cache is not used (``stage2.cache_features: auto``).
"""
from __future__ import annotations

from typing import Iterable, Iterator, Optional

import torch
from torch import Tensor, nn

from ..data.gpu import draw_indices
from ..errors import ConfigError
from ..models.model import ModelOutput

__all__ = ["FeatureLoader", "HeadOnly", "compute_features", "use_feature_cache"]


def use_feature_cache(setting, augment: str, mixup_alpha: float) -> bool:
    """Resolve ``stage2.cache_features`` (``auto`` | true | false) for the stage-2 inputs.

    Raises:
        ConfigError: ``true`` while augmentation or mixup would vary the images.
    """
    varies = []
    if augment != "none":
        varies.append(f"data.augment={augment}")
    if mixup_alpha > 0:
        varies.append(f"stage2.mixup_alpha={mixup_alpha:g}")
    if setting == "auto":
        return not varies
    if setting is True:
        if varies:
            raise ConfigError(f"stage2.cache_features=true needs fixed inputs, but {' and '.join(varies)} vary the "
                              f"images every epoch; set data.augment=none and stage2.mixup_alpha=0, or "
                              f"stage2.cache_features=auto")
        return True
    if setting is False:
        return False
    raise ConfigError(f"stage2.cache_features must be auto, true or false, got {setting!r}")


@torch.no_grad()
def compute_features(model: nn.Module, batches: Iterable, amp: Optional[torch.dtype] = None) -> tuple[Tensor, Tensor]:
    """Features (N, D) and targets (N,) of ``batches`` in order, from ``model.backbone`` in eval mode.

    The backbone runs under the same autocast as training would, and the features are stored as
    float32, so the head receives exactly the values the image path would give it.
    """
    was_training = model.training
    model.eval()
    feats, targets = [], []
    try:
        for x, y in batches:
            with torch.autocast(device_type=x.device.type, dtype=amp, enabled=amp is not None):
                f = model.backbone(x)
            feats.append(f.float())
            targets.append(y)
    finally:
        model.train(was_training)
    return torch.cat(feats), torch.cat(targets)


class HeadOnly(nn.Module):
    """``model.head`` as a model: ``forward(features)`` returns ``ModelOutput(head(features), features)``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, features: Tensor) -> ModelOutput:
        return ModelOutput(self.model.head(features), features)

    def train(self, mode: bool = True) -> "HeadOnly":
        self.model.train(mode)  # the model keeps its frozen BatchNorm layers in eval mode
        self.training = mode
        return self


class FeatureLoader:
    """Batches ``(features[idx], targets[idx])`` with ``idx`` drawn by ``sampler`` per epoch.

    The loader protocol of the image loaders (``set_epoch``, ``__len__``, iteration yielding
    device batches), with the draw of :func:`longtail.data.gpu.draw_indices`: the same indices,
    in the same order, as the image loader over the same sampler.
    """

    def __init__(self, features: Tensor, targets: Tensor, sampler, batch_size: int) -> None:
        if features.shape[0] != targets.shape[0]:
            raise ValueError(f"{features.shape[0]} features but {targets.shape[0]} targets")
        self.features, self.targets = features, targets
        self.sampler, self.batch_size = sampler, int(batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return -(-len(self.sampler) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        idx = draw_indices(self.sampler, int(getattr(self.sampler, "epoch", 0)), self.features.device)
        for start in range(0, len(idx), self.batch_size):
            sel = idx[start:start + self.batch_size]
            yield self.features.index_select(0, sel), self.targets.index_select(0, sel)
