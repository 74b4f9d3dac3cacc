"""Acoustic scene classification networks: log-mel CNNs with the norm switch, by name, and the
classifier that puts the front-end (:mod:`models.frontend`) and the augmentations
(:mod:`models.audio_augment`) before one of them."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from torch import Tensor, nn

from l2bn_lit.nn import get_norm_layer

from .cifar_resnet import NormLayer
from .cp_mobile import CPMobile
from .frontend import LogMel
from .heads import classifier_of
from .small_cnn import SmallCNN

__all__ = [
    "AUDIO_ARCHITECTURES",
    "BaselineCNN",
    "ChannelAttention",
    "FCNN",
    "FrequencySplitResNet",
    "FrequencySubsampledFCNN",
    "LogMelClassifier",
    "build_audio_model",
]


class LogMelClassifier(nn.Module):
    """Front-end, spectrogram augmentation and CNN: waveforms ``(N, samples)``, or log-mels
    ``(N, 1, n_mels, frames)`` that this ``frontend`` computed earlier (the feature cache) ->
    ``(N, num_classes)`` logits. ``augment`` (time roll, SpecAugment, Freq-MixStyle) acts on the
    log-mel, so both inputs are treated alike."""

    def __init__(
        self, frontend: LogMel, augment: nn.Module, cnn: nn.Module, wave_augment: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.frontend, self.augment, self.cnn = frontend, augment, cnn
        self.wave_augment = wave_augment if wave_augment is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 2:
            x = self.frontend(self.wave_augment(x))
        elif x.dim() != 4 or x.shape[1] != 1 or x.shape[2] != self.frontend.mel.n_mels:
            raise ValueError(
                f"expected waveforms (N, samples) or log-mels (N, 1, {self.frontend.mel.n_mels}, frames), "
                f"got {tuple(x.shape)}"
            )
        # the features enter the CNN at its own precision: float16 when it ships as the baselines do (model.half())
        return self.cnn(self.augment(x).to(next(self.cnn.parameters()).dtype))

    def get_classifier(self) -> nn.Module:
        return classifier_of(self.cnn)


class BaselineCNN(nn.Module):
    """DCASE 2020 baseline-style CNN: two conv(7x7)-norm-ReLU-pool-dropout blocks (32, 64
    channels), global average pooling, a 100-unit hidden layer. Input ``(N, 1, F, T)``."""

    def __init__(self, num_classes: int, norm_layer: NormLayer, in_channels: int = 1, dropout: float = 0.3) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 32, 7, padding=3, bias=False),
            norm_layer(32),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(5, ceil_mode=True),
            nn.Dropout(dropout),
            nn.Conv2d(32, 64, 7, padding=3, bias=False),
            norm_layer(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(4, ceil_mode=True),
            nn.Dropout(dropout),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(
            nn.Linear(64, 100), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(100, num_classes)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.pool(self.body(x)).flatten(1))

    def get_classifier(self) -> nn.Module:
        return self.head[-1]


class _PreActConv(nn.Sequential):
    """norm -> [ReLU] -> conv, the pre-activation layer of McDonnell & Gao's ASC ResNet."""

    def __init__(
        self, norm: nn.Module, in_ch: int, out_ch: int, kernel: int, stride: tuple[int, int], relu: bool
    ) -> None:
        layers = [norm, nn.ReLU()] if relu else [norm]
        super().__init__(*layers, nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=False))


class _FrequencyPath(nn.Module):
    """One frequency band's residual path: a strided stem and 4 stages x 2 pre-activation blocks,
    width doubling per stage; downsampling blocks pool the shortcut (3x3 average, time stride 2)
    and zero-pad its channels."""

    def __init__(self, in_channels: int, width: int, norm_layer: NormLayer, plain_norm: NormLayer) -> None:
        super().__init__()
        self.stem = _PreActConv(norm_layer(in_channels), in_channels, width, 3, (1, 2), relu=False)
        self.blocks = nn.ModuleList()
        channels = width
        for stage in range(4):
            for block in range(2):
                downsample = stage > 0 and block == 0
                out = channels * 2 if downsample else channels
                stride = (1, 2) if downsample else (1, 1)
                self.blocks.append(
                    nn.Sequential(
                        _PreActConv(plain_norm(channels), channels, out, 3, stride, relu=True),
                        _PreActConv(plain_norm(out), out, out, 3, (1, 1), relu=True),
                    )
                )
                channels = out
        self.out_channels = channels
        self.pool = nn.AvgPool2d(3, stride=(1, 2), padding=1, count_include_pad=False)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for block in self.blocks:
            out = block(x)
            if out.shape[1] != x.shape[1]:  # downsampling block: pooled, zero-padded shortcut
                x = self.pool(x)
                x = torch.cat([x, torch.zeros_like(x)], dim=1)
            x = out + x
        return x


