"""Every seed a run derives, in one place.

A run has one base seed (``seed`` in the config). Everything random is re-derived from it per
epoch, so that a run resumed at epoch ``e`` draws exactly the random numbers an uninterrupted
run would have drawn:

* :func:`global_epoch_seed` -- the seed :func:`seed_everything` gives the global torch, NumPy
  and Python RNGs at the start of every epoch of a stage (``engine.trainer.fit``). Mixup
  coefficients, the noise of the GCL loss and the DataLoader path's augmentation
  (:class:`~longtail.data.transforms.EpochSeededDataset`, via ``torch.initial_seed()``) follow
  from it.
* :func:`epoch_seed` -- the seed of an independent per-epoch stream of a component: the
  sampler's index draw (stream 0) and the device-resident augmentation (stream 1).
* :func:`sample_seed` -- the seed of one sample's augmentation from its epoch's seed.

The formulas are frozen: recorded results depend on them bit for bit.
"""
from __future__ import annotations

import random

import numpy as np
import torch

__all__ = ["seed_everything", "global_epoch_seed", "epoch_seed", "sample_seed"]

_MASK64 = (1 << 64) - 1


def seed_everything(seed: int) -> None:
    """Seed the global Python, NumPy (``seed mod 2**32``) and torch RNGs with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def global_epoch_seed(seed: int, epoch: int, stage: int = 1) -> int:
    """The seed of the global RNGs for epoch ``epoch`` of stage ``stage``.

    ``(seed * 1_000_003 + stage * 10_007 + epoch) mod 2**31``. Unlike ``seed + epoch`` (where
    seed 0 / epoch 1 equals seed 1 / epoch 0) it is distinct for every ``(seed, stage, epoch)``
    with ``seed < 2147``, ``stage < 99`` and ``epoch < 10_007``: the strides keep the three
    terms apart. :func:`epoch_seed` is the general form for new streams; this one stays because
    the global RNGs of every recorded run were seeded with it.

    Args:
        seed: Non-negative base seed of the run.
        epoch: Epoch index, from 0.
        stage: Training stage (1: representation, 2: classifier).

    Returns:
        An integer in ``[0, 2**31)``.
    """
    return (seed * 1_000_003 + stage * 10_007 + epoch) % 2**31


def epoch_seed(seed: int, epoch: int, stream: int = 0) -> int:
    """Derive the 63-bit seed of one epoch's random stream from ``(seed, epoch, stream)``.

    Uses ``numpy.random.SeedSequence`` so that nearby ``(seed, epoch)`` pairs give unrelated
    streams (``seed + epoch`` would make seed 0 / epoch 1 equal seed 1 / epoch 0).

    Args:
        seed: Non-negative base seed.
        epoch: Non-negative epoch index.
        stream: Independent sub-stream id (0: index draw, 1: augmentation, ...).

    Returns:
        An integer in ``[0, 2**63)``, suitable for ``torch.Generator.manual_seed``.
    """
    state = np.random.SeedSequence([int(seed), int(epoch), int(stream)]).generate_state(1, dtype=np.uint64)
    return int(state[0] >> np.uint64(1))


def _mix64(x: int) -> int:
    """splitmix64 finalizer: a well-spread 64-bit hash of an integer."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def sample_seed(epoch_seed: int, index: int) -> int:
    """The seed of sample ``index`` in an epoch whose seed is ``epoch_seed`` (< 2**63)."""
    return _mix64(_mix64(int(epoch_seed) & _MASK64) ^ (int(index) & _MASK64)) >> 1
