"""CP-Mobile-style receptive-field-regularized CNN (Schmid et al., DCASE 2023 Workshop), in the
simplified form of the DCASE 2024/2025 Task 1 baselines, with norm-layer injection.

Input ``(N, in_channels, n_mels, frames)`` log-mels; output ``(N, num_classes)`` logits. With the
baselines' settings (``base_channels=32, channels_multiplier=1.8, expansion_rate=2.1, blocks=(3, 2, 1)``)
and their front-end (32 kHz, 256 mel bins, hop 500: ``(1, 256, 65)`` per 1-s clip) it has 61,148
parameters and about 29.4 M MACs (tests/test_cp_mobile.py counts both).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor, nn

NormLayer = Callable[[int], nn.Module]

__all__ = ["CPMobile", "InvertedResidual", "make_divisible"]


def make_divisible(value: float, divisor: int = 8) -> int:
    """``value`` rounded to a multiple of ``divisor``, never below 90% of it (MobileNet's rule)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def _conv_norm_act(
    in_channels: int,
    out_channels: int,
    kernel: int,
    stride: int | tuple[int, int],
    groups: int,
    norm_layer: NormLayer,
    act: bool,
) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel, stride, padding=kernel // 2, groups=groups, bias=False),
        norm_layer(out_channels),
    ]
    if act:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """Factorized inverted bottleneck: 1x1 expand - 3x3 depthwise (``stride``) - 1x1 project, each
    with a norm, ReLU after the first two; identity shortcut (average-pooled when strided) when the
    channel count is kept; ReLU after the sum. ``(N, C_in, F, T) -> (N, C_out, F/s_f, T/s_t)``."""

    def __init__(
        self, in_channels: int, out_channels: int, expansion_rate: float, stride: tuple[int, int], norm_layer: NormLayer
    ) -> None:
        super().__init__()
        hidden = make_divisible(in_channels * expansion_rate)
        self.block = nn.Sequential(
            _conv_norm_act(in_channels, hidden, 1, 1, 1, norm_layer, act=True),
            _conv_norm_act(hidden, hidden, 3, stride, hidden, norm_layer, act=True),
            _conv_norm_act(hidden, out_channels, 1, 1, 1, norm_layer, act=False),
        )
        self.shortcut: nn.Module | None = None
        if in_channels == out_channels:
            self.shortcut = nn.Identity() if tuple(stride) == (1, 1) else nn.AvgPool2d(3, stride, padding=1)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(x)
        return self.relu(out if self.shortcut is None else out + self.shortcut(x))


class CPMobile(nn.Module):
    """Stem (two stride-2 3x3 conv-norm-ReLU, ``base/4`` then ``base`` channels), stages of
    :class:`InvertedResidual` blocks, then a 1x1 conv to ``num_classes``, a norm and global average
    pooling (the classifier is convolutional, as in the baselines).

    Args:
        blocks: blocks per stage; stage ``s`` has ``make_divisible(base * multiplier**s)`` channels.
        strides: ``{block number (1-based, counted over all stages): (freq, time) stride}``; the
            baselines' ``{2: (1, 1), 3: (1, 2), 4: (2, 1)}`` by default.
    """

    def __init__(
        self,
        num_classes: int,
        norm_layer: NormLayer,
        in_channels: int = 1,
        base_channels: int = 32,
        channels_multiplier: float = 1.8,
        expansion_rate: float = 2.1,
        blocks: Sequence[int] = (3, 2, 1),
        strides: dict[int, tuple[int, int]] | None = None,
    ) -> None:
        super().__init__()
        strides = {2: (1, 1), 3: (1, 2), 4: (2, 1)} if strides is None else strides
        base = make_divisible(base_channels)
        widths = [base] + [make_divisible(base * channels_multiplier**stage) for stage in range(len(blocks))]
        self.stem = nn.Sequential(
            _conv_norm_act(in_channels, widths[0] // 4, 3, 2, 1, norm_layer, act=True),
            _conv_norm_act(widths[0] // 4, widths[0], 3, 2, 1, norm_layer, act=True),
        )
        stages, number = [], 0
        for stage, count in enumerate(blocks):
            layers = []
            for i in range(count):
                number += 1
                in_ch = widths[stage] if i == 0 else widths[stage + 1]
                layers.append(
                    InvertedResidual(
                        in_ch, widths[stage + 1], expansion_rate, tuple(strides.get(number, (1, 1))), norm_layer
                    )
                )
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.classifier = nn.Sequential(
            nn.Conv2d(widths[-1], num_classes, 1, bias=False),
            norm_layer(num_classes),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.stages(self.stem(x)))
