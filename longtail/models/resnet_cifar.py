"""The CIFAR ResNet-32 of He et al. (2016), as used by the LDAM, KPS and GCL code.

Layout: a 3x3 convolution with 16 channels, then three stages of 5 basic blocks with 16, 32 and
64 channels (the first block of stages 2 and 3 has stride 2), then global average pooling.
Shortcuts that change the shape use *option A*: spatial subsampling ``x[:, :, ::2, ::2]`` and
zero-padding of the new channels, so they have no parameters. Convolutions have no bias; their
weights are Kaiming-normal (fan-in, ReLU gain: std ``sqrt(2 / (in_channels * k * k))``).

The backbone returns the pooled 64-d feature (after the final ReLU). With a 10-way linear head
the whole network has 464,154 parameters.
"""
from __future__ import annotations

from typing import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["BasicBlock", "ResNetCifar", "resnet32"]


class _ShortcutA(nn.Module):
    """Parameter-free option-A shortcut: subsample by ``stride`` and zero-pad the channels.

    The new channels are split evenly before and after the input channels (for a doubling of
    the width this pads ``out_planes // 4`` channels on each side, as the reference code does).
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        if out_planes < in_planes:
            raise ValueError(f"option-A shortcut cannot reduce channels ({in_planes} -> {out_planes})")
        self.stride = stride
        self.pad_before = (out_planes - in_planes) // 2
        self.pad_after = out_planes - in_planes - self.pad_before

    def forward(self, x: Tensor) -> Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.pad_before or self.pad_after:
            x = F.pad(x, (0, 0, 0, 0, self.pad_before, self.pad_after))
        return x

    def extra_repr(self) -> str:
        return f"stride={self.stride}, pad=({self.pad_before}, {self.pad_after})"


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection: ``relu(bn2(conv2(relu(bn1(conv1 x)))) + s(x))``.

    Args:
        in_planes: Input channels.
        planes: Output channels.
        stride: Stride of the first convolution (and of the shortcut).
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride != 1 or in_planes != planes:
            self.shortcut: nn.Module = _ShortcutA(in_planes, planes, stride)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        # In place where autograd allows it (BatchNorm's backward needs its input, not its output):
        # the same numbers with fewer full-size temporaries, which the CPU path feels.
        out = F.relu_(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu_(out.add_(self.shortcut(x)))


class ResNetCifar(nn.Module):
    """CIFAR-style ResNet backbone (no classifier); ``forward(x) -> (N, widths[-1])`` features.

    Args:
        num_blocks: Basic blocks per stage.
        widths: Channels per stage (the stem uses ``widths[0]``).
        in_channels: Image channels.

    Attributes:
        feature_dim: Dimension of the pooled feature (``widths[-1]``).
        linear_head_init: Initialisation a linear head on this backbone gets by default
            (``"kaiming"``, as in the reference code, which Kaiming-initialises its linear layer).
    """

    linear_head_init = "kaiming"

    def __init__(
        self,
        num_blocks: Sequence[int] = (5, 5, 5),
        widths: Sequence[int] = (16, 32, 64),
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if len(num_blocks) != len(widths) or not widths:
            raise ValueError("num_blocks and widths must have the same, non-zero length")
        self.conv1 = nn.Conv2d(in_channels, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        in_planes = widths[0]
        for i, (blocks, planes) in enumerate(zip(num_blocks, widths)):
            stride = 1 if i == 0 else 2
            layers = []
            for b in range(blocks):
                layers.append(BasicBlock(in_planes, planes, stride if b == 0 else 1))
                in_planes = planes
            self.add_module(f"layer{i + 1}", nn.Sequential(*layers))
        self.num_stages = len(widths)
        self.feature_dim = int(widths[-1])
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-normal conv weights (fan-in, ReLU gain); BatchNorm weight 1, bias 0."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()
                m.reset_running_stats()

    def forward(self, x: Tensor) -> Tensor:
        """Return the globally average-pooled features (N, feature_dim), non-negative."""
        out = F.relu_(self.bn1(self.conv1(x)))
        for i in range(self.num_stages):
            out = getattr(self, f"layer{i + 1}")(out)
        return F.adaptive_avg_pool2d(out, 1).flatten(1)


def resnet32() -> ResNetCifar:
    """ResNet-32 for 32x32 images: three stages of 5 basic blocks, 16/32/64 channels, D = 64."""
    return ResNetCifar(num_blocks=(5, 5, 5), widths=(16, 32, 64))
