"""Per-class constants of the thesis's losses, for inspection (``longtail constants``).

:func:`per_class_constants` returns what a loss derived from the class counts: KPS radius
(eq. 3.27), margin (3.29), ``m'`` (3.28) and GA scale (3.30); FBL stimulus ``lambda`` (4.4);
GCL cloud size ``delta`` (5.9). :func:`format_constants` prints them as a table with one row
per class.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Union

import torch
from torch import Tensor

from ..errors import ConfigError
from .base import LongTailLoss, as_counts

__all__ = ["per_class_constants", "format_constants"]


def per_class_constants(loss: LongTailLoss) -> Dict[str, List[float]]:
    """The per-class constants of a built loss, as Python lists (class index order).

    Args:
        loss: A loss that defines ``constants()`` (``kps``, ``fbl``, ``gcl``).

    Returns:
        Ordered dict name -> list of C floats. KPS: ``radius``, ``margin``, ``m_prime``,
        ``ga_scale`` (+ ``drw_weight`` with DRW); FBL: ``lambda``, ``A_lambda``; GCL: ``delta``,
        ``a_delta`` (+ ``weight``/``drw_weight`` when set).

    Raises:
        ConfigError: if the loss has no per-class constants to show.
    """
    getter = getattr(loss, "constants", None)
    if not callable(getter):
        raise ConfigError(f"loss {type(loss).__name__} has no per-class constants to show")
    out: Dict[str, List[float]] = {}
    for name, value in getter().items():
        out[name] = [float(v) for v in torch.as_tensor(value).detach().double().cpu().flatten().tolist()]
    return out


def format_constants(
    loss: Union[str, LongTailLoss],
    class_counts: Optional[Union[Sequence[int], Tensor]] = None,
    decimals: int = 4,
    **params,
) -> str:
    """A plain-text table of a loss's per-class constants, one row per class with its count.

    Args:
        loss: A built loss, or a registered loss name (built from ``class_counts`` and
            ``params``).
        class_counts: Training counts; required when ``loss`` is a name, else defaults to the
            counts the loss was built with.
        decimals: Digits after the decimal point.
        **params: Hyper-parameters when ``loss`` is a name.

    Returns:
        The table as a string (header, rule, C rows), without a trailing newline.
    """
    if isinstance(loss, str):
        if class_counts is None:
            raise ConfigError("format_constants: class_counts are needed to build a loss by name")
        from . import build_loss

        loss = build_loss(loss, class_counts, **params)
    elif params:
        raise ConfigError("format_constants: hyper-parameters can only be given with a loss name")
    counts = as_counts(loss.class_counts if class_counts is None else class_counts)
    if counts.numel() != loss.num_classes:
        raise ConfigError(f"format_constants: {counts.numel()} counts given for a loss of {loss.num_classes} classes")
    consts = per_class_constants(loss)
    header = ["class", "count"] + list(consts)
    rows = []
    for j in range(loss.num_classes):
        row = [str(j), str(int(counts[j].item()))]
        row += [f"{consts[name][j]:.{decimals}f}" for name in consts]
        rows.append(row)
    widths = [max(len(header[k]), *(len(r[k]) for r in rows)) for k in range(len(header))]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)
