"""The audio front-end: a sound file -> a mono waveform at the model's rate and length -> its log-mel.

``read_audio`` and ``fit_length`` are how the datamodules and the DCASE inference package
(:mod:`l2bn_lit.submission`) read clips, so both see the same samples; ``LogMel`` runs on the
model's device (torchaudio): waveform ``(N, samples)`` -> log-mel ``(N, 1, n_mels, frames)``. The
paper's setup is 44.1 kHz, ``n_fft=2048``, ``hop_length=1024``, 128 mel bins: 431 frames per 10-s clip.

torch, torchaudio and soundfile only: the inference package ships this file as it is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import soundfile as sf
import torch
import torchaudio
import torchaudio.functional as AF
from torch import Tensor, nn

__all__ = ["LogMel", "fit_length", "read_audio"]


def read_audio(path: str | Path, sample_rate: int) -> Tensor:
    """The file's samples ``(samples,)`` as float32 mono at ``sample_rate``: channels averaged,
    other rates resampled with torchaudio's band-limited sinc (its defaults)."""
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as error:
        raise RuntimeError(f"cannot read audio file {path}: {error}") from error
    wave = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1)))
    return AF.resample(wave, rate, sample_rate) if rate != sample_rate else wave


def fit_length(wave: Tensor, samples: int, start: int = 0) -> Tensor:
    """``wave`` ``(length,)`` zero-padded at the end, or cropped from ``start``, to ``(samples,)``."""
    if len(wave) < samples:
        return torch.nn.functional.pad(wave, (0, samples - len(wave)))
    return wave[start : start + samples]


class LogMel(nn.Module):
    """Waveform ``(N, samples)`` -> log-mel ``(N, 1, n_mels, frames)`` (``frames = 1 + samples // hop_length``).

    Args:
        log: ``db`` (10 log10 of power, floored ``top_db`` below the clip's maximum) or ``log``
            (natural log of power + ``log_floor``).
        log_floor: added to the power before ``log`` (the DCASE 2024/2025 baselines: 1e-5).
        win_length: the STFT window (``None``: ``n_fft``; the DCASE 2024/2025 baselines use 3072 of 4096).
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
        win_length: int | None = None,
        log_floor: float = 1e-6,
    ) -> None:
        super().__init__()
        self.log_floor = log_floor
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate, n_fft=n_fft, win_length=win_length, hop_length=hop_length, n_mels=n_mels,
            f_min=f_min, f_max=f_max, power=2.0,
        )
        self.to_db = torchaudio.transforms.AmplitudeToDB("power", top_db=top_db) if log == "db" else None

    def forward(self, wave: Tensor) -> Tensor:
        with torch.autocast(wave.device.type, enabled=False):  # the STFT and the log in float32
            power = self.mel(wave.float()).unsqueeze(1)
            # 4-D input: AmplitudeToDB floors each clip at its own maximum (3-D: the batch's maximum)
            return self.to_db(power) if self.to_db is not None else torch.log(power + self.log_floor)
