"""Re-sampling strategies for long-tailed training (instance, class-balanced, CBEN, ...).

Every sampler is a plain ``torch.utils.data.Sampler[int]`` over the indices ``0 .. N-1`` of a
training set with labels ``targets``. A sampler is fully described by two numbers per epoch:

* ``class_probs(epoch)`` -- shape (C,): the probability that **one draw** comes from class j;
* ``sample_weights(epoch)`` -- shape (N,), float64, sums to 1: the probability that one draw is
  sample i. Within a class every sample is equally likely, so
  ``sample_weights[i] = class_probs[y_i] / n_{y_i}``.

Weighted samplers draw ``num_samples`` indices per epoch with replacement from
``sample_weights``; the instance-balanced sampler draws a random permutation (no replacement).

Randomness: the stream of epoch ``e`` depends only on ``(seed, e)`` (like
``DistributedSampler``), so a run resumed at epoch ``e`` (``set_epoch(e)``) sees the very same
indices as an uninterrupted one. ``longtail.data.gpu.draw_indices`` runs the same draw on an
accelerator (on CPU it returns exactly what iterating the sampler yields).

Distributed: with ``world_size > 1`` all ranks make the same per-epoch draw of ``num_samples``
indices, pad it cyclically to ``ceil(num_samples / world_size) * world_size`` and rank ``r``
keeps ``draw[r::world_size]``; the ranks' slices are disjoint positions of one shared draw.

Registered names (``SAMPLERS``): ``instance``, ``class_balanced``, ``sqrt``, ``power``,
``progressive``, ``effective_number``, ``cben``. Build them with :func:`build_sampler`.
"""
from __future__ import annotations

import inspect
import math
from typing import Any, Dict, Iterator, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Sampler

from ..balance import effective_number, log_ratio
from ..errors import ConfigError, DataError
from ..registry import Registry
from ..seeding import epoch_seed

__all__ = [
    "SAMPLERS",
    "build_sampler",
    "LongTailSampler",
    "InstanceBalancedSampler",
    "WeightedClassSampler",
    "ClassBalancedSampler",
    "PowerSampler",
    "SqrtSampler",
    "ProgressivelyBalancedSampler",
    "EffectiveNumberSampler",
    "CBENSampler",
    "cben_gammas",
]

SAMPLERS = Registry("sampler")

TargetsLike = Union[Sequence[int], np.ndarray, Tensor]

# Options shared by every sampler; everything else passed to build_sampler is a sampler parameter.
_COMMON = ("seed", "num_samples", "total_epochs", "rank", "world_size")


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def _check_int(name: str, value: Any, *, minimum: int, allow_none: bool = False) -> Optional[int]:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"sampler parameter '{name}' must be an integer >= {minimum}, got {value!r}")
    if int(value) < minimum:
        raise ConfigError(f"sampler parameter '{name}' must be >= {minimum}, got {value}")
    return int(value)


