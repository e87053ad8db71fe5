"""Backbone + head = :class:`LongTailModel`; registries and :func:`build_model`.

``build_model("resnet32", "cosine", 10)`` builds a model whose ``forward(x)`` returns
``ModelOutput(logits, features)``: ``features`` (N, D) is the pooled feature after the final ReLU
(the classifier's input), ``logits`` (N, C) the head output (plain cosines for a cosine head).

Registries: :data:`BACKBONES` (factories without arguments returning a module with a
``feature_dim`` attribute) and :data:`HEADS` (factories ``(in_features, num_classes, **params)``).
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, List, NamedTuple, Optional, Sequence, Union

from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..config import key_under
from ..errors import ConfigError
from ..registry import Registry
from .heads import CosineHead, LinearHead, LWSHead
from .resnet_cifar import resnet32
from .resnet_tv import load_pretrained, resnet50, resnet152, resnext50_32x4d

__all__ = ["BACKBONES", "HEADS", "ModelOutput", "LongTailModel", "build_model"]

BACKBONES = Registry("backbone")
HEADS = Registry("head")

BACKBONES.register("resnet32")(resnet32)
BACKBONES.register("resnet50")(resnet50)
BACKBONES.register("resnext50_32x4d")(resnext50_32x4d)
BACKBONES.register("resnet152")(resnet152)

HEADS.register("linear")(LinearHead)
HEADS.register("cosine")(CosineHead)

_LWS_BASES = ("linear", "cosine")


@HEADS.register("lws")
def _build_lws(in_features: int, num_classes: int, base: str = "linear", **base_params: Any) -> LWSHead:
    """An LWS head over a freshly built (frozen) ``base`` head; ``base_params`` go to the base."""
    if base not in _LWS_BASES:
        raise ConfigError(f"lws head: unknown base head '{base}'; valid: {', '.join(_LWS_BASES)}")
    return LWSHead(HEADS.build(base, in_features, num_classes, **base_params))


class ModelOutput(NamedTuple):
    """What :meth:`LongTailModel.forward` returns.

    Attributes:
        logits: Head output (N, C); plain cosines for a cosine head.
        features: Pooled features (N, D) after the final ReLU, the head's input.
    """

    logits: Tensor
    features: Tensor


class LongTailModel(nn.Module):
    """A backbone producing pooled features followed by a classifier head.

    Args:
        backbone: Module mapping images to features (N, D); its ``feature_dim`` attribute gives D
            unless ``feature_dim`` is passed.
        head: Module mapping features (N, D) to logits (N, C), with ``in_features`` and
            ``num_classes`` attributes (the heads of :mod:`longtail.models.heads`).
        feature_dim: D, if the backbone has no ``feature_dim`` attribute.

    Attributes:
        feature_dim: Feature dimension D.
        num_classes: Number of classes C.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, feature_dim: Optional[int] = None) -> None:
        super().__init__()
        if feature_dim is None:
            feature_dim = getattr(backbone, "feature_dim", None)
        if feature_dim is None:
            raise ConfigError(f"backbone {type(backbone).__name__} has no feature_dim; pass feature_dim")
        head_in = getattr(head, "in_features", feature_dim)
        if int(head_in) != int(feature_dim):
            raise ConfigError(
                f"head {type(head).__name__} expects {head_in}-d features but the backbone gives {feature_dim}"
            )
        self.backbone = backbone
        self.head = head
        self.feature_dim = int(feature_dim)
        # Names (relative to self) of BatchNorm layers kept in eval mode by train().
        self._frozen_bn: List[str] = []

    @property
    def num_classes(self) -> int:
        """Number of classes C of the current head."""
        nc = getattr(self.head, "num_classes", None)
        if nc is None:
            nc = getattr(self.head, "out_features")
        return int(nc)

    def forward(self, x: Tensor) -> ModelOutput:
        """Return ``ModelOutput(logits (N, C), features (N, D))`` for images ``x``."""
        features = self.backbone(x)
        return ModelOutput(self.head(features), features)

    def train(self, mode: bool = True) -> "LongTailModel":
        """Set training mode, keeping the BatchNorm layers frozen by :meth:`freeze_backbone` in eval."""
        super().train(mode)
        for name in self._frozen_bn:
            self.get_submodule(name).eval()
        return self

    def freeze_backbone(self, bn: str = "frozen", trainable: Optional[Sequence[str]] = None) -> None:
        """Freeze the backbone (e.g. for classifier re-training: cRT, LWS, GCL stage 2).

        Every backbone parameter gets ``requires_grad = False`` except those of the submodules
        named in ``trainable`` (e.g. ``["layer4"]``). With ``bn="frozen"`` the BatchNorm layers
        of the frozen part are put in eval mode and stay there when :meth:`train` is called, so
        their running statistics do not change either; with ``bn="train"`` they follow the
        model's mode (running statistics keep updating in training mode).

        Args:
            bn: ``"frozen"`` or ``"train"``.
            trainable: Names of backbone submodules (as in ``backbone.named_modules()``) that
                stay trainable; default none.

        Raises:
            ConfigError: For an unknown ``bn`` mode or submodule name.
        """
        if bn not in ("frozen", "train"):
            raise ConfigError(f"freeze_backbone: bn must be 'frozen' or 'train', got {bn!r}")
        if trainable is None:
            trainable = []
        elif isinstance(trainable, str):
            trainable = [trainable]
        trainable = list(trainable)
        modules = dict(self.backbone.named_modules())
        for name in trainable:
            if not isinstance(name, str) or not name or name not in modules:
                valid = [n for n, m in self.backbone.named_children() if any(True for _ in m.parameters())]
                raise ConfigError(
                    f"freeze: backbone {type(self.backbone).__name__} has no submodule {name!r}; "
                    f"valid top-level names: {', '.join(valid)}"
                )

        def is_trainable(qualname: str) -> bool:
            return key_under(qualname, trainable)

        for pname, p in self.backbone.named_parameters():
            p.requires_grad_(is_trainable(pname.rsplit(".", 1)[0] if "." in pname else ""))
        self._frozen_bn = [n for n in self._frozen_bn if not n.startswith("backbone.")]
        if bn == "frozen":
            for mname, m in self.backbone.named_modules():
                if isinstance(m, _BatchNorm) and not is_trainable(mname):
                    self._frozen_bn.append(f"backbone.{mname}")
                    m.eval()
        else:
            # Follow the model's mode again (undoes an earlier bn="frozen").
            for m in self.backbone.modules():
                if isinstance(m, _BatchNorm):
                    m.train(self.training)

    def unfreeze_backbone(self) -> None:
        """Undo :meth:`freeze_backbone`: all backbone parameters trainable, BN following the mode."""
        for p in self.backbone.parameters():
            p.requires_grad_(True)
        self._frozen_bn = [n for n in self._frozen_bn if not n.startswith("backbone.")]
        self.backbone.train(self.training)

    def reset_head(self) -> None:
        """Re-initialise the head (cRT); for an LWS head only the scales are reset to 1."""
        if not hasattr(self.head, "reset_parameters"):
            raise ConfigError(f"head {type(self.head).__name__} has no reset_parameters()")
        self.head.reset_parameters()