class FrequencySplitResNet(nn.Module):
    """Two-path frequency-split ResNet (McDonnell & Gao, DCASE 2019-2020; the ResNet of Hu et al.,
    ICASSP 2021): the low and high halves of the mel bins go through separate residual paths,
    concatenated along frequency, then 1x1 convolutions to the classes and global average pooling.

    Input ``(N, in_channels, n_mels, frames)`` with an even ``n_mels``; output ``(N, num_classes)``.
    ``norm_layer`` builds the learnable input norms, ``plain_norm`` the non-affine ones.
    """

    def __init__(
        self, num_classes: int, norm_layer: NormLayer, plain_norm: NormLayer, in_channels: int = 1, width: int = 24
    ) -> None:
        super().__init__()
        self.low = _FrequencyPath(in_channels, width, norm_layer, plain_norm)
        self.high = _FrequencyPath(in_channels, width, norm_layer, plain_norm)
        channels = self.low.out_channels
        self.head = nn.Sequential(
            _PreActConv(plain_norm(channels), channels, 2 * channels, 1, (1, 1), relu=True),
            _PreActConv(plain_norm(2 * channels), 2 * channels, num_classes, 1, (1, 1), relu=False),
            plain_norm(num_classes),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )

    def forward(self, x: Tensor) -> Tensor:
        half = x.shape[2] // 2
        return self.head(torch.cat([self.low(x[:, :, :half]), self.high(x[:, :, half:])], dim=2))

    def get_classifier(self) -> nn.Module:
        """The 1x1 convolution to the classes."""
        return self.head[1]


def _conv(
    norm_layer: NormLayer, cin: int, cout: int, kernel: int = 3, stride: int | tuple[int, int] = 1
) -> list[nn.Module]:
    """conv ('same' padding) -> norm -> ReLU."""
    return [
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
        norm_layer(cout),
        nn.ReLU(inplace=True),
    ]


class ChannelAttention(nn.Module):
    """CBAM-style channel attention: a shared two-layer MLP on the spatially averaged and maximum
    features, summed, through a sigmoid, scales each channel. ``(N, C, F, T)`` -> same shape."""

    def __init__(self, channels: int, ratio: int = 2) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(channels, channels // ratio), nn.ReLU(inplace=True), nn.Linear(channels // ratio, channels)
        )

    def forward(self, x: Tensor) -> Tensor:
        weights = torch.sigmoid(self.mlp(x.mean((2, 3))) + self.mlp(x.amax((2, 3))))
        return x * weights[:, :, None, None]