def _check_float(
    name: str,
    value: Any,
    *,
    lo: Optional[float] = None,
    hi: Optional[float] = None,
    lo_open: bool = False,
    hi_open: bool = False,
) -> float:
    """Return ``value`` as a finite float inside the given interval or raise a ConfigError."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ConfigError(f"sampler parameter '{name}' must be a number, got {value!r}")
    v = float(value)
    bad = not math.isfinite(v)
    if lo is not None:
        bad |= v <= lo if lo_open else v < lo
    if hi is not None:
        bad |= v >= hi if hi_open else v > hi
    if bad:
        lb = "(" if lo_open else "["
        rb = ")" if hi_open else "]"
        rng = f"{lb}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{rb}"
        raise ConfigError(f"sampler parameter '{name}' must be a finite number in {rng}, got {value!r}")
    return v


def _as_targets(targets: TargetsLike, num_classes: int) -> np.ndarray:
    """Validate labels and return them as a 1-D int64 numpy array."""
    if isinstance(targets, Tensor):
        arr = targets.detach().cpu().numpy()
    else:
        arr = np.asarray(targets)
    if arr.ndim != 1:
        raise DataError(f"targets must be a 1-D sequence of class indices, got shape {arr.shape}")
    if arr.size == 0:
        raise DataError("targets is empty: a sampler needs at least one training sample")
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.bool_)):
        if np.issubdtype(arr.dtype, np.floating) and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise DataError(f"targets must hold integer class indices, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    bad = (arr < 0) | (arr >= num_classes)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"targets[{i}] = {int(arr[i])} is outside [0, {num_classes - 1}] (num_classes={num_classes})"
        )
    return arr


def cben_gammas(counts: np.ndarray, a: float = 0.9999, b: float = 1e-5) -> np.ndarray:
    """Per-sample CBEN sampling constants gamma_j (thesis eq. 5.13-5.15), normalized.

    * cloud size (eq. 5.9, sec. 5.4.1): ``delta_j = log n_max - log n_j``, divided by its max
      (head 0, tail 1; all zeros if every class has the same count);
    * eq. 5.15: ``beta_j = b * (delta_j - delta_min) / (delta_max - delta_min) + a``, so
      ``beta_j`` lies in ``[a, a + b]`` (``a`` for the head, ``a + b`` for the tail);
    * eq. 5.13: ``gamma_j = (1 - beta_j) / (1 - beta_j ** n_j)``;
    * eq. 5.14: ``gamma_j <- gamma_j / sum_i gamma_i``.

    Args:
        counts: Per-class counts n_j (C,).
        a: Lower end of the beta range (code 0.9999, thesis 0.999).
        b: Width of the beta range (code 1e-5, thesis 0.0009).

    Returns:
        float64 (C,) normalized gamma_j: the relative probability of drawing **one sample** of
        class j (not the class's total probability, which is proportional to n_j * gamma_j).
    """
    n = np.asarray(counts, dtype=np.float64)
    delta = log_ratio(n, normalize=True)
    span = delta.max() - delta.min()
    rel = (delta - delta.min()) / span if span > 0 else np.zeros_like(delta)
    beta = b * rel + a
    gamma = effective_number(n, beta)  # unnormalized (1 - beta_j) / (1 - beta_j^n_j)
    return gamma / gamma.sum()


# ---------------------------------------------------------------------------------------------
# base classes
# ---------------------------------------------------------------------------------------------
class LongTailSampler(Sampler[int]):
    """Common machinery: label bookkeeping, epoch-seeded draws, rank slicing.

    Subclasses define :meth:`class_probs`; weighted samplers draw with replacement from
    :meth:`sample_weights`, the instance sampler overrides :meth:`draw`.

    Args:
        targets: Training labels (N,), integers in ``[0, num_classes)``.
        num_classes: Number of classes C; every class must have at least one sample.
        seed: Non-negative base seed of the random stream.
        num_samples: Indices drawn per epoch over all ranks (default N).
        total_epochs: Number of training epochs (needed by schedule-dependent samplers only).
        rank: This process's rank in ``[0, world_size)``.
        world_size: Number of processes sharing one per-epoch draw.

    Attributes:
        class_counts: int64 numpy array (C,) of n_j.
        replacement: Whether indices are drawn with replacement.
        epoch: The epoch the next ``__iter__`` draws for (see :meth:`set_epoch`).

    Raises:
        DataError: A label out of range, or a class with zero samples (named).
        ConfigError: A bad common option (named).
    """

    replacement: bool = True
    name: str = "?"

    def __init__(
        self,
        targets: TargetsLike,
        num_classes: int,
        *,
        seed: int = 0,
        num_samples: Optional[int] = None,
        total_epochs: Optional[int] = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        num_classes = _check_int("num_classes", num_classes, minimum=1)
        self.num_classes: int = num_classes
        self.targets: np.ndarray = _as_targets(targets, num_classes)
        counts = np.bincount(self.targets, minlength=num_classes).astype(np.int64)
        empty = np.flatnonzero(counts == 0)
        if empty.size:
            raise DataError(
                f"class {int(empty[0])} has zero samples in targets (empty classes: "
                f"{empty.tolist()[:20]}); every class needs at least one training sample to be sampled"
            )
        self.class_counts: np.ndarray = counts
        self.seed: int = _check_int("seed", seed, minimum=0)
        n = int(self.targets.size)
        self.num_samples: int = n if num_samples is None else _check_int("num_samples", num_samples, minimum=1)
        self.total_epochs: Optional[int] = _check_int("total_epochs", total_epochs, minimum=1, allow_none=True)
        self.world_size: int = _check_int("world_size", world_size, minimum=1)
        self.rank: int = _check_int("rank", rank, minimum=0)
        if self.rank >= self.world_size:
            raise ConfigError(f"sampler parameter 'rank' must be < world_size={self.world_size}, got {rank}")
        self.epoch: int = 0
        self._weights_cache: Dict[Any, Tensor] = {}

    # -- epoch -----------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random stream the next iteration uses (0-based)."""
        self.epoch = _check_int("epoch", epoch, minimum=0)

    def _epoch(self, epoch: Optional[int]) -> int:
        return self.epoch if epoch is None else _check_int("epoch", epoch, minimum=0)

    @property
    def num_targets(self) -> int:
        """N, the number of training samples the indices refer to."""
        return int(self.targets.size)

    # -- probabilities ---------------------------------------------------------------------------
    def class_probs(self, epoch: Optional[int] = None) -> np.ndarray:
        """Probability that one draw comes from class j (float64, shape (C,), sums to 1)."""
        raise NotImplementedError

    @property
    def epoch_dependent(self) -> bool:
        """Whether the distribution changes with the epoch."""
        return False

    def sample_weights(self, epoch: Optional[int] = None) -> Tensor:
        """Per-sample draw probabilities ``class_probs[y_i] / n_{y_i}`` (float64 CPU, (N,), sums to 1)."""
        p = np.asarray(self.class_probs(epoch), dtype=np.float64)
        w = (p / self.class_counts)[self.targets]
        return torch.from_numpy(w / w.sum())

    def _device_weights(self, epoch: int, device: torch.device) -> Tensor:
        key = (str(device), epoch if self.epoch_dependent else None)
        w = self._weights_cache.get(key)
        if w is None:
            w = self.sample_weights(epoch).to(device)
            self._weights_cache = {key: w}  # keep one entry: no growth over epochs
        return w

    # -- drawing ---------------------------------------------------------------------------------
    def make_generator(self, epoch: int, device: Union[str, torch.device] = "cpu") -> torch.Generator:
        """A ``torch.Generator`` on ``device`` seeded for ``epoch`` (stream 0: index draws)."""
        g = torch.Generator(device=torch.device(device))
        g.manual_seed(epoch_seed(self.seed, epoch, 0))
        return g

    def draw(
        self,
        epoch: Optional[int] = None,
        device: Union[str, torch.device] = "cpu",
        generator: Optional[torch.Generator] = None,
    ) -> Tensor:
        """The shared (all-rank) draw of ``num_samples`` indices for ``epoch`` as a LongTensor.

        Weighted samplers: ``torch.multinomial(sample_weights, num_samples, replacement=True)``.

        Args:
            epoch: Epoch to draw for (default: the current one).
            device: Device the draw runs on.
            generator: Generator on ``device``; default one seeded from ``(seed, epoch)``.
        """
        e = self._epoch(epoch)
        device = torch.device(device)
        g = self.make_generator(e, device) if generator is None else generator
        w = self._device_weights(e, device)
        return torch.multinomial(w, self.num_samples, replacement=True, generator=g)

    def shard(self, indices: Tensor) -> Tensor:
        """This rank's slice of a shared draw (identity when ``world_size == 1``).

        The draw is padded cyclically to ``ceil(num_samples / world_size) * world_size`` and
        rank r keeps ``indices[r::world_size]``; runs on the tensor's device, no host sync.
        """
        if self.world_size == 1:
            return indices
        total = len(self) * self.world_size
        if total > indices.numel():
            reps = -(-total // indices.numel())
            indices = indices.repeat(reps)[:total]
        return indices[self.rank : total : self.world_size]

    def __len__(self) -> int:
        return -(-self.num_samples // self.world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.shard(self.draw(self.epoch)).tolist())

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, N={self.num_targets}, C={self.num_classes}, "
            f"num_samples={self.num_samples}, seed={self.seed}, rank={self.rank}/{self.world_size})"
        )


class WeightedClassSampler(LongTailSampler):
    """Base of samplers defined by fixed class probabilities ``p_j`` (uniform within a class)."""

    replacement = True

    def _class_weights(self) -> np.ndarray:
        """Unnormalized class probabilities (C,)."""
        raise NotImplementedError

    def class_probs(self, epoch: Optional[int] = None) -> np.ndarray:
        self._epoch(epoch)
        w = np.asarray(self._class_weights(), dtype=np.float64)
        return w / w.sum()


# ---------------------------------------------------------------------------------------------
# concrete samplers
# ---------------------------------------------------------------------------------------------
@SAMPLERS.register("instance")
class InstanceBalancedSampler(LongTailSampler):
    """Instance-balanced sampling: a fresh random permutation of the N indices each epoch.

    Every sample is seen once per epoch (no replacement), so class j's share is ``n_j / N``.
    If ``num_samples > N`` several independent permutations are concatenated (each sample seen
    ``floor`` or ``ceil`` of ``num_samples / N`` times); if smaller, the permutation is truncated.
    """

    replacement = False
    name = "instance"

    def class_probs(self, epoch: Optional[int] = None) -> np.ndarray:
        self._epoch(epoch)
        return self.class_counts / float(self.class_counts.sum())

    def draw(
        self,
        epoch: Optional[int] = None,
        device: Union[str, torch.device] = "cpu",
        generator: Optional[torch.Generator] = None,
    ) -> Tensor:
        """``torch.randperm(N)`` (repeated/truncated to ``num_samples``) on ``device``."""
        e = self._epoch(epoch)
        device = torch.device(device)
        g = self.make_generator(e, device) if generator is None else generator
        n = self.num_targets
        reps = -(-self.num_samples // n)
        perms = [torch.randperm(n, generator=g, device=device) for _ in range(reps)]
        out = perms[0] if reps == 1 else torch.cat(perms)
        return out[: self.num_samples]


@SAMPLERS.register("class_balanced")
class ClassBalancedSampler(WeightedClassSampler):
    """Class-balanced sampling: every class equally likely (``p_j = 1/C``), uniform within a
    class, with replacement (Kang et al. 2020, ``q = 0``)."""

    name = "class_balanced"

    def _class_weights(self) -> np.ndarray:
        return np.ones(self.num_classes)


@SAMPLERS.register("power")
class PowerSampler(WeightedClassSampler):
    """Class probability ``p_j ∝ n_j ** q`` (Kang et al. 2020), with replacement.

    ``q = 0`` is class-balanced, ``q = 1`` instance-balanced in distribution (but drawn with
    replacement), ``q = 0.5`` square-root sampling.

    Args:
        q: Exponent (any finite number; default 0.5).
    """

    name = "power"

    def __init__(self, targets: TargetsLike, num_classes: int, *, q: float = 0.5, **common: Any) -> None:
        super().__init__(targets, num_classes, **common)
        self.q = _check_float("q", q)

    def _class_weights(self) -> np.ndarray:
        return self.class_counts.astype(np.float64) ** self.q


@SAMPLERS.register("sqrt")
class SqrtSampler(PowerSampler):
    """Square-root sampling: ``p_j ∝ sqrt(n_j)`` (``power`` with ``q = 0.5``)."""

    name = "sqrt"

    def __init__(self, targets: TargetsLike, num_classes: int, **common: Any) -> None:
        super().__init__(targets, num_classes, q=0.5, **common)


@SAMPLERS.register("progressive")
class ProgressivelyBalancedSampler(LongTailSampler):
    """Progressively-balanced sampling (Kang et al. 2020), with replacement.

    ``p_j(t) = (1 - t/T) * n_j / N + (t/T) * 1/C`` with ``t`` the (0-based) epoch and
    ``T = total_epochs``; ``t/T`` is clipped to [0, 1]. Epoch 0 is instance-balanced in
    distribution and the distribution reaches class-balanced at ``t = T``.

    Raises:
        ConfigError: ``total_epochs`` not given.
    """

    name = "progressive"

    def __init__(self, targets: TargetsLike, num_classes: int, **common: Any) -> None:
        super().__init__(targets, num_classes, **common)
        if self.total_epochs is None:
            raise ConfigError("sampler 'progressive' needs 'total_epochs' (the T of p_j(t) = (1 - t/T) p_IB + t/T p_CB)")

    @property
    def epoch_dependent(self) -> bool:
        return True

    def class_probs(self, epoch: Optional[int] = None) -> np.ndarray:
        t = min(max(self._epoch(epoch) / float(self.total_epochs), 0.0), 1.0)
        p_ib = self.class_counts / float(self.class_counts.sum())
        p_cb = np.full(self.num_classes, 1.0 / self.num_classes)
        return (1.0 - t) * p_ib + t * p_cb


def _check_per(per: Any) -> str:
    if per not in ("sample", "class"):
        raise ConfigError(f"sampler parameter 'per' must be 'sample' or 'class', got {per!r}")
    return per


@SAMPLERS.register("effective_number")
class EffectiveNumberSampler(WeightedClassSampler):
    """Sampling by the inverse effective number of Cui et al. (2019), with replacement.

    ``w_j = (1 - beta) / (1 - beta ** n_j)``.

    * ``per="sample"`` (default, as in the GCL authors' code and equivalent to Cui et al.'s
      loss re-weighting): each **sample** of class j is drawn with probability ``∝ w_j``, so the
      class probability is ``∝ n_j * w_j`` (close to class-balanced for beta -> 1, instance-
      balanced for beta = 0).
    * ``per="class"``: the **class** probability is ``∝ w_j`` (tends to ``∝ 1/n_j`` as
      beta -> 1, i.e. strong tail over-sampling).

    Args:
        beta: In [0, 1); default 0.9999.
        per: "sample" or "class" (see above).
    """

    name = "effective_number"

    def __init__(
        self, targets: TargetsLike, num_classes: int, *, beta: float = 0.9999, per: str = "sample", **common: Any
    ) -> None:
        super().__init__(targets, num_classes, **common)
        self.beta = _check_float("beta", beta, lo=0.0, hi=1.0, hi_open=True)
        self.per = _check_per(per)

    def _class_weights(self) -> np.ndarray:
        w = effective_number(self.class_counts, self.beta)  # unnormalized: only ratios matter here
        return w * self.class_counts if self.per == "sample" else w


@SAMPLERS.register("cben")
class CBENSampler(WeightedClassSampler):
    """Class-based effective number (CBEN) sampling, thesis eq. 5.13-5.15, with replacement.

    ``delta_j = (log n_max - log n_j) / max(.)`` (head 0, tail 1),
    ``beta_j = b * (delta_j - delta_min) / (delta_max - delta_min) + a`` (eq. 5.15),
    ``gamma_j = (1 - beta_j) / (1 - beta_j ** n_j)`` (eq. 5.13), normalized over classes
    (eq. 5.14). See :func:`cben_gammas`.

    Per-sample semantics (thesis: "the sampling probability gamma_j of a sample from class j";
    authors' code: per-sample multinomial weights): **each sample** of class j is drawn with
    probability ``gamma_j / sum_i gamma_{y_i}``, so :meth:`class_probs` is
    ``n_j gamma_j / sum_k n_k gamma_k`` -- *not* ``gamma_j`` itself. ``per="class"`` selects the
    other reading (class probability ``= gamma_j``) for ablations.

    Args:
        a: Lower end of the beta range; default 0.9999 (authors' code). Thesis: 0.999.
        b: Width of the beta range; default 1e-5 (authors' code). Thesis: 0.0009.
        per: "sample" (default) or "class".

    Raises:
        ConfigError: ``a`` or ``b`` negative, or ``a + b >= 1`` (beta_j must stay below 1).
    """

    name = "cben"

    def __init__(
        self,
        targets: TargetsLike,
        num_classes: int,
        *,
        a: float = 0.9999,
        b: float = 1e-5,
        per: str = "sample",
        **common: Any,
    ) -> None:
        super().__init__(targets, num_classes, **common)
        self.a = _check_float("a", a, lo=0.0, hi=1.0, hi_open=True)
        self.b = _check_float("b", b, lo=0.0)
        if self.a + self.b >= 1.0:
            raise ConfigError(f"sampler 'cben': parameters 'a' + 'b' must be < 1 (beta_j <= a + b), got a={a}, b={b}")
        self.per = _check_per(per)

    @property
    def gammas(self) -> np.ndarray:
        """Normalized gamma_j of eq. 5.14 (per-sample relative probability of class j)."""
        return cben_gammas(self.class_counts, self.a, self.b)

    def _class_weights(self) -> np.ndarray:
        g = self.gammas
        return g * self.class_counts if self.per == "sample" else g


# ---------------------------------------------------------------------------------------------
# factory
# ---------------------------------------------------------------------------------------------
def _accepted_params(cls: type) -> set[str]:
    """Sampler-specific keyword names accepted along the class's MRO (common ones excluded)."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass is Sampler or klass is object:
            continue
        for p in inspect.signature(init).parameters.values():
            if p.kind is inspect.Parameter.KEYWORD_ONLY:
                names.add(p.name)
    if cls is SqrtSampler:
        names.discard("q")  # fixed at 0.5
    return names - set(_COMMON)


def build_sampler(
    name: str,
    targets: TargetsLike,
    num_classes: int,
    *,
    seed: int = 0,
    num_samples: Optional[int] = None,
    total_epochs: Optional[int] = None,
    rank: int = 0,
    world_size: int = 1,
    **params: Any,
) -> LongTailSampler:
    """Build the sampler registered as ``name``.

    Args:
        name: One of ``SAMPLERS.names()``.
        targets: Training labels (N,).
        num_classes: C.
        seed: Base seed; the stream of epoch e depends on (seed, e) only.
        num_samples: Draws per epoch over all ranks (default N).
        total_epochs: Training epochs (``progressive`` needs it).
        rank: Rank of this process.
        world_size: Number of processes.
        **params: Sampler-specific parameters (e.g. ``beta`` for ``effective_number``,
            ``a``/``b``/``per`` for ``cben``, ``q`` for ``power``).

    Returns:
        The sampler, at epoch 0.

    Raises:
        ConfigError: Unknown sampler name, unknown or invalid parameter (named).
        DataError: Bad labels or an empty class (named).
    """
    cls = SAMPLERS.get(name)
    accepted = _accepted_params(cls)
    unknown = sorted(set(params) - accepted)
    if unknown:
        valid = ", ".join(sorted(accepted)) or "none"
        raise ConfigError(
            f"sampler '{name}' got unknown parameter '{unknown[0]}'"
            + (f" (all unknown: {unknown})" if len(unknown) > 1 else "")
            + f"; valid parameters: {valid}"
        )
    return cls(
        targets,
        num_classes,
        seed=seed,
        num_samples=num_samples,
        total_epochs=total_epochs,
        rank=rank,
        world_size=world_size,
        **params,
    )
