"""Building a run: the device, the precision and the components (data, model, loss) of a config.

:func:`build` turns a resolved config (:func:`longtail.config.load_config`) into a :class:`Run`;
the loops (:mod:`longtail.engine.loops`), the loaders (:mod:`longtail.engine.loaders`) and
``fit`` (:mod:`longtail.engine.trainer`) take it from there. Stage 2
(:mod:`longtail.engine.stage2`), evaluation and the analyses build their runs here too.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from ..data import DataBundle, build_datasets
from ..data.folder import resolve_auto
from ..errors import ConfigError
from ..losses import LongTailLoss, build_loss
from ..models import LongTailModel, build_model
from . import distributed as dist
from .precision import amp_dtype, auto_flag, channels_last_default
from .schedule import check_schedule

__all__ = ["Run", "build", "check_loss_head", "resolve_device"]


def resolve_device(spec: str) -> torch.device:
    """``auto`` picks CUDA when available; an unavailable CUDA device is an error."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(spec)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{spec}' requested but CUDA is not available")
    return dev


@dataclass
class Run:
    """Everything a run needs, built from its config.

    Attributes:
        cfg: The resolved config.
        device: Where the model and the batches live.
        bundle: The datasets, class counts and normalisation.
        model: The backbone with its head, on ``device`` (channels_last when ``channels_last``).
        loss_fn: The method's loss, on ``device``.
        amp_dtype: The autocast dtype (bf16 / fp16) or None for float32.
        channels_last: Whether images are fed in channels_last memory format.
        dist: This process's rank and world size (single process by default).
        extras: Per-run caches (e.g. an evaluation split moved to the device once).
    """

    cfg: dict
    device: torch.device
    bundle: DataBundle
    model: LongTailModel
    loss_fn: LongTailLoss
    amp_dtype: Optional[torch.dtype]
    channels_last: bool
    dist: dist.DistInfo = field(default_factory=dist.DistInfo)
    extras: dict = field(default_factory=dict)


def check_loss_head(loss_fn: LongTailLoss, model: LongTailModel, head_name: str) -> None:
    """A loss on cosine logits (GCL, NormFace-style) needs a cosine or LWS head.

    Raises:
        ConfigError: Otherwise; the message names the loss and the head.
    """
    cos = getattr(loss_fn, "cosine", False)
    if cos and head_name not in ("cosine", "lws"):
        raise ConfigError(
            f"loss '{type(loss_fn).__name__}' expects a cosine head (model.head=cosine), got model.head={head_name}"
        )


def build(cfg: dict) -> Run:
    """Datasets, model and loss for a config (stage 1)."""
    resolve_auto(cfg)  # folder recipes: backbone, epochs and shot thresholds from the data (in place)
    check_schedule(cfg["optim"])
    if cfg["eval"]["checkpoint"] != "last":
        raise ConfigError(f"eval.checkpoint '{cfg['eval']['checkpoint']}' unknown: longtail reports the final epoch "
                          f"('last'); it never selects a checkpoint on the evaluation split")
    if cfg["eval"]["split"] not in ("test", "val"):
        raise ConfigError(f"eval.split '{cfg['eval']['split']}' unknown; valid: test, val")
    info = dist.from_env()
    device = dist.setup(info, resolve_device(cfg["device"]))
    bundle = build_datasets(cfg["data"])
    m = cfg["model"]
    model = build_model(m["backbone"], m["head"], bundle.num_classes, head_params=m["head_params"],
                        pretrained=m["pretrained"], freeze=m["freeze"])
    loss_fn = build_loss(cfg["loss"]["name"], bundle.class_counts, **cfg["loss"]["params"])
    check_loss_head(loss_fn, model, m["head"])
    cl = auto_flag(cfg["channels_last"], channels_last_default(device))
    model = model.to(device)
    if cl:
        model = model.to(memory_format=torch.channels_last)
    return Run(cfg, device, bundle, model, loss_fn.to(device), amp_dtype(cfg, device), cl, info)
