"""Evaluation metrics of long-tailed recognition.

:class:`Accumulator` collects what the metrics need from each evaluation batch while staying on
the logits' device (no host synchronisation per batch); :meth:`Accumulator.compute` moves the
collected tensors to the host once and calls :func:`compute_metrics`, which returns a
JSON-serializable dict (the body of ``metrics.json``).

Conventions (those of Kang et al. 2020 / Liu et al. 2019, OLTR):

* Shot groups are defined by TRAINING counts: *many* ``count > many`` (default 100), *few*
  ``count < few`` (default 20), *medium* ``few <= count <= many`` (both ends inclusive, so a class
  with exactly 100 or exactly 20 training images is medium).
* Many/medium/few accuracy is the mean of the per-class accuracies of the group's classes (classes
  without test samples are left out); on a balanced test set it equals the sample accuracy over
  the group. ``top1``/``top5`` are sample accuracies over the whole test set.
* All accuracies, ``macro_f1``, ``g_mean`` and ``ece`` are percentages; ``nll`` is in nats.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from ..data.lt import shot_groups

__all__ = ["Accumulator", "compute_metrics", "metrics_from_logits", "shot_group", "top_confusions", "ECE_BINS",
           "CONFUSION_MAX_CLASSES"]

ECE_BINS = 15
"""Number of equal-width confidence bins of the expected calibration error."""

CONFUSION_MAX_CLASSES = 100
"""Largest number of classes whose confusion matrix goes into the metrics (CIFAR-100: 10,000 counts;
ImageNet-LT's would be a million)."""

ArrayLike = Union[torch.Tensor, np.ndarray, Sequence[float], Sequence[int]]


def shot_group(train_count: int, many: int = 100, few: int = 20) -> str:
    """Name the shot group of one class from its training count (see :func:`longtail.data.shot_groups`)."""
    return next(g for g, m in shot_groups([train_count], many=many, few=few).items() if m[0])


def _to_numpy(x: Optional[ArrayLike], dtype: Any, name: str) -> Optional[np.ndarray]:
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        x = x.detach()
        if x.is_floating_point() and x.dtype not in (torch.float32, torch.float64):
            x = x.float()  # bf16/fp16 have no numpy equivalent
        x = x.cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {tuple(arr.shape)}")
    return arr.astype(dtype, copy=False)


def _pct(x: Optional[float]) -> Optional[float]:
    return None if x is None else float(100.0 * x)


def compute_metrics(
    pred: ArrayLike,
    target: ArrayLike,
    confidence: Optional[ArrayLike],
    nll: Optional[ArrayLike],
    top5_hit: Optional[ArrayLike],
    class_counts: Sequence[int],
    num_classes: Optional[int] = None,
    many: int = 100,
    few: int = 20,
    n_bins: int = ECE_BINS,
) -> Dict[str, Any]:
    """Compute every evaluation metric from per-sample predictions.

    Definitions (see the module docstring for the shot-group conventions):

    * ``top1`` / ``top5``: percent of test samples whose label is the prediction / among the five
      highest logits (the ``C`` highest when there are ``C < 5`` classes, so top-5 is then 100).
    * ``many`` / ``medium`` / ``few``: mean per-class accuracy (percent) over the group's classes
      that have test samples; ``None`` when the group has no class (or none of its classes has a
      test sample). ``group_sizes`` counts the classes of each group (by training counts).
    * ``macro_f1``: per class, precision ``TP/(TP+FP)`` and recall ``TP/(TP+FN)`` (0 where the
      denominator is 0) and ``F1 = 2PR/(P+R)`` (0 where ``P+R = 0``), averaged over the classes
      that appear in the targets or in the predictions (classes absent from both are skipped,
      as scikit-learn does by default). Percent.
    * ``g_mean``: geometric mean of the per-class recalls of the classes with test samples,
      in percent; a single class with zero recall makes it 0.
    * ``ece``: expected calibration error over ``n_bins`` equal-width bins of ``[0, 1]``:
      ``sum_b |acc_b - conf_b| * n_b / N``, percent. Bins are half-open ``(lo, hi]`` as in the
      common implementation (Guo et al. 2017): a confidence ``c`` goes to bin ``ceil(n_bins*c)-1``,
      so a confidence exactly on an edge belongs to the bin below it (e.g. ``0.2`` with 15 bins
      falls in ``(2/15, 3/15]``); a confidence of exactly 0 goes to the first bin.
    * ``nll``: mean negative log-likelihood (nats) of the softmax at the target.
    * ``confusion``: ``confusion[i][j]`` counts the test samples of class ``i`` predicted as class
      ``j`` (rows: true class, columns: prediction), for at most :data:`CONFUSION_MAX_CLASSES`
      classes; ``None`` above that. Its diagonal over its row sums is the per-class accuracy.

    Args:
        pred: Predicted class per sample, shape ``(N,)``.
        target: True class per sample, shape ``(N,)``.
        confidence: Maximum softmax probability per sample ``(N,)``, or ``None`` (``ece`` None).
        nll: Negative log-likelihood per sample ``(N,)``, or ``None`` (``nll`` None).
        top5_hit: Whether the target is among the top-5 predictions ``(N,)``, or ``None``
            (``top5`` None).
        class_counts: Training samples per class, length ``num_classes``.
        num_classes: Number of classes; defaults to ``len(class_counts)``.
        many: Many-shot threshold (``count > many``).
        few: Few-shot threshold (``count < few``).
        n_bins: Number of ECE bins.

    Returns:
        A JSON-serializable dict with keys ``top1``, ``top5``, ``many``, ``medium``, ``few``,
        ``shot_thresholds``, ``group_sizes``, ``per_class`` (a list of dicts with ``class``,
        ``train_count``, ``test_count``, ``accuracy`` (percent, None without test samples) and
        ``group``), ``macro_f1``, ``g_mean``, ``ece``, ``nll``, ``num_samples`` and ``confusion``.

    Raises:
        ValueError: On mismatched lengths, an empty input, or a label or prediction outside
            ``[0, num_classes)``.
    """
    counts = np.asarray(
        class_counts.detach().cpu().numpy() if isinstance(class_counts, torch.Tensor) else class_counts
    ).astype(np.int64).reshape(-1)
    if num_classes is None:
        num_classes = int(counts.shape[0])
    if counts.shape[0] != num_classes:
        raise ValueError(f"class_counts has {counts.shape[0]} entries but num_classes={num_classes}")
    if (counts < 0).any():
        raise ValueError("class_counts must be non-negative")
    if few > many:
        raise ValueError(f"shot thresholds: few={few} must not exceed many={many}")
    if n_bins < 1:
        raise ValueError(f"n_bins must be positive, got {n_bins}")

    y = _to_numpy(target, np.int64, "target")
    p = _to_numpy(pred, np.int64, "pred")
    conf = _to_numpy(confidence, np.float64, "confidence")
    nl = _to_numpy(nll, np.float64, "nll")
    hit5 = _to_numpy(top5_hit, bool, "top5_hit")
    n = int(y.shape[0])
    if n == 0:
        raise ValueError("no samples to evaluate")
    for name, arr in (("pred", p), ("confidence", conf), ("nll", nl), ("top5_hit", hit5)):
        if arr is not None and arr.shape[0] != n:
            raise ValueError(f"{name} has {arr.shape[0]} entries but target has {n}")
    for name, arr in (("target", y), ("pred", p)):
        if arr.min() < 0 or arr.max() >= num_classes:
            raise ValueError(
                f"{name} holds class {int(arr.min() if arr.min() < 0 else arr.max())} "
                f"outside [0, {num_classes})"
            )

    correct = p == y
    test_count = np.bincount(y, minlength=num_classes)
    tp = np.bincount(y[correct], minlength=num_classes)
    pred_count = np.bincount(p, minlength=num_classes)
    has_test = test_count > 0
    recall = np.divide(tp, test_count, out=np.zeros(num_classes), where=has_test)
    precision = np.divide(tp, pred_count, out=np.zeros(num_classes), where=pred_count > 0)
    pr_sum = precision + recall
    f1 = np.divide(2 * precision * recall, pr_sum, out=np.zeros(num_classes), where=pr_sum > 0)
    present = has_test | (pred_count > 0)

    masks = shot_groups(counts, many=many, few=few)
    groups = [next(g for g, m in masks.items() if m[i]) for i in range(num_classes)]
    group_acc: Dict[str, Optional[float]] = {}
    group_sizes: Dict[str, int] = {}
    for g in ("many", "medium", "few"):
        members = masks[g]
        group_sizes[g] = int(members.sum())
        sel = members & has_test
        group_acc[g] = _pct(float(recall[sel].mean())) if sel.any() else None

    per_class: List[Dict[str, Any]] = [
        {
            "class": c,
            "train_count": int(counts[c]),
            "test_count": int(test_count[c]),
            "accuracy": _pct(float(recall[c])) if has_test[c] else None,
            "group": groups[c],
        }
        for c in range(num_classes)
    ]

    if has_test.any():
        r = recall[has_test]
        g_mean = 0.0 if (r == 0).any() else float(np.exp(np.mean(np.log(r))))
    else:  # unreachable with n > 0, kept for clarity
        g_mean = None

    ece = None
    if conf is not None:
        bins = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
        # per bin: sums of confidences and of hits; n_b/N * |acc_b - conf_b| = |hits_b - sum_conf_b| / N
        conf_sum = np.bincount(bins, weights=conf, minlength=n_bins)
        hit_sum = np.bincount(bins, weights=correct.astype(np.float64), minlength=n_bins)
        ece = float(np.abs(hit_sum - conf_sum).sum() / n)

    confusion = None
    if num_classes <= CONFUSION_MAX_CLASSES:
        confusion = np.bincount(y * num_classes + p, minlength=num_classes * num_classes)
        confusion = confusion.reshape(num_classes, num_classes).tolist()

    return {
        "top1": _pct(float(correct.mean())),
        "top5": _pct(float(hit5.mean())) if hit5 is not None else None,
        "many": group_acc["many"],
        "medium": group_acc["medium"],
        "few": group_acc["few"],
        "shot_thresholds": {"many": int(many), "few": int(few)},
        "group_sizes": group_sizes,
        "per_class": per_class,
        "macro_f1": _pct(float(f1[present].mean())),
        "g_mean": _pct(g_mean),
        "ece": _pct(ece),
        "nll": float(nl.mean()) if nl is not None else None,
        "num_samples": n,
        "confusion": confusion,
    }


def top_confusions(metrics: Dict[str, Any], k: int = 10) -> List[Dict[str, Any]]:
    """The ``k`` most frequent errors of a metrics dict, from its ``confusion`` matrix.

    Each entry names a true class and the class its test samples were taken for, with the count
    and its share of the true class's test samples (percent), most frequent first (ties: by true
    class, then predicted class). Class names come from ``per_class`` when it has them.

    Args:
        metrics: A dict of :func:`compute_metrics` (or a ``metrics.json``) with ``confusion``.
        k: How many errors to list.

    Returns:
        A list of dicts with ``true``, ``pred`` (class indices), ``true_name``, ``pred_name``
        (names or ``None``), ``count`` and ``percent``.

    Raises:
        ValueError: When the metrics have no confusion matrix (older runs, or more than
            :data:`CONFUSION_MAX_CLASSES` classes).
    """
    matrix = metrics.get("confusion")
    if matrix is None:
        raise ValueError("these metrics have no confusion matrix (older run, or more than "
                         f"{CONFUSION_MAX_CLASSES} classes): evaluate the run again with `longtail eval`")
    m = np.asarray(matrix, dtype=np.int64)
    names = [c.get("name") for c in metrics.get("per_class", [])] or [None] * m.shape[0]
    rows = m.sum(axis=1)
    off = [(int(m[i, j]), i, j) for i in range(m.shape[0]) for j in range(m.shape[1]) if i != j and m[i, j] > 0]
    off.sort(key=lambda t: (-t[0], t[1], t[2]))
    return [
        {"true": i, "pred": j, "true_name": names[i], "pred_name": names[j], "count": c,
         "percent": 100.0 * c / int(rows[i])}
        for c, i, j in off[:k]
    ]


class Accumulator:
    """Collect evaluation outputs batch by batch without a host synchronisation per batch.

    Each :meth:`update` reduces the batch on the logits' device to what the metrics need (predicted
    class, top-5 hit flag, maximum softmax probability, negative log-likelihood at the target; all
    computed in float32 whatever the logits' dtype) and keeps these small tensors on that device.
    :meth:`compute` concatenates them, moves them to the host once and calls
    :func:`compute_metrics`. About 25 bytes are kept per sample, plus ``4 * C`` bytes when
    ``keep_logits=True`` (float32 logits, needed by the tau-normalization sweep and analyses).

    Args:
        num_classes: Number of classes; inferred from the first batch when ``None``.
        keep_logits: Also keep the float32 logits (see :meth:`logits`).

    Example:
        >>> acc = Accumulator()
        >>> for x, y in loader:
        ...     acc.update(model(x), y)
        >>> metrics = acc.compute(class_counts)
    """

    def __init__(self, num_classes: Optional[int] = None, keep_logits: bool = False) -> None:
        self.num_classes = num_classes
        self.keep_logits = keep_logits
        self.reset()

    def reset(self) -> None:
        """Drop everything collected so far."""
        self._pred: List[torch.Tensor] = []
        self._target: List[torch.Tensor] = []
        self._conf: List[torch.Tensor] = []
        self._nll: List[torch.Tensor] = []
        self._hit5: List[torch.Tensor] = []
        self._logits: List[torch.Tensor] = []
        self._n = 0

    def __len__(self) -> int:
        """Number of samples collected so far."""
        return self._n

    @torch.no_grad()
    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        """Add one batch.

        Args:
            logits: Class scores ``(N, C)``, any floating dtype (bf16 included).
            target: Labels ``(N,)``, integer, on the same device as ``logits``. Labels are range
                checked in :meth:`compute`, not here (that would synchronise).

        Raises:
            ValueError: On a shape mismatch or a number of classes that differs from before.
        """
        if logits.dim() != 2:
            raise ValueError(f"logits must be (N, C), got shape {tuple(logits.shape)}")
        if target.dim() != 1 or target.shape[0] != logits.shape[0]:
            raise ValueError(
                f"target must be (N,) with N={logits.shape[0]}, got shape {tuple(target.shape)}"
            )
        c = int(logits.shape[1])
        if self.num_classes is None:
            self.num_classes = c
        elif c != self.num_classes:
            raise ValueError(f"logits have {c} classes, expected {self.num_classes}")
        if logits.shape[0] == 0:
            return
        z = logits.detach().float()
        y = target.detach().to(device=z.device, dtype=torch.long)
        log_p = F.log_softmax(z, dim=1)
        max_log_p, pred = log_p.max(dim=1)
        topk = z.topk(min(5, c), dim=1).indices
        # `pred == y` as well, so that ties between logits never give a top-1 hit without a top-5 hit
        hit5 = (topk == y[:, None]).any(dim=1) | (pred == y)
        # clamp: an out-of-range label must not crash the gather; compute() reports it
        nll = -log_p.gather(1, y.clamp(0, c - 1)[:, None]).squeeze(1)
        self._pred.append(pred)
        self._target.append(y)
        self._conf.append(max_log_p.exp())
        self._nll.append(nll)
        self._hit5.append(hit5)
        if self.keep_logits:
            self._logits.append(z)
        self._n += int(z.shape[0])

    def logits(self) -> torch.Tensor:
        """Return the float32 logits ``(N, C)`` collected so far, on their device.

        Raises:
            RuntimeError: When the accumulator was built without ``keep_logits=True``.
        """
        if not self.keep_logits:
            raise RuntimeError("Accumulator(keep_logits=False) does not keep the logits")
        if not self._logits:
            return torch.empty(0, self.num_classes or 0)
        return torch.cat(self._logits)

    def targets(self) -> torch.Tensor:
        """Return the labels ``(N,)`` collected so far, on their device."""
        if not self._target:
            return torch.empty(0, dtype=torch.long)
        return torch.cat(self._target)

    def compute(
        self, class_counts: Sequence[int], many: int = 100, few: int = 20, n_bins: int = ECE_BINS
    ) -> Dict[str, Any]:
        """Compute the metrics of everything collected (see :func:`compute_metrics`).

        Args:
            class_counts: Training samples per class (defines the shot groups).
            many: Many-shot threshold (``count > many``).
            few: Few-shot threshold (``count < few``).
            n_bins: Number of ECE bins.

        Returns:
            The JSON-serializable metrics dict of :func:`compute_metrics`.

        Raises:
            ValueError: When nothing was collected, or on a label outside ``[0, C)``.
        """
        if self._n == 0:
            raise ValueError("Accumulator.compute() called before any non-empty update()")

        def host(parts: List[torch.Tensor]) -> np.ndarray:
            return torch.cat(parts).cpu().numpy()

        return compute_metrics(
            host(self._pred),
            host(self._target),
            host(self._conf),
            host(self._nll),
            host(self._hit5),
            class_counts,
            self.num_classes,
            many=many,
            few=few,
            n_bins=n_bins,
        )


def metrics_from_logits(
    logits: torch.Tensor,
    target: torch.Tensor,
    class_counts: Sequence[int],
    many: int = 100,
    few: int = 20,
) -> Dict[str, Any]:
    """Compute the metrics of one tensor of logits (a one-batch :class:`Accumulator`).

    Args:
        logits: Class scores ``(N, C)``.
        target: Labels ``(N,)``.
        class_counts: Training samples per class.
        many: Many-shot threshold.
        few: Few-shot threshold.

    Returns:
        The metrics dict of :func:`compute_metrics`.
    """
    acc = Accumulator(num_classes=int(logits.shape[1]))
    acc.update(logits, target)
    return acc.compute(class_counts, many=many, few=few)
