"""The audio front-end: a sound file -> a mono waveform at the model's rate and length -> its log-mel.

``read_audio`` and ``fit_length`` are how the datamodules and the DCASE inference package
(:mod:`l2bn_lit.commands.package`) read clips, so both see the same samples; ``LogMel`` runs on the
model's device (torchaudio): waveform ``(N, samples)`` -> log-mel ``(N, 1, n_mels, frames)``. The
paper's setup is 44.1 kHz, ``n_fft=2048``, ``hop_length=1024``, 128 mel bins: 431 frames per 10-s clip.

torch, torchaudio and soundfile only: the inference package ships this file as it is.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import soundfile as sf
import torch
import torchaudio
import torchaudio.functional as AF
from torch import Tensor, nn

__all__ = ["LogMel", "LogMelSettings", "fit_length", "read_audio"]


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


@dataclass(frozen=True)
class LogMelSettings:
    """The log-mel front-end's settings: the one place they are declared (the sample rate comes with
    the data). A config gives them as ``model.init_args.frontend`` (``{n_mels: 256, ...}``); the
    checkpoint keeps them, a model with other settings refuses it, and they key the feature cache.

    Args:
        n_fft, hop_length, win_length: the STFT (``win_length`` ``None``: ``n_fft``; the DCASE 2024/2025
            baselines use 3072 of 4096).
        n_mels, f_min, f_max: the mel filter bank (``f_max`` ``None``: half the sample rate).
        log: ``db`` (10 log10 of power, floored ``top_db`` below the clip's maximum) or ``log``
            (natural log of power + ``log_floor``; the DCASE 2024/2025 baselines: 1e-5).
    """

    n_fft: int = 2048
    hop_length: int = 1024
    n_mels: int = 128
    f_min: float = 0.0
    f_max: float | None = None
    log: Literal["db", "log"] = "db"
    top_db: float | None = 80.0
    win_length: int | None = None
    log_floor: float = 1e-6


class LogMel(nn.Module):
    """Waveform ``(N, samples)`` -> log-mel ``(N, 1, n_mels, frames)`` (``frames = 1 + samples // hop_length``).

    Args:
        sample_rate: the waveform's samples per second.
        settings: :class:`LogMelSettings` (default: its defaults).
        **options: :class:`LogMelSettings` fields given one by one instead (``LogMel(16000, n_mels=40)``).
    """

    def __init__(self, sample_rate: int, settings: LogMelSettings | None = None, **options: Any) -> None:
        super().__init__()
        if settings is not None and options:
            raise ValueError("LogMel takes settings or options, not both")
        self.sample_rate = sample_rate
        self.settings = settings if settings is not None else LogMelSettings(**options)
        cfg = self.settings
        self.log_floor = cfg.log_floor
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate,
            n_fft=cfg.n_fft,
            win_length=cfg.win_length,
            hop_length=cfg.hop_length,
            n_mels=cfg.n_mels,
            f_min=cfg.f_min,
            f_max=cfg.f_max,
            power=2.0,
        )
        self.to_db = torchaudio.transforms.AmplitudeToDB("power", top_db=cfg.top_db) if cfg.log == "db" else None

    @property
    def options(self) -> dict[str, Any]:
        """Everything the output depends on, as plain data: ``LogMel(**options)`` rebuilds this
        front-end (the feature cache's key, the DCASE package's front-end)."""
        return {"sample_rate": self.sample_rate, **asdict(self.settings)}

    def forward(self, wave: Tensor) -> Tensor:
        with torch.autocast(wave.device.type, enabled=False):  # the STFT and the log in float32
            power = self.mel(wave.float()).unsqueeze(1)
            # 4-D input: AmplitudeToDB floors each clip at its own maximum (3-D: the batch's maximum)
            return self.to_db(power) if self.to_db is not None else torch.log(power + self.log_floor)
