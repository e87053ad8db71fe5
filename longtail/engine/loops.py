"""The flat loops, in the style of torchvision's classification reference.

``train_one_epoch`` runs a :class:`~longtail.engine.step.TrainStep` over a loader with one host
synchronisation at the end; ``evaluate`` runs a model over evaluation batches and returns the
head / medium / tail metrics (and, on request, the logits and features for the analyses).
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Iterable, Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from ..losses import LongTailLoss
from .metrics import Accumulator
from .step import TrainStep

__all__ = ["train_one_epoch", "evaluate"]


def train_one_epoch(step: TrainStep, loader, device: torch.device, desc: str = "", quiet: bool = False) -> dict:
    """One pass over ``loader``; returns the mean loss (one host sync, at the end)."""
    step.model.train()
    total = torch.zeros((), device=device)
    count = 0
    for x, y in tqdm(loader, desc=desc, leave=False, disable=quiet):
        total += step(x, y).float() * y.shape[0]
        count += y.shape[0]
    return {"loss": (total / max(count, 1)).item(), "images": count}


@torch.inference_mode()
def evaluate(model: nn.Module, loss_fn: LongTailLoss, batches: Iterable, class_counts, *, amp: Optional[torch.dtype] = None,
             many: int = 100, few: int = 20, keep_logits: bool = False,
             feature_norms: bool = False) -> tuple[dict, Optional[dict]]:
    """Evaluate on ``batches``; returns the metrics and (with ``keep_logits``) the outputs.

    The prediction logits are ``loss_fn.predict(logits, features)`` (e.g. ``s * cos`` for cosine
    losses, prior-corrected logits for post-hoc logit adjustment).
    """
    was_training = model.training
    model.eval()
    acc = Accumulator(keep_logits=keep_logits)
    feats, raw = [], []
    num_classes = len(class_counts)
    norm_sum = norm_cnt = None
    for x, y in batches:
        with torch.autocast(device_type=x.device.type, dtype=amp) if amp is not None else nullcontext():
            out = model(x)
        f = out.features.float()
        logits = loss_fn.predict(out.logits.float(), f)
        acc.update(logits, y)
        if feature_norms:
            if norm_sum is None:
                norm_sum = torch.zeros(num_classes, device=f.device, dtype=torch.float64)
                norm_cnt = torch.zeros(num_classes, device=f.device, dtype=torch.float64)
            norm_sum.index_add_(0, y, f.norm(dim=1).double())
            norm_cnt.index_add_(0, y, torch.ones_like(y, dtype=torch.float64))
        if keep_logits:
            feats.append(f)
            raw.append(out.logits.float())
    model.train(was_training)
    metrics = acc.compute(class_counts, many=many, few=few)
    if feature_norms and norm_sum is not None:
        metrics["feature_norm"] = (norm_sum / norm_cnt.clamp(min=1)).tolist()
    outputs = None
    if keep_logits:
        outputs = {"features": torch.cat(feats), "raw_logits": torch.cat(raw), "logits": acc.logits(),
                   "targets": acc.targets()}
    return metrics, outputs
