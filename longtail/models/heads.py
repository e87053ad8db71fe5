"""Classifier heads: map pooled features ``(N, D)`` to logits ``(N, C)``.

* :class:`LinearHead` -- an ordinary affine layer (``nn.Linear``, bias optional).
* :class:`CosineHead` -- bias-free cosine classifier, ``logits_j = cos(f, w_j)``, *unscaled*
  (cosine losses such as LDAM, KPS or GCL multiply by their scale ``s`` themselves).
* :class:`LWSHead` -- learnable weight scaling (Kang et al., 2020): a frozen linear or cosine
  head whose logits are multiplied by a learnable per-class scale ``f_j`` (initialised to 1).
* :func:`tau_normalize` -- the tau-normalised classifier of Kang et al. (2020):
  ``w_j / ||w_j||^tau`` with the bias dropped.

Every head exposes ``in_features``, ``num_classes`` and ``reset_parameters()``.
"""
from __future__ import annotations

import math
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError

__all__ = ["LinearHead", "CosineHead", "LWSHead", "tau_normalize"]

_LINEAR_INITS = ("default", "kaiming")


def _check_dims(in_features: int, num_classes: int) -> None:
    """Raise ConfigError unless both sizes are positive integers."""
    for name, value in (("in_features", in_features), ("num_classes", num_classes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"head: {name} must be a positive integer, got {value!r}")


class LinearHead(nn.Linear):
    """Ordinary linear classifier ``logits = f @ W.T + b``.

    Args:
        in_features: Feature dimension D.
        num_classes: Number of classes C.
        bias: Whether the layer has a bias.
        init: Weight initialisation. ``"default"``: PyTorch's ``nn.Linear`` initialisation
            (Kaiming-uniform with ``a = sqrt(5)``). ``"kaiming"``: Kaiming-normal weights
            (fan-in, ReLU gain; std ``sqrt(2 / D)``), as the CIFAR ResNet code of LDAM/KPS/GCL
            initialises its final linear layer. The bias keeps PyTorch's default in both cases.
    """

    def __init__(self, in_features: int, num_classes: int, bias: bool = True, init: str = "default") -> None:
        _check_dims(in_features, num_classes)
        if init not in _LINEAR_INITS:
            raise ConfigError(f"linear head: unknown init '{init}'; valid: {', '.join(_LINEAR_INITS)}")
        if not isinstance(bias, bool):
            raise ConfigError(f"linear head: bias must be true or false, got {bias!r}")
        self.init = init
        super().__init__(in_features, num_classes, bias=bias)

    @property
    def num_classes(self) -> int:
        """Number of classes C (``out_features``)."""
        return self.out_features

    def reset_parameters(self) -> None:
        """Re-initialise weight (per ``init``) and bias."""
        super().reset_parameters()
        if getattr(self, "init", "default") == "kaiming":
            nn.init.kaiming_normal_(self.weight, mode="fan_in", nonlinearity="relu")

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, init={self.init}"


class CosineHead(nn.Module):
    """Bias-free cosine classifier: ``logits = normalize(f) @ normalize(W).T``.

    The logits are the plain cosines in ``[-1, 1]``; the loss applies the scale ``s``. The
    normalisation and the product are computed in float32 with autocast disabled, so the head
    is accurate under mixed precision and finite for zero-norm features (``eps`` guards the
    division; a zero feature gives all-zero logits).

    Weights are initialised like the ``NormedLinear`` layer of the LDAM code: uniform in
    ``[-1, 1]``, then every class vector is rescaled as by ``renorm(p=2, maxnorm=1e-5) * 1e5``,
    i.e. to (almost exactly) unit norm.

    Args:
        in_features: Feature dimension D.
        num_classes: Number of classes C.
        eps: Lower bound of the norms in the normalisation.
    """

    def __init__(self, in_features: int, num_classes: int, eps: float = 1e-12) -> None:
        super().__init__()
        _check_dims(in_features, num_classes)
        if not isinstance(eps, (int, float)) or not eps > 0:
            raise ConfigError(f"cosine head: eps must be a positive number, got {eps!r}")
        self.in_features = in_features
        self.num_classes = num_classes
        self.eps = float(eps)
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Uniform(-1, 1) weights, each class row brought to norm min(norm, 1e-5) * 1e5 (= 1)."""
        with torch.no_grad():
            self.weight.uniform_(-1.0, 1.0)
            max_norm, factor = 1e-5, 1e5
            norms = self.weight.norm(p=2, dim=1, keepdim=True)
            shrink = torch.where(norms > max_norm, max_norm / (norms + 1e-7), torch.ones_like(norms))
            self.weight.mul_(shrink * factor)

    def forward(self, features: Tensor) -> Tensor:
        """Return the cosines (N, C) between ``features`` (N, D) and the class weights."""
        with torch.autocast(device_type=features.device.type, enabled=False):
            f = F.normalize(features.float(), p=2.0, dim=1, eps=self.eps)
            w = F.normalize(self.weight.float(), p=2.0, dim=1, eps=self.eps)
            return F.linear(f, w)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, num_classes={self.num_classes}, eps={self.eps}"


class LWSHead(nn.Module):
    """Learnable weight scaling (Kang et al., 2020) on top of a frozen linear or cosine head.

    ``logits_j = f_j * base_logits_j`` with a learnable scale ``f_j`` per class, initialised to 1.
    For a linear base with bias this scales the whole logit (both ``w_j`` and ``b_j``). The base
    head is wrapped *as is* (not copied) and its parameters get ``requires_grad = False``; only
    :attr:`scales` is trainable.

    Args:
        base: A :class:`LinearHead` (or ``nn.Linear``) or :class:`CosineHead`.
    """

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        if isinstance(base, LWSHead) or not isinstance(base, (nn.Linear, CosineHead)):
            raise ConfigError(
                f"LWS head: the base head must be a linear or cosine head, got {type(base).__name__}"
            )
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        weight = base.weight
        self.scales = nn.Parameter(torch.ones(self.num_classes, device=weight.device, dtype=weight.dtype))

    @classmethod
    def from_head(cls, head: nn.Module) -> "LWSHead":
        """Wrap a trained linear or cosine ``head`` (frozen in place) with per-class scales."""
        return cls(head)

    @property
    def in_features(self) -> int:
        """Feature dimension D of the base head."""
        return int(self.base.in_features)

    @property
    def num_classes(self) -> int:
        """Number of classes C of the base head."""
        return int(self.base.weight.shape[0])

    def reset_parameters(self) -> None:
        """Reset the scales to 1; the (frozen) base head is left untouched."""
        with torch.no_grad():
            self.scales.fill_(1.0)

    def forward(self, features: Tensor) -> Tensor:
        """Return ``scales * base(features)``."""
        return self.base(features) * self.scales


def tau_normalize(head: nn.Module, tau: float) -> LinearHead:
    """Return the tau-normalised classifier of ``head`` as a new bias-free :class:`LinearHead`.

    Row ``j`` of the new weight is ``w_j / ||w_j||^tau`` (so its norm becomes ``||w_j||^(1-tau)``;
    ``tau = 1`` gives unit rows, ``tau = 0`` the original weights). Following Kang et al. (2020),
    whose tau-normalised classifier has no bias term, the bias of ``head`` is **dropped**: a
    bias learned on long-tailed data carries the very class prior that tau-normalisation is
    meant to remove. ``head`` itself is not modified.

    A :class:`CosineHead` (GCL, Table 5.6) is handled the same way on its stored weights: the
    result scores ``f . w_j / ||w_j||^tau`` on the *unnormalised* feature ``f``, so ``tau = 1``
    ranks classes exactly as the cosine head does and ``tau < 1`` lets the weight norms, which a
    cosine head learns but ignores, re-enter.

    Args:
        head: A trained :class:`LinearHead`, ``nn.Linear`` or :class:`CosineHead`.
        tau: Normalisation exponent, a finite number >= 0 (Kang et al. search [0, 1]).

    Returns:
        A new ``LinearHead(bias=False)`` on the device and dtype of ``head``.

    Raises:
        ConfigError: If ``head`` is not a linear layer or ``tau`` is invalid.
    """
    if not isinstance(head, (nn.Linear, CosineHead)):
        raise ConfigError(
            f"tau_normalize: needs a linear or cosine head, got {type(head).__name__} (unwrap an LWS head first)"
        )
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not math.isfinite(tau) or tau < 0:
        raise ConfigError(f"tau_normalize: tau must be a finite number >= 0, got {tau!r}")
    weight = head.weight.detach()
    num_classes, in_features = weight.shape
    new = LinearHead(in_features, num_classes, bias=False)
    new = new.to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        norms = weight.norm(p=2, dim=1, keepdim=True).clamp_min(torch.finfo(weight.dtype).tiny)
        new.weight.copy_(weight / norms.pow(float(tau)))
    return new

