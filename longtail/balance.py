"""Per-class balance constants computed from the training counts, shared by losses and samplers.

* :func:`log_ratio` -- ``log n_max - log n_j``: the FBL stimulus (eq. 4.4), the GCL cloud size
  (eq. 5.9) and the CBEN sampler's delta (eq. 5.15), normalized by its maximum where asked.
* :func:`effective_number` -- ``(1 - beta) / (1 - beta^n_j)`` (Cui et al. 2019): class-balanced
  (DRW) loss weights, the effective-number sampler and CBEN's gamma (eq. 5.13).

Both take the counts in any order (never the class index) and return float64 NumPy arrays.
"""
from __future__ import annotations

from typing import Sequence, Union

import numpy as np


def log_ratio(counts: Sequence[float] | np.ndarray, normalize: bool = False) -> np.ndarray:
    """``log n_max - log n_j`` (head 0); with ``normalize``, divided by its maximum (tail 1;
    all zeros when every class has the same count)."""
    n = np.asarray(counts, dtype=np.float64)
    delta = np.log(n.max()) - np.log(n)
    if normalize:
        top = delta.max()
        delta = delta / top if top > 0 else np.zeros_like(delta)
    return delta


def effective_number(counts: Sequence[float] | np.ndarray, beta: Union[float, np.ndarray]) -> np.ndarray:
    """Inverse effective number ``(1 - beta) / (1 - beta^n_j)``, unnormalized.

    Args:
        counts: Per-class counts n_j (C,), all >= 1.
        beta: Scalar or per-class (C,) values in [0, 1).

    Returns:
        float64 (C,); 1/n_j in the limit beta -> 1, 1 at beta = 0.
    """
    n = np.asarray(counts, dtype=np.float64)
    b = np.broadcast_to(np.asarray(beta, dtype=np.float64), n.shape)
    # 1 - beta^n computed as -expm1(n log beta): accurate when beta is very close to 1.
    with np.errstate(divide="ignore"):
        log_b = np.log(b)
    denom = -np.expm1(n * log_b)
    return np.where(b == 0.0, 1.0, (1.0 - b) / denom)
