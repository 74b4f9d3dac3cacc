"""The acoustic-scene LightningModule: log-mel front-end + CNN on the shared ClassificationModule."""

from __future__ import annotations

from typing import Literal

from torch import nn

from l2bn_lit.module import ClassificationModule

from .audio import LogMel, SpecAugment, build_audio_model

__all__ = ["AudioSceneClassifier"]


class AudioSceneClassifier(ClassificationModule):
    """Waveform ``(N, samples)`` at ``sample_rate`` -> ``(N, num_classes)`` logits.

    The front-end settings belong to the architecture: they are saved in the checkpoint, and a
    checkpoint is refused by a model with other settings (or another sample rate).

    Args:
        num_classes, input_shape, sample_rate: linked from the datamodule by the CLI.
        arch: a name from :data:`models.audio.AUDIO_ARCHITECTURES`.
        n_fft, hop_length, n_mels, f_min, f_max, log, top_db: the log-mel front-end (:class:`LogMel`).
        freq_mask, time_mask: SpecAugment mask widths in bins/frames (0: off), training only.
        **kwargs: :class:`~l2bn_lit.module.ClassificationModule` options (norm, optimizer, mixup, ...).
    """

    architecture_keys = (
        *ClassificationModule.architecture_keys, "arch", "n_fft", "hop_length", "n_mels", "f_min", "f_max", "log", "top_db"
    )

    def __init__(
        self,
        num_classes: int,
        input_shape: list[int] | None = None,
        sample_rate: int | None = None,
        arch: str = "dcase_baseline",
        n_fft: int = 2048,
        hop_length: int = 1024,
        n_mels: int = 128,
        f_min: float = 0.0,
        f_max: float | None = None,
        log: Literal["db", "log"] = "db",
        top_db: float | None = 80.0,
        freq_mask: int = 0,
        time_mask: int = 0,
        **kwargs,
    ) -> None:
        if sample_rate is None:
            raise ValueError("AudioSceneClassifier needs the audio sample_rate (linked from an audio datamodule)")
        super().__init__(num_classes=num_classes, input_shape=input_shape, sample_rate=sample_rate, **kwargs)

    def build_network(self) -> nn.Module:
        hp = self.hparams
        frontend = LogMel(hp.sample_rate, hp.n_fft, hp.hop_length, hp.n_mels, hp.f_min, hp.f_max, hp.log, hp.top_db)
        cnn = build_audio_model(hp.arch, hp.num_classes, hp.norm, hp.norm_options)
        return nn.Sequential(frontend, SpecAugment(hp.freq_mask, hp.time_mask), cnn)
