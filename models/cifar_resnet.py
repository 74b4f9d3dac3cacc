"""CIFAR ResNets (He et al. 2016, section 4.2) and PreAct-ResNet-18, with norm-layer injection.

Every constructor takes ``norm_layer``: a callable ``num_features -> nn.Module`` such as
``l2bn_lit.get_norm_layer("l2bn")``, in the style of torchvision's ``models/resnet.py``.
Input: ``(N, in_channels, 32, 32)``; output: ``(N, num_classes)`` logits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NormLayer = Callable[[int], nn.Module]

__all__ = ["CifarResNet", "PreActResNet18", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110"]


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


Shortcut = Literal["A", "B"]


class PaddedIdentity(nn.Module):
    """Option-A shortcut (He et al. 2016, section 4.2): subsample by ``stride`` and append zero
    channels, no parameters. ``(N, C, H, W) -> (N, C + extra_channels, H/stride, W/stride)``."""

    def __init__(self, stride: int, extra_channels: int) -> None:
        super().__init__()
        self.stride, self.extra_channels = stride, extra_channels

    def forward(self, x: Tensor) -> Tensor:
        return F.pad(x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, 0, self.extra_channels))


class BasicBlock(nn.Module):
    """conv-norm-relu-conv-norm + shortcut, then relu. Where the shape changes the shortcut is a
    1x1 conv + norm (``shortcut="B"``, projection) or a subsampled, zero-padded identity (``"A"``)."""

    def __init__(
        self, in_planes: int, planes: int, stride: int, norm_layer: NormLayer, shortcut: Shortcut = "B"
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn1 = norm_layer(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = (
                PaddedIdentity(stride, planes - in_planes)
                if shortcut == "A"
                else nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), norm_layer(planes))
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs: 16-32-64 channels, three stages of ``n`` basic blocks.

    ``shortcut``: ``"B"`` (projection where the shape changes; this project's default, as in
    torchvision's ResNets) or ``"A"`` (zero-padded identity, He et al.'s choice for CIFAR: no
    extra parameters and no norm layer on the shortcut)."""

    def __init__(
        self, depth: int, num_classes: int, norm_layer: NormLayer, in_channels: int = 3, shortcut: Shortcut = "B"
    ) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110), got {depth}")
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' (zero-padded identity) or 'B' (projection), got {shortcut!r}")
        blocks = (depth - 2) // 6
        self.stem = nn.Sequential(_conv3x3(in_channels, 16), norm_layer(16), nn.ReLU(inplace=True))
        layers, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(blocks):
                layers.append(BasicBlock(in_planes, planes, stride if i == 0 else 1, norm_layer, shortcut))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        _init_weights(self)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate features, ``(N, 64)``."""
        return self.pool(self.layers(self.stem(x))).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x))


class PreActBlock(nn.Module):
    """Pre-activation basic block (He et al. 2016b): norm-relu-conv twice, identity-style shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int, norm_layer: NormLayer) -> None:
        super().__init__()
        self.bn1 = norm_layer(in_planes)
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn2 = norm_layer(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.relu = nn.ReLU(inplace=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(self.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet18(nn.Module):
    """PreAct-ResNet-18 for 32x32 inputs (64-128-256-512 channels, 2 blocks per stage)."""

    def __init__(self, num_classes: int, norm_layer: NormLayer, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = _conv3x3(in_channels, 64)
        layers, in_planes = [], 64
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            for i in range(2):
                layers.append(PreActBlock(in_planes, planes, stride if i == 0 else 1, norm_layer))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.head_norm = norm_layer(512)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)
        _init_weights(self)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate features, ``(N, 512)``."""
        out = torch.relu(self.head_norm(self.layers(self.stem(x))))
        return self.pool(out).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x))


def _init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


def resnet20(num_classes: int, norm_layer: NormLayer, in_channels: int = 3, shortcut: Shortcut = "B") -> CifarResNet:
    return CifarResNet(20, num_classes, norm_layer, in_channels, shortcut)


def resnet32(num_classes: int, norm_layer: NormLayer, in_channels: int = 3, shortcut: Shortcut = "B") -> CifarResNet:
    return CifarResNet(32, num_classes, norm_layer, in_channels, shortcut)


def resnet44(num_classes: int, norm_layer: NormLayer, in_channels: int = 3, shortcut: Shortcut = "B") -> CifarResNet:
    return CifarResNet(44, num_classes, norm_layer, in_channels, shortcut)


def resnet56(num_classes: int, norm_layer: NormLayer, in_channels: int = 3, shortcut: Shortcut = "B") -> CifarResNet:
    return CifarResNet(56, num_classes, norm_layer, in_channels, shortcut)


def resnet110(num_classes: int, norm_layer: NormLayer, in_channels: int = 3, shortcut: Shortcut = "B") -> CifarResNet:
    return CifarResNet(110, num_classes, norm_layer, in_channels, shortcut)
