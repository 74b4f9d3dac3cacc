"""Acoustic scene classification: a log-mel front-end and log-mel CNNs with the norm switch.

The front-end runs on the model's device (torchaudio): waveform ``(N, samples)`` ->
log-mel ``(N, 1, n_mels, frames)``. The paper's setup is 44.1 kHz, ``n_fft=2048``,
``hop_length=1024``, 128 mel bins: 431 frames per 10-s clip.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torchaudio
from torch import Tensor, nn

from l2bn_lit import get_norm_layer

from .cifar_resnet import NormLayer
from .small_cnn import SmallCNN

__all__ = ["AUDIO_ARCHITECTURES", "BaselineCNN", "LogMel", "SpecAugment", "build_audio_model"]


class LogMel(nn.Module):
    """Waveform ``(N, samples)`` -> log-mel ``(N, 1, n_mels, frames)`` (``frames = 1 + samples // hop_length``).

    Args:
        log: ``db`` (10 log10 of power, floored ``top_db`` below the clip's maximum) or ``log``
            (natural log of power + 1e-6).
    """

    def __init__(
        self,
        sample_rate: int,
        n_fft: int = 2048,
        hop_length: int = 1024,
        n_mels: int = 128,
        f_min: float = 0.0,
        f_max: float | None = None,
        log: Literal["db", "log"] = "db",
        top_db: float | None = 80.0,
    ) -> None:
        super().__init__()
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels, f_min=f_min, f_max=f_max, power=2.0
        )
        self.to_db = torchaudio.transforms.AmplitudeToDB("power", top_db=top_db) if log == "db" else None

    def forward(self, wave: Tensor) -> Tensor:
        with torch.autocast(wave.device.type, enabled=False):  # the STFT and the log in float32
            power = self.mel(wave.float())
            logmel = self.to_db(power) if self.to_db is not None else torch.log(power + 1e-6)
        return logmel.unsqueeze(1)


class SpecAugment(nn.Module):
    """torchaudio frequency and time masking on ``(N, 1, n_mels, frames)``, in training only."""

    def __init__(self, freq_mask: int = 0, time_mask: int = 0, masks: int = 2) -> None:
        super().__init__()
        steps: list[nn.Module] = []
        for _ in range(masks if freq_mask else 0):
            steps.append(torchaudio.transforms.FrequencyMasking(freq_mask, iid_masks=True))
        for _ in range(masks if time_mask else 0):
            steps.append(torchaudio.transforms.TimeMasking(time_mask, iid_masks=True))
        self.steps = nn.Sequential(*steps)

    def forward(self, x: Tensor) -> Tensor:
        return self.steps(x) if self.training else x


class BaselineCNN(nn.Module):
    """DCASE 2020 baseline-style CNN: two conv(7x7)-norm-ReLU-pool-dropout blocks (32, 64
    channels), global average pooling, a 100-unit hidden layer. Input ``(N, 1, F, T)``."""

    def __init__(self, num_classes: int, norm_layer: NormLayer, in_channels: int = 1, dropout: float = 0.3) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 32, 7, padding=3, bias=False), norm_layer(32), nn.ReLU(inplace=True),
            nn.MaxPool2d(5, ceil_mode=True), nn.Dropout(dropout),
            nn.Conv2d(32, 64, 7, padding=3, bias=False), norm_layer(64), nn.ReLU(inplace=True),
            nn.MaxPool2d(4, ceil_mode=True), nn.Dropout(dropout),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(nn.Linear(64, 100), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(100, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.pool(self.body(x)).flatten(1))


def _small_cnn(num_classes: int, norm_layer: NormLayer, in_channels: int = 1) -> SmallCNN:
    """A low-complexity CNN (about 24k parameters) for the 1-second tasks."""
    return SmallCNN(num_classes, norm_layer, in_channels, width=16)


AUDIO_ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {"dcase_baseline": BaselineCNN, "small_cnn": _small_cnn}


def build_audio_model(arch: str, num_classes: int, norm: str = "l2bn", norm_options: dict | None = None) -> nn.Module:
    """A log-mel CNN by name, taking ``(N, 1, n_mels, frames)``."""
    if arch not in AUDIO_ARCHITECTURES:
        raise ValueError(f"unknown audio arch {arch!r}; choose one of {', '.join(AUDIO_ARCHITECTURES)}")
    return AUDIO_ARCHITECTURES[arch](num_classes=num_classes, norm_layer=get_norm_layer(norm, 2, **(norm_options or {})))
