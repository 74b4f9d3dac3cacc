"""A small CNN for tiny images (the embedded scikit-learn digits, 8x8), with norm-layer injection.

Input: ``(N, in_channels, H, W)`` with H, W >= 4; output: ``(N, num_classes)`` logits.
"""

from __future__ import annotations

from torch import Tensor, nn

from .cifar_resnet import NormLayer

__all__ = ["SmallCNN"]


class SmallCNN(nn.Module):
    """Three conv-norm-relu stages (32, 64, 128 channels; one 2x downsampling), global pooling."""

    def __init__(self, num_classes: int, norm_layer: NormLayer, in_channels: int = 1, width: int = 32) -> None:
        super().__init__()

        def stage(cin: int, cout: int, stride: int) -> list[nn.Module]:
            return [
                nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                norm_layer(cout),
                nn.ReLU(inplace=True),
            ]

        self.body = nn.Sequential(
            *stage(in_channels, width, 1), *stage(width, 2 * width, 2), *stage(2 * width, 4 * width, 1)
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate features, ``(N, 4 * width)``."""
        return self.pool(self.body(x)).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x))
