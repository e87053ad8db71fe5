"""Device-resident data path: sampling, CIFAR augmentation and batching on the accelerator.

For small in-memory datasets (CIFAR-LT) the input pipeline, not the model, limits one-GPU
training speed. Following the airbench recipe, this module keeps the uint8 images on the
device, draws each epoch's indices there (:func:`draw_indices`), and per batch gathers, crops,
flips, converts and normalizes without a host round trip:

* :func:`draw_indices` -- the device version of every sampler in
  :mod:`longtail.data.samplers` (instance: ``torch.randperm``; weighted:
  ``torch.multinomial(sample_weights, num_samples, replacement=True)``), rank slicing included.
  On CPU, with the default generator, it returns exactly the indices the sampler yields.
* :func:`crop_flip` / :func:`random_crop_flip` -- torchvision's ``RandomCrop(size, padding,
  fill=0)`` + ``RandomHorizontalFlip()`` for a whole batch, vectorized (pad once, gather).
* :class:`GpuLoader` -- ``(x, y)`` training batches already on the device.
* :func:`iterate_eval` -- normalized evaluation batches in dataset order.

Nothing inside a loader iteration calls ``.item()``, ``.cpu()``, ``.tolist()`` or converts a
tensor to a Python number, so the training step can run ahead of (or be captured away from)
the host.
"""
from __future__ import annotations

from typing import Iterator, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError, DataError
from ..seeding import epoch_seed
from .samplers import LongTailSampler

__all__ = [
    "draw_indices",
    "crop_flip",
    "random_crop_flip",
    "normalize_uint8",
    "GpuLoader",
    "iterate_eval",
    "RESIDENT_AUGMENTS",
]

#: The ``data.augment`` kinds the device-resident path implements (``imagenet``'s resizing crops it does not).
RESIDENT_AUGMENTS = ("cifar", "none")

DeviceLike = Union[str, torch.device]

# Sub-stream of epoch_seed used for augmentation randomness (0 is the sampler's index stream).
_AUG_STREAM = 1


