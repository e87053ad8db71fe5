"""Where the batches come from: one small loader protocol and the functions that pick a loader.

Every training loader is a :class:`Loader`: ``set_epoch(epoch)`` (re-draws the sampler and seeds
the epoch's augmentation), ``len()`` (batches per epoch) and iteration yielding ``(images,
targets)`` already on the run's device. Three implement it:

* :class:`longtail.data.gpu.GpuLoader` -- in-memory datasets (CIFAR-LT) resident on the device,
  augmented there per batch (airbench / hlb-CIFAR10 style);
* :class:`DataLoaderAdapter` -- any dataset through a ``torch.utils.data.DataLoader`` with the
  torchvision transforms (image folders, list files, ImageNet-style augmentation);
* :class:`longtail.engine.features.FeatureLoader` -- cached backbone features for stage 2.

:func:`make_train_loader` picks the first or the second (:func:`use_resident`);
:func:`eval_batches` gives any split in order with the evaluation transform, on the same path.
"""
from __future__ import annotations

import copy
from typing import Iterable, Iterator, Optional, Protocol, runtime_checkable

import numpy as np
import torch

from ..data import build_sampler
from ..data.gpu import RESIDENT_AUGMENTS, GpuLoader, iterate_eval
from ..data.transforms import EpochIndexSampler, EpochSeededDataset
from ..errors import ConfigError
from . import distributed as dist
from .build import Run
from .precision import auto_flag

__all__ = ["Loader", "DataLoaderAdapter", "make_train_loader", "eval_batches", "use_resident", "train_batch_size"]


@runtime_checkable
class Loader(Protocol):
    """What the training loop needs from a loader."""

    def set_epoch(self, epoch: int) -> None:
        """Prepare epoch ``epoch`` (sampler order, augmentation seeds); called before iterating."""

    def __len__(self) -> int:
        """Batches per epoch."""

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(images, targets)`` batches on the run's device."""


def train_batch_size(run: Run, batch_size: Optional[int] = None) -> int:
    """This rank's training batch: ``batch_size`` (default ``data.batch_size``) split over the ranks."""
    return dist.per_rank_batch(int(batch_size or run.cfg["data"]["batch_size"]), run.dist)


def use_resident(run: Run) -> bool:
    """Whether training and evaluation batches come from the device-resident path.

    ``data.gpu_resident: auto`` keeps in-memory datasets on the device when the resident path
    implements their ``data.augment`` (:data:`~longtail.data.gpu.RESIDENT_AUGMENTS`); any other
    dataset goes through a DataLoader with the torchvision transforms, so both paths train and
    evaluate on the same images.

    Raises:
        ConfigError: ``data.gpu_resident: true`` with an in-memory dataset whose ``data.augment``
            the resident path lacks (``imagenet``: RandomResizedCrop, Resize + CenterCrop).
    """
    setting, bundle = run.cfg["data"]["gpu_resident"], run.bundle
    if not bundle.in_memory or not auto_flag(setting, True):
        return False
    if bundle.augment not in RESIDENT_AUGMENTS:
        if setting == "auto":
            return False
        raise ConfigError(f"data.gpu_resident=true cannot train with data.augment={bundle.augment}: the device-resident "
                          f"path implements only {', '.join(RESIDENT_AUGMENTS)} (no RandomResizedCrop, no Resize + "
                          f"CenterCrop); set data.gpu_resident=auto or false, or another data.augment")
    return True


def make_train_loader(run: Run, sampler_cfg: dict, total_epochs: int, stage_seed: int, batch_size: Optional[int] = None) -> Loader:
    """The device-resident loader when :func:`use_resident`, a DataLoader otherwise."""
    cfg, bundle = run.cfg, run.bundle
    batch_size = train_batch_size(run, batch_size)
    targets = np.asarray(bundle.train.targets)
    sampler = build_sampler(sampler_cfg["name"], targets, bundle.num_classes, seed=stage_seed,
                            total_epochs=total_epochs, rank=run.dist.rank, world_size=run.dist.world_size,
                            **sampler_cfg["params"])
    if use_resident(run):
        return GpuLoader(bundle.train.data, targets, sampler, batch_size, run.device,
                         bundle.mean, bundle.std, augment=bundle.augment, channels_last=run.channels_last)
    return DataLoaderAdapter(bundle.train, sampler, batch_size, cfg["data"]["num_workers"],
                              run.device, run.channels_last)


class DataLoaderAdapter:
    """A torch DataLoader as a :class:`Loader`: epoch-seeded augmentation, device batches.

    Args:
        dataset: The training split (with its training transform).
        sampler: A sampler of :mod:`longtail.data.samplers` (``set_epoch`` re-draws it).
        batch_size: This rank's batch.
        workers: DataLoader worker processes.
        device: Where batches go.
        channels_last: Convert images to channels_last on the device.
    """

    def __init__(self, dataset, sampler, batch_size: int, workers: int, device: torch.device, channels_last: bool):
        self.sampler, self.device, self.channels_last = sampler, device, channels_last
        # every sample's augmentation is seeded from (epoch seed, index): the same images in any worker
        # and in a resumed run; a private generator keeps the loader off the global RNG stream
        self._indices = EpochIndexSampler(sampler)
        self.loader = torch.utils.data.DataLoader(
            EpochSeededDataset(dataset), batch_size=batch_size, sampler=self._indices, num_workers=workers,
            pin_memory=device.type == "cuda", drop_last=False, persistent_workers=workers > 0,
            generator=torch.Generator().manual_seed(0))

    def set_epoch(self, epoch: int) -> None:
        # fit re-seeds the global RNGs from (seed, stage, epoch) just before: that seed is the epoch's
        self._indices.set_epoch(epoch, torch.initial_seed())

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for x, y in self.loader:
            x = x.to(self.device, non_blocking=True)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y.to(self.device, non_blocking=True)


def eval_batches(run: Run, split: str) -> Iterable:
    """Batches ``(x, y)`` of a split, on the device, in dataset order, with the evaluation transform
    (also for ``split="train"``, whose dataset carries the random training transform)."""
    bundle = run.bundle
    ds = {"test": bundle.test, "val": bundle.val, "train": bundle.train}[split]
    if ds is None:
        raise ConfigError(f"dataset '{run.cfg['data']['name']}' has no '{split}' split")
    bs = run.cfg["data"]["eval_batch_size"]
    if use_resident(run):
        key = f"eval_{split}"
        if key not in run.extras:  # move the split to the device once
            run.extras[key] = (torch.as_tensor(np.asarray(ds.data)).to(run.device),
                               torch.as_tensor(np.asarray(ds.targets), dtype=torch.long).to(run.device))
        data, targets = run.extras[key]
        yield from iterate_eval(data, targets, bs, bundle.mean, bundle.std, channels_last=run.channels_last)
        return
    if split == "train":  # a view of the training images with the test split's (evaluation) transform
        ds = copy.copy(ds)
        ds.transform = bundle.test.transform
    loader = torch.utils.data.DataLoader(ds, batch_size=bs, shuffle=False, num_workers=run.cfg["data"]["num_workers"],
                                         pin_memory=run.device.type == "cuda")
    for x, y in loader:
        x = x.to(run.device, non_blocking=True)
        yield (x.contiguous(memory_format=torch.channels_last) if run.channels_last else x), y.to(run.device)
