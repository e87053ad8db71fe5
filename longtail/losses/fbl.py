"""Feature-Balanced Loss (FBL) with curriculum learning, thesis chapter 4.

FBL works on an ordinary linear head with bias (logits ``z_j``) and needs the pooled feature
``f`` the head was applied to (``needs_features = True``). The feature-balanced logit,
eq. (4.6), is

    z^b_j = z_j - alpha(t) * lambda_j / ||f||,

for every class, and the loss, eq. (4.8), is the cross-entropy over ``z^b``. A small feature
norm is penalized, more for tail classes (larger stimulus ``lambda_j``), which encourages large
tail-class feature norms. Prediction uses the plain ``z`` (the stimulus is a training device).

Stimulus ``lambda_j``, eq. (4.4): ``log n_max - log n_j`` (zero for the head). The reference
code normalizes it by its maximum (to [0, 1]) and multiplies by a strength ``A`` (60 on CIFAR,
150 on ImageNet-LT, iNaturalist and Places-LT).

Curriculum ``alpha(t)``, eq. (4.7) and Table 4.4, with ``t`` the epoch index counted from 0
(the ``epoch`` given to :meth:`FeatureBalancedLoss.set_progress`) and ``T`` the total number of
training epochs (``total_epochs``):

=================== ============================ =========================================
name                thesis (``variant="thesis"``) reference code (``variant="code"``)
=================== ============================ =========================================
``linear_decrease`` ``1 - t/T``                  same
``linear_increase`` ``t/T``                      same
``sine``            ``sin(t/T * pi/2)``          same
``cosine``          ``1 - cos(t/T * pi/2)``      same
``parabolic``       ``(t/T)^2``                  ``(t/(T - 10 T/S))^2``, uncapped (> 1 in the
                                                 last 5% of the run)
=================== ============================ =========================================

The reference code's parabolic form is ``(t/(T-10))^2`` for its run of ``S = 200`` epochs
(``schedule_epochs``). Its 10-epoch offset is kept at the same fraction of the run when
``T != S`` (``10 T/S`` epochs), as the DRW/GA switches are moved in shortened runs: at
``T = S`` it is exactly the code's form, and alpha never exceeds ``(S/(S-10))^2`` (1.108 for
``S = 200``) whatever ``T``; a fixed offset would reach 3.6 at ``T = 20`` and 100 at ``T = 11``.

A dead sample (a feature vector of zeros) gets no stimulus; see
:meth:`FeatureBalancedLoss.balanced_logits`.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ..balance import log_ratio
from ..errors import ConfigError
from . import LOSSES
from .base import LongTailLoss, as_counts
from .functional import compute_dtype, to_compute

__all__ = ["FeatureBalancedLoss", "fbl_alpha", "fbl_stimulus", "CURRICULA"]

CURRICULA = ("linear_decrease", "linear_increase", "sine", "cosine", "parabolic")
_VARIANTS = ("code", "thesis")
_STIMULI = ("normalized", "raw")

#: Epochs the reference code subtracts from T in the parabolic curriculum ...
CODE_PARABOLIC_OFFSET = 10
#: ... in its run of this many epochs (CIFAR-LT, 200 epochs).
CODE_SCHEDULE_EPOCHS = 200


def fbl_alpha(curriculum: str, epoch: int, total_epochs: int, variant: str = "code",
              schedule_epochs: int = CODE_SCHEDULE_EPOCHS) -> float:
    """Curriculum weight ``alpha(t)`` of eq. (4.7) / Table 4.4.

    Args:
        curriculum: One of :data:`CURRICULA`.
        epoch: ``t``, the current epoch counted from 0.
        total_epochs: ``T``, the number of training epochs (>= 1).
        variant: ``"code"`` (reference code: ``(t / (T - 10 T/S))^2`` for the parabolic
            curriculum, uncapped) or ``"thesis"`` (``(t/T)^2``). The other curricula are the
            same in both.
        schedule_epochs: ``S``, the run length the code's 10-epoch offset belongs to (200);
            the offset is ``10 T/S`` epochs, so ``T = S`` gives the code's ``(t/(T-10))^2``
            exactly. Must be > 10.

    Returns:
        ``alpha(t)`` as a Python float.
    """
    if curriculum not in CURRICULA:
        raise ConfigError(f"fbl: unknown curriculum {curriculum!r}; valid: {', '.join(CURRICULA)}")
    if variant not in _VARIANTS:
        raise ConfigError(f"fbl: unknown curriculum_variant {variant!r}; valid: {', '.join(_VARIANTS)}")
    total = int(total_epochs)
    if total < 1:
        raise ConfigError(f"fbl: total_epochs must be >= 1, got {total_epochs}")
    if isinstance(schedule_epochs, bool) or not isinstance(schedule_epochs, int) \
            or schedule_epochs <= CODE_PARABOLIC_OFFSET:
        raise ConfigError(f"fbl: schedule_epochs must be an integer > {CODE_PARABOLIC_OFFSET}, got {schedule_epochs!r}")
    t = float(epoch)
    p = t / total
    if curriculum == "linear_decrease":
        return 1.0 - p
    if curriculum == "linear_increase":
        return p
    if curriculum == "sine":
        return math.sin(p * math.pi / 2.0)
    if curriculum == "cosine":
        return 1.0 - math.cos(p * math.pi / 2.0)
    # parabolic
    if variant == "code":
        # 10 * T / S is exact (10.0) at T = S: bit-identical to the code's (t / (T - 10))^2 there.
        offset = CODE_PARABOLIC_OFFSET * total / schedule_epochs
        return (t / (total - offset)) ** 2
    return p**2


def fbl_stimulus(class_counts: Union[Sequence[int], Tensor], stimulus: str = "normalized") -> Tensor:
    """Stimulus intensity ``lambda_j`` of eq. (4.4), before the strength ``A``, in float64.

    Args:
        class_counts: Per-class training counts.
        stimulus: ``"raw"``: ``log n_max - log n_j`` (eq. 4.4); ``"normalized"``: the same divided
            by its maximum (reference code; all zeros when all counts are equal).
    """
    if stimulus not in _STIMULI:
        raise ConfigError(f"fbl: unknown stimulus {stimulus!r}; valid: {', '.join(_STIMULI)}")
    counts = as_counts(class_counts)
    return torch.from_numpy(log_ratio(counts.numpy(), normalize=stimulus == "normalized"))  # eq. (4.4)


@LOSSES.register("fbl")
class FeatureBalancedLoss(LongTailLoss):
    r"""Feature-balanced loss, eqs. (4.6)-(4.8), with a curriculum ``alpha(t)`` (eq. 4.7).

    ``loss(z, y, f) = CE(z_j - alpha(t) * A * lambda_j / (||f|| + eps), y)``.

    Defaults are the reference code for CIFAR: normalized stimulus with ``A = 60``, parabolic
    curriculum ``(t / (T - 10))^2`` at ``T = 200`` (offset scaled with ``T``, see :func:`fbl_alpha`). The thesis text is ``stimulus="raw", A=1,
    curriculum_variant="thesis"`` (eq. 4.4 and ``alpha(t) = (t/T)^2``; eq. 4.7 only states
    ``alpha(t) ∝ (t/T)^2``, ``A`` is that constant of proportionality).

    ``alpha(t)`` lives in a buffer updated in place by :meth:`set_progress`; before the first
    call it holds ``alpha(0)`` (0 for the increasing curricula, 1 for ``linear_decrease``).

    Args:
        class_counts: Per-class training counts.
        A: Strength multiplying the stimulus. ``None`` (default): 60 (the CIFAR code value) with
            ``stimulus="normalized"``, 1 with ``stimulus="raw"``. Use 150 for ImageNet-LT,
            iNaturalist 2018 and Places-LT (code).
        stimulus: ``"normalized"`` (code, default) or ``"raw"`` (thesis eq. 4.4).
        curriculum: One of ``linear_decrease``, ``linear_increase``, ``sine``, ``cosine``,
            ``parabolic`` (default; Table 4.4).
        curriculum_variant: ``"code"`` (default) or ``"thesis"``; see :func:`fbl_alpha`.
        schedule_epochs: Full run length ``S`` of the recipe, whose code-form parabolic offset is
            10 epochs (200 on CIFAR; 180 on ImageNet-LT and iNaturalist, 90 on Places-LT); a
            run of ``T`` epochs uses ``10 T/S``. See :func:`fbl_alpha`.
        eps: Added to ``||f||`` (as in the code).
    """

    needs_features = True

    def __init__(
        self,
        class_counts: Union[Sequence[int], Tensor],
        A: Optional[float] = None,
        stimulus: str = "normalized",
        curriculum: str = "parabolic",
        curriculum_variant: str = "code",
        schedule_epochs: int = CODE_SCHEDULE_EPOCHS,
        eps: float = 1e-12,
    ) -> None:
        super().__init__(class_counts)
        lam = fbl_stimulus(self.class_counts.double(), stimulus)
        if A is None:
            A = 60.0 if stimulus == "normalized" else 1.0
        if not A >= 0:
            raise ConfigError(f"fbl: A must be >= 0, got {A}")
        if not eps > 0:
            raise ConfigError(f"fbl: eps must be > 0, got {eps}")
        fbl_alpha(curriculum, 0, 1, curriculum_variant, schedule_epochs)  # validates the names
        self.A = float(A)
        self.stimulus = stimulus
        self.curriculum = curriculum
        self.curriculum_variant = curriculum_variant
        self.schedule_epochs = schedule_epochs
        self.eps = float(eps)
        self.register_buffer("lam", lam, persistent=False)  # lambda_j (eq. 4.4), before A; float64
        self.register_buffer("strength", self.A * lam, persistent=False)  # A * lambda_j
        alpha0 = 1.0 if curriculum == "linear_decrease" else 0.0
        self.register_buffer("alpha", torch.tensor(alpha0, dtype=torch.float64), persistent=False)

    # -- schedule ---------------------------------------------------------------------------
    def set_progress(self, epoch: int, total_epochs: int) -> None:
        """Set ``alpha(t)`` (eq. 4.7) for epoch ``t = epoch`` of ``T = total_epochs``, in place."""
        value = fbl_alpha(self.curriculum, epoch, total_epochs, self.curriculum_variant, self.schedule_epochs)
        with torch.no_grad():
            self.alpha.fill_(value)

    # -- loss -------------------------------------------------------------------------------
    def balanced_logits(self, logits: Tensor, features: Tensor) -> Tensor:
        """Feature-balanced logits ``z^b`` of eq. (4.6).

        A dead sample, whose feature vector is all zeros (``||f|| = 0``), gets no stimulus
        (``z^b = z``): ``1/(||f|| + eps)`` would be ``1e12`` and its loss ~``1e13``, swamping the
        batch, while the stimulus cannot act on it (a zero vector has no direction to grow and
        the gradient of ``||f||`` at 0 is 0). Every other sample is computed as eq. (4.6).

        Args:
            logits: Linear-head logits ``z``, shape ``(N, C)``.
            features: The head's input ``f``, shape ``(N, D)`` (further dimensions are flattened).

        Returns:
            ``(N, C)`` in float32 (float64 for float64 inputs).
        """
        if features is None:
            raise ValueError("FeatureBalancedLoss needs the pooled features: call loss(logits, target, features)")
        if features.shape[0] != logits.shape[0]:
            raise ValueError(
                f"FeatureBalancedLoss: features have {features.shape[0]} rows but logits have {logits.shape[0]}"
            )
        dt = compute_dtype(logits, features)
        z = logits.to(dt)
        f = features.to(dt).flatten(1)
        norm = torch.linalg.vector_norm(f, dim=1, keepdim=True)
        stimulus = self.alpha.to(dt) * self.strength.to(dt) / (norm + self.eps)  # eq. (4.6)
        stimulus = torch.where(norm > 0, stimulus, torch.zeros((), dtype=dt, device=norm.device))  # dead sample
        return z - stimulus

    def forward(self, logits: Tensor, target: Tensor, features: Optional[Tensor] = None) -> Tensor:
        """FBL, eq. (4.8): mean cross-entropy over the feature-balanced logits."""
        self._check(logits, target)
        return F.cross_entropy(self.balanced_logits(logits, features), target)

    def predict(self, logits: Tensor, features: Optional[Tensor] = None) -> Tensor:
        """The plain logits ``z``: the stimulus is only applied in training."""
        return to_compute(logits)

    # -- introspection ----------------------------------------------------------------------
    def constants(self) -> dict:
        """Per-class constants: ``lambda`` (eq. 4.4, as selected) and ``A * lambda``."""
        return {"lambda": self.lam, "A_lambda": self.strength}

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, A={self.A}, stimulus={self.stimulus!r}, "
            f"curriculum={self.curriculum!r}, curriculum_variant={self.curriculum_variant!r}, "
            f"schedule_epochs={self.schedule_epochs}, eps={self.eps}"
        )