class _AttentionHead(nn.Sequential):
    """1x1 conv to the classes -> plain norm -> ReLU -> plain norm -> channel attention -> global average."""

    def __init__(self, channels: int, num_classes: int, plain_norm: NormLayer) -> None:
        super().__init__(
            *_conv(plain_norm, channels, num_classes, kernel=1),
            plain_norm(num_classes),
            ChannelAttention(num_classes, 2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )


class _AttentionHeadNetwork(nn.Sequential):
    """A feature stack ending in :class:`_AttentionHead`."""

    def get_classifier(self) -> nn.Module:
        """The attention head (1x1 convolution to the classes onwards)."""
        return self[-1]


class FCNN(_AttentionHeadNetwork):
    """Fully convolutional network with channel attention (Hu et al., ICASSP 2021): an input norm,
    three VGG-like stages (24, 48, 96 channels; 2, 2, 4 convolutions; the last with dropout 0.3),
    2x2 max-pooling after each, then the attention head. Input ``(N, in_channels, F, T)``."""

    def __init__(
        self, num_classes: int, norm_layer: NormLayer, plain_norm: NormLayer, in_channels: int = 1, widths=(24, 48, 96)
    ) -> None:
        w1, w2, w3 = widths
        stage3: list[nn.Module] = []
        for i in range(4):
            stage3 += _conv(norm_layer, w2 if i == 0 else w3, w3) + ([nn.Dropout(0.3)] if i < 3 else [])
        super().__init__(
            norm_layer(in_channels),
            *_conv(norm_layer, in_channels, w1, kernel=5, stride=2),
            *_conv(norm_layer, w1, w1),
            nn.MaxPool2d(2),
            *_conv(norm_layer, w1, w2),
            *_conv(norm_layer, w2, w2),
            nn.MaxPool2d(2),
            *stage3,
            nn.MaxPool2d(2),
            _AttentionHead(w3, num_classes, plain_norm),
        )


class FrequencySubsampledFCNN(_AttentionHeadNetwork):
    """fsFCNN (Hu et al., ICASSP 2021): the FCNN with four stages (14, 24, 48, 96 channels),
    3x3 max-pooling with stride 2 in the first two stages and stride 2 in time only (not in
    frequency) in the third, dropout 0.5 in the fourth, and the attention head."""

    def __init__(
        self,
        num_classes: int,
        norm_layer: NormLayer,
        plain_norm: NormLayer,
        in_channels: int = 1,
        widths=(14, 24, 48, 96),
    ) -> None:
        w1, w2, w3, w4 = widths
        super().__init__(
            norm_layer(in_channels),
            *_conv(norm_layer, in_channels, w1, kernel=5, stride=(1, 2)),
            *_conv(norm_layer, w1, w1),
            nn.MaxPool2d(3, stride=2, padding=1),
            *_conv(norm_layer, w1, w2),
            *_conv(norm_layer, w2, w2),
            nn.MaxPool2d(3, stride=2, padding=1),
            *_conv(norm_layer, w2, w3),
            *_conv(norm_layer, w3, w3),
            nn.MaxPool2d(3, stride=(1, 2), padding=1),
            *_conv(norm_layer, w3, w3),
            *_conv(norm_layer, w3, w3),
            nn.MaxPool2d(3, stride=(1, 2), padding=1),
            *_conv(norm_layer, w3, w4),
            nn.Dropout(0.5),
            *_conv(norm_layer, w4, w4),
            nn.Dropout(0.5),
            _AttentionHead(w4, num_classes, plain_norm),
        )


def _small_cnn(num_classes: int, norm_layer: NormLayer, in_channels: int = 1) -> SmallCNN:
    """A low-complexity CNN (about 24k parameters) for the 1-second tasks."""
    return SmallCNN(num_classes, norm_layer, in_channels, width=16)


AUDIO_ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "dcase_baseline": BaselineCNN,
    "cp_mobile": CPMobile,
    "small_cnn": _small_cnn,
    "fs_resnet": FrequencySplitResNet,
    "fcnn": FCNN,
    "fsfcnn": FrequencySubsampledFCNN,
}
#: architectures whose inner norms (Keras center=False, scale=False) have no affine parameters
_WITH_PLAIN_NORMS = ("fs_resnet", "fcnn", "fsfcnn")


def build_audio_model(
    arch: str, num_classes: int, norm: str = "l2bn", norm_options: dict | None = None, arch_options: dict | None = None
) -> nn.Module:
    """A log-mel CNN by name, taking ``(N, 1, n_mels, frames)``; ``arch_options`` are keyword arguments
    of its constructor (an unknown one is an error naming the constructor's own)."""
    if arch not in AUDIO_ARCHITECTURES:
        raise ValueError(f"unknown audio arch {arch!r}; choose one of {', '.join(AUDIO_ARCHITECTURES)}")
    options, extra = dict(norm_options or {}), dict(arch_options or {})
    constructor = AUDIO_ARCHITECTURES[arch]
    accepted = [
        name
        for name in inspect.signature(constructor).parameters
        if name not in ("num_classes", "norm_layer", "plain_norm")
    ]
    unknown = sorted(set(extra) - set(accepted))
    if unknown:
        raise ValueError(f"arch_options {unknown} are not options of {arch!r}; it takes {', '.join(accepted)}")
    norm_layer = get_norm_layer(norm, 2, **options)
    if arch in _WITH_PLAIN_NORMS:
        plain = norm_layer if norm == "none" else get_norm_layer(norm, 2, **{**options, "affine": False})
        return constructor(num_classes, norm_layer, plain, **extra)
    return constructor(num_classes=num_classes, norm_layer=norm_layer, **extra)