def build_model(
    backbone: str,
    head: str,
    num_classes: int,
    *,
    head_params: Optional[Mapping[str, Any]] = None,
    pretrained: Optional[Union[str, "os.PathLike[str]"]] = None,
    freeze: Optional[Sequence[str]] = None,
) -> LongTailModel:
    """Build a :class:`LongTailModel` from registry names.

    Args:
        backbone: A :data:`BACKBONES` name (``resnet32``, ``resnet50``, ``resnext50_32x4d``,
            ``resnet152``), or ``timm/<name>`` for any timm model (no download; ``pretrained`` may
            name a local timm state_dict; see :mod:`longtail.models.timm_backbone`).
        head: A :data:`HEADS` name (``linear``, ``cosine``, ``lws``).
        num_classes: Number of classes C.
        head_params: Keyword arguments of the head (``linear``: ``bias``, ``init``;
            ``cosine``: ``eps``; ``lws``: ``base`` = ``linear``/``cosine`` plus the base's
            arguments). A linear head on ResNet-32 defaults to ``init="kaiming"`` (as in the
            reference CIFAR code), elsewhere to PyTorch's default.
        pretrained: Local state_dict file for the backbone (torchvision layout; ``fc.*`` keys
            ignored), loaded strictly. Nothing is ever downloaded.
        freeze: Freeze every backbone parameter except the named submodules, e.g.
            ``["layer4"]`` (Places-LT: pretrained ResNet-152 with a trainable last stage); the
            BatchNorm layers of the frozen part stay in eval mode. ``[]`` freezes the whole backbone.

    Returns:
        The model, in training mode.

    Raises:
        ConfigError: Unknown names, bad head parameters or freeze names.
        CheckpointError: Missing, unreadable or mismatched ``pretrained`` file.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    if head_params is None:
        head_params = {}
    if not isinstance(head_params, Mapping):
        raise ConfigError(f"head_params must be a mapping, got {type(head_params).__name__}")
    params = dict(head_params)
    HEADS.get(head)  # fail on an unknown head before building a large backbone
    if isinstance(backbone, str) and backbone.startswith("timm/"):  # any timm model (optional dependency)
        from .timm_backbone import build_timm_backbone

        net = build_timm_backbone(backbone[len("timm/"):], pretrained)
    else:
        net = BACKBONES.build(backbone)
        if pretrained is not None:
            load_pretrained(net, pretrained, name=f"backbone '{backbone}'")
    uses_linear = head == "linear" or (head == "lws" and params.get("base", "linear") == "linear")
    default_init = getattr(net, "linear_head_init", None)
    if uses_linear and default_init is not None and "init" not in params:
        params["init"] = default_init
    classifier = HEADS.build(head, int(net.feature_dim), num_classes, **params)
    model = LongTailModel(net, classifier)
    if freeze is not None:
        if isinstance(freeze, str):
            freeze = [freeze]
        if not isinstance(freeze, (list, tuple)):
            raise ConfigError(f"freeze must be a list of submodule names, got {freeze!r}")
        model.freeze_backbone(bn="frozen", trainable=freeze)
    return model