# ---------------------------------------------------------------------------------------------
# sampling
# ---------------------------------------------------------------------------------------------
def draw_indices(
    sampler: LongTailSampler,
    epoch: int,
    device: DeviceLike,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Draw one epoch's indices of ``sampler`` directly on ``device``.

    Instance-balanced samplers use ``torch.randperm``; all the others
    ``torch.multinomial(sample_weights, num_samples, replacement=True)`` with the sampler's
    per-sample weights (cached on the device). The shared draw is then cut to this rank's
    slice (``draw[rank::world_size]`` after cyclic padding), exactly as the sampler does.

    Args:
        sampler: A sampler from :func:`longtail.data.samplers.build_sampler`. Other
            ``torch.utils.data.Sampler`` objects are accepted as a fallback: they are iterated
            on the host and the result copied over (one host transfer per epoch).
        epoch: Epoch to draw for (independent of ``sampler.epoch``; not modified).
        device: Target device.
        generator: A ``torch.Generator`` on ``device``. Default: one seeded from
            ``(sampler.seed, epoch)``, so draws are reproducible and resumable; on CPU they
            then equal ``list(sampler)`` at that epoch.

    Returns:
        int64 tensor on ``device`` of length ``len(sampler)``.
    """
    device = torch.device(device)
    if isinstance(sampler, LongTailSampler):
        return sampler.shard(sampler.draw(epoch, device=device, generator=generator))
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    return torch.as_tensor(list(iter(sampler)), dtype=torch.long).to(device)


# ---------------------------------------------------------------------------------------------
# augmentation
# ---------------------------------------------------------------------------------------------
def _check_images(images: Tensor, name: str = "images") -> None:
    if not isinstance(images, Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise DataError(f"{name} must be a 4-D (N, C, H, W) tensor, got {shape}")


def crop_flip(images: Tensor, offsets_yx: Tensor, flips: Tensor, padding: int = 4) -> Tensor:
    """Zero-padded crop at given offsets followed by an optional horizontal flip, per image.

    For image n this equals torchvision's
    ``hflip(crop(pad(img, padding, fill=0), top=offsets_yx[n, 0], left=offsets_yx[n, 1],
    height=H, width=W))`` (flip only where ``flips[n]``), i.e. ``RandomCrop((H, W), padding)``
    followed by ``RandomHorizontalFlip`` with the random choices made explicit. Vectorized: the
    batch is padded once and the output gathered with index arithmetic.

    Args:
        images: (N, C, H, W) tensor of any dtype, on any device.
        offsets_yx: (N, 2) integer tensor, top-left corner (row, column) of the crop in padded
            coordinates, each in ``[0, 2 * padding]``. Not range-checked (that would need a
            host sync); out-of-range values raise an indexing error or wrap.
        flips: (N,) bool tensor; True flips that image left-right after cropping.
        padding: Zero padding on every side.

    Returns:
        (N, C, H, W) tensor, same dtype and device, in ``channels_last`` memory layout.
    """
    _check_images(images)
    n, _, h, w = images.shape
    if offsets_yx.shape != (n, 2):
        raise DataError(f"offsets_yx must have shape ({n}, 2), got {tuple(offsets_yx.shape)}")
    if flips.shape != (n,):
        raise DataError(f"flips must have shape ({n},), got {tuple(flips.shape)}")
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ConfigError(f"padding must be a non-negative integer, got {padding!r}")
    dev = images.device
    padded = F.pad(images, (padding, padding, padding, padding)) if padding else images
    off = offsets_yx.to(device=dev, dtype=torch.long)
    rows = off[:, 0:1] + torch.arange(h, device=dev)  # (N, H)
    cols_fwd = torch.arange(w, device=dev)
    cols = torch.where(flips.to(dev).view(n, 1), cols_fwd.flip(0), cols_fwd) + off[:, 1:2]  # (N, W)
    batch = torch.arange(n, device=dev).view(n, 1, 1)
    # Advanced indices split by a slice: result is (N, H, W, C); permute back to NCHW (a
    # channels_last view, no copy).
    out = padded[batch, :, rows.view(n, h, 1), cols.view(n, 1, w)]
    return out.permute(0, 3, 1, 2)


def random_crop_flip(
    images: Tensor, padding: int = 4, generator: Optional[torch.Generator] = None
) -> Tensor:
    """``RandomCrop((H, W), padding, fill=0)`` + ``RandomHorizontalFlip(0.5)`` on a batch, on device.

    Each image gets an independent top-left offset uniform over ``[0, 2 * padding]^2`` and an
    independent fair flip, drawn on the images' device (no host sync).

    Args:
        images: (N, C, H, W) tensor (typically uint8).
        padding: Zero padding on every side.
        generator: Optional ``torch.Generator`` on the images' device.

    Returns:
        Tensor of the same shape and dtype (``channels_last`` layout), see :func:`crop_flip`.
    """
    _check_images(images)
    n = images.shape[0]
    dev = images.device
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), device=dev, generator=generator)
    flips = torch.randint(0, 2, (n,), device=dev, generator=generator).bool()
    return crop_flip(images, offsets, flips, padding)


# ---------------------------------------------------------------------------------------------
# normalization
# ---------------------------------------------------------------------------------------------
def _norm_constants(
    mean: Sequence[float], std: Sequence[float], channels: int, device: torch.device, dtype: torch.dtype
) -> Tuple[Tensor, Tensor]:
    """Per-channel ``scale = 1 / (255 std)`` and ``bias = -mean / std`` as (1, C, 1, 1) tensors."""
    m = torch.as_tensor(mean, dtype=torch.float64).flatten()
    s = torch.as_tensor(std, dtype=torch.float64).flatten()
    if m.numel() == 1:
        m = m.expand(channels)
    if s.numel() == 1:
        s = s.expand(channels)
    if m.numel() != channels:
        raise ConfigError(f"mean has {m.numel()} values but the images have {channels} channels")
    if s.numel() != channels:
        raise ConfigError(f"std has {s.numel()} values but the images have {channels} channels")
    if not bool((s > 0).all()):
        raise ConfigError(f"std must be positive for every channel, got {s.tolist()}")
    scale = (1.0 / (255.0 * s)).view(1, channels, 1, 1).to(device=device, dtype=dtype)
    bias = (-m / s).view(1, channels, 1, 1).to(device=device, dtype=dtype)
    return scale, bias


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def normalize_uint8(
    images: Tensor,
    scale: Tensor,
    bias: Tensor,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = True,
) -> Tensor:
    """``(images / 255 - mean) / std`` as ``images * scale + bias`` (see :func:`_norm_constants`).

    Computed in float32 (float64 if ``dtype`` is float64), then cast to ``dtype``.
    """
    x = torch.addcmul(bias, images.to(scale.dtype), scale)
    if x.dtype != dtype:
        x = x.to(dtype)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return x.contiguous(memory_format=fmt)


def _as_nhwc_uint8(data: Union[np.ndarray, Tensor], name: str) -> Tensor:
    t = torch.from_numpy(np.ascontiguousarray(data)) if isinstance(data, np.ndarray) else data
    if not isinstance(t, Tensor):
        raise DataError(f"{name} must be a numpy array or a tensor, got {type(data).__name__}")
    if t.dim() == 3:  # grayscale (N, H, W)
        t = t.unsqueeze(-1)
    if t.dim() != 4:
        raise DataError(f"{name} must have shape (N, H, W, C), got {tuple(t.shape)}")
    if t.dtype != torch.uint8:
        raise DataError(f"{name} must hold uint8 pixels, got dtype {t.dtype}")
    return t


def _as_targets(targets: Union[np.ndarray, Tensor, Sequence[int]], n: int, device: torch.device) -> Tensor:
    y = torch.as_tensor(np.asarray(targets) if not isinstance(targets, Tensor) else targets)
    if y.dim() != 1 or y.numel() != n:
        raise DataError(f"targets must have shape ({n},) to match the images, got {tuple(y.shape)}")
    if y.is_floating_point() or y.is_complex():
        raise DataError(f"targets must hold integer class indices, got dtype {y.dtype}")
    return y.to(device=device, dtype=torch.long)


# ---------------------------------------------------------------------------------------------
# loaders
# ---------------------------------------------------------------------------------------------
class GpuLoader:
    """Training batches from device-resident uint8 images, sampled and augmented on the device.

    The images are copied to ``device`` once (kept as an NCHW-shaped view of the NHWC data).
    Each ``__iter__`` draws the current epoch's indices with :func:`draw_indices` (epoch =
    ``sampler.epoch``, set through :meth:`set_epoch`), then per batch: gather, random crop +
    flip (``augment="cifar"``), convert to float, normalize ``(x / 255 - mean) / std``, and
    lay out as ``channels_last``. The last, smaller batch is yielded unless ``drop_last``.
    Augmentation randomness comes from a generator seeded by ``(seed, epoch)``, so an epoch
    is fully reproducible.

    Args:
        data_uint8_nhwc: (N, H, W, C) uint8 numpy array or tensor ((N, H, W) is read as C = 1).
        targets: (N,) labels.
        sampler: A sampler over the N indices (its ``rank``/``world_size`` are honoured).
        batch_size: Batch size.
        device: Device to hold the data and produce batches on.
        mean: Per-channel mean in [0, 1] units (or one value for all channels).
        std: Per-channel std in [0, 1] units.
        augment: "cifar" (``RandomCrop(H, padding)`` + horizontal flip) or "none".
        drop_last: Drop the last incomplete batch.
        channels_last: Yield ``x`` in ``channels_last`` memory format.
        dtype: Floating dtype of ``x``.
        padding: Crop padding for ``augment="cifar"``.
        seed: Seed of the augmentation stream (default: the sampler's seed).

    Raises:
        ConfigError: Bad ``augment``, ``batch_size``, ``mean``/``std`` or dtype.
        DataError: Bad image array, or targets / sampler not matching the images.
    """

    def __init__(
        self,
        data_uint8_nhwc: Union[np.ndarray, Tensor],
        targets: Union[np.ndarray, Tensor, Sequence[int]],
        sampler: LongTailSampler,
        batch_size: int,
        device: DeviceLike,
        mean: Sequence[float],
        std: Sequence[float],
        augment: str = "cifar",
        drop_last: bool = False,
        channels_last: bool = True,
        dtype: torch.dtype = torch.float32,
        padding: int = 4,
        seed: Optional[int] = None,
    ) -> None:
        if augment not in RESIDENT_AUGMENTS:
            raise ConfigError(f"augment must be one of {', '.join(RESIDENT_AUGMENTS)}, got {augment!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ConfigError(f"dtype must be a floating torch dtype, got {dtype!r}")
        if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
            raise ConfigError(f"padding must be a non-negative integer, got {padding!r}")
        self.device = torch.device(device)
        data = _as_nhwc_uint8(data_uint8_nhwc, "data_uint8_nhwc")
        n = int(data.shape[0])
        self.images: Tensor = data.to(self.device).permute(0, 3, 1, 2)  # NCHW view, NHWC storage
        self.targets: Tensor = _as_targets(targets, n, self.device)
        num_targets = getattr(sampler, "num_targets", None)
        if num_targets is not None and num_targets != n:
            raise DataError(f"sampler was built for {num_targets} samples but data_uint8_nhwc has {n} images")
        self.sampler = sampler
        self.batch_size = int(batch_size)
        self.augment = augment
        self.drop_last = bool(drop_last)
        self.channels_last = bool(channels_last)
        self.dtype = dtype
        self.padding = padding
        self.seed = int(getattr(sampler, "seed", 0) if seed is None else seed)
        self._scale, self._bias = _norm_constants(
            mean, std, int(self.images.shape[1]), self.device, _compute_dtype(dtype)
        )

    @property
    def epoch(self) -> int:
        return int(getattr(self.sampler, "epoch", 0))

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch of the next iteration (forwarded to the sampler)."""
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _aug_generator(self, epoch: int) -> torch.Generator:
        g = torch.Generator(device=self.device)
        g.manual_seed(epoch_seed(self.seed, epoch, _AUG_STREAM))
        return g

    def __iter__(self) -> Iterator[Tuple[Tensor, Tensor]]:
        epoch = self.epoch
        idx = draw_indices(self.sampler, epoch, self.device)
        gen = self._aug_generator(epoch) if self.augment == "cifar" else None
        total = len(self.sampler)  # a Python int: no sync
        bs = self.batch_size
        for b in range(len(self)):
            sel = idx[b * bs : min((b + 1) * bs, total)]
            x = self.images.index_select(0, sel)
            if gen is not None:
                x = random_crop_flip(x, self.padding, generator=gen)
            x = normalize_uint8(x, self._scale, self._bias, self.dtype, self.channels_last)
            yield x, self.targets.index_select(0, sel)


def iterate_eval(
    data_uint8_nhwc: Union[Tensor, np.ndarray],
    targets: Union[Tensor, np.ndarray, Sequence[int]],
    batch_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    device: Optional[DeviceLike] = None,
    channels_last: bool = True,
    dtype: torch.dtype = torch.float32,
) -> Iterator[Tuple[Tensor, Tensor]]:
    """Yield normalized evaluation batches ``(x, y)`` in dataset order, without augmentation.

    Arguments are validated eagerly (when called), batches are produced lazily.

    Args:
        data_uint8_nhwc: (N, H, W, C) uint8 tensor, typically already on the device.
        targets: (N,) labels (moved to the images' device).
        batch_size: Batch size; the last batch may be smaller.
        mean: Per-channel mean in [0, 1] units.
        std: Per-channel std in [0, 1] units.
        device: Move the images there first (default: where they are).
        channels_last: Yield ``x`` in ``channels_last`` memory format.
        dtype: Floating dtype of ``x``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ConfigError(f"dtype must be a floating torch dtype, got {dtype!r}")
    data = _as_nhwc_uint8(data_uint8_nhwc, "data_uint8_nhwc")
    if device is not None:
        data = data.to(device)
    images = data.permute(0, 3, 1, 2)
    n = int(images.shape[0])
    y_all = _as_targets(targets, n, images.device)
    scale, bias = _norm_constants(mean, std, int(images.shape[1]), images.device, _compute_dtype(dtype))
    bs = int(batch_size)

    def batches() -> Iterator[Tuple[Tensor, Tensor]]:
        for start in range(0, n, bs):
            x = normalize_uint8(images[start : start + bs], scale, bias, dtype, channels_last)
            yield x, y_all[start : start + bs]

    return batches()
