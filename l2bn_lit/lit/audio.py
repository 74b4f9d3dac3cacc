"""The acoustic-scene LightningModule: log-mel front-end + CNN on the shared ClassificationModule."""

from __future__ import annotations

import math
import warnings
from typing import Any, Literal

import torch
from torch import Tensor, nn

from models.audio import LogMelClassifier, build_audio_model
from models.audio_augment import FreqMixStyle, SpecAugment, TimeRoll, WaveRoll
from models.frontend import LogMel

from l2bn_lit.reports.dcase_scores import dcase_report, write_submission

from .base import ClassificationModule, run_folder

__all__ = ["AudioSceneClassifier"]

#: the log-mel front-end's options
FRONTEND_KEYS = ("n_fft", "hop_length", "n_mels", "f_min", "f_max", "log", "top_db", "win_length", "log_floor")


#: inference precisions by name (``l2bn evaluate --precision``, ``predict_precision``)
INFERENCE_PRECISIONS = {"32": torch.float32, "16": torch.float16, "bf16": torch.bfloat16}


class AudioSceneClassifier(ClassificationModule):
    """Waveform ``(N, samples)`` at ``sample_rate`` (or its log-mel ``(N, 1, n_mels, frames)`` from
    the datamodule's feature cache) -> ``(N, num_classes)`` logits.

    The front-end settings belong to the architecture: they are saved in the checkpoint, and a
    checkpoint is refused by a model with other settings (or another sample rate).

    ``test`` also writes and prints the DCASE report (:func:`l2bn_lit.reports.dcase_scores.dcase_report`: macro
    class-wise accuracy, log loss, class-wise and device-wise tables) into the run folder;
    ``predict`` writes the DCASE submission file ``submission.csv`` there.

    Args:
        num_classes, input_shape, sample_rate: linked from the datamodule by the CLI.
        arch: a name from :data:`models.audio.AUDIO_ARCHITECTURES`.
        arch_options: keyword arguments of the architecture's constructor, e.g. CP-Mobile's
            ``{"expansion_rate": 2.0}`` (part of the architecture: checked against checkpoints).
        n_fft, hop_length, n_mels, f_min, f_max, log, top_db, win_length: the log-mel front-end (:class:`LogMel`).
        freq_mask, time_mask: SpecAugment mask widths in bins/frames (0: off), training only.
        log_floor: added to the mel power before ``log: log`` (the DCASE 2024/2025 baselines: 1e-5).
        freq_masks: how many frequency (and time) masks SpecAugment applies (the baselines: one).
        mask_value: ``zero`` fills masked bins with 0.0; ``floor`` with ``log(log_floor)``, which is what
            masking the power spectrogram before the log gives (the baselines).
        time_roll: roll each training log-mel along time by a random number of frames (up to the whole clip).
        roll_seconds: roll each training waveform by a uniform shift of at most this many seconds before
            the front-end (the baselines: 0.1); waveform inputs only (the feature cache's log-mels are fixed).
        mixstyle_p, mixstyle_alpha: Freq-MixStyle probability per batch (0: off) and Beta parameter.
        predict_precision: the precision ``predict`` runs the network on the features at (``16``: as
            the DCASE baselines ship their models, ``model.half()``; see :meth:`set_inference_precision`).
        **kwargs: :class:`~l2bn_lit.lit.base.ClassificationModule` options (norm, optimizer, mixup, ...).
    """

    architecture_keys = (*ClassificationModule.architecture_keys, "arch", "arch_options", *FRONTEND_KEYS)

    def __init__(
        self,
        num_classes: int,
        input_shape: list[int] | None = None,
        sample_rate: int | None = None,
        arch: str = "dcase_baseline",
        arch_options: dict[str, Any] | None = None,
        n_fft: int = 2048,
        hop_length: int = 1024,
        n_mels: int = 128,
        f_min: float = 0.0,
        f_max: float | None = None,
        log: Literal["db", "log"] = "db",
        top_db: float | None = 80.0,
        win_length: int | None = None,
        log_floor: float = 1e-6,
        freq_mask: int = 0,
        time_mask: int = 0,
        freq_masks: int = 2,
        mask_value: Literal["zero", "floor"] = "zero",
        time_roll: bool = False,
        roll_seconds: float | None = None,
        mixstyle_p: float = 0.0,
        mixstyle_alpha: float = 0.3,
        predict_precision: Literal["32", "16", "bf16"] = "16",
        **kwargs,
    ) -> None:
        if sample_rate is None:
            raise ValueError("AudioSceneClassifier needs the audio sample_rate (linked from an audio datamodule)")
        super().__init__(num_classes=num_classes, input_shape=input_shape, sample_rate=sample_rate, **kwargs)
        self._probs: list[Tensor] = []
        self._labels: list[Tensor] = []

    def build_network(self) -> nn.Module:
        hp = self.hparams
        if hp.mask_value == "floor" and hp.log != "log":
            raise ValueError("mask_value floor fills masks with log(log_floor): it needs log: log (not db)")
        frontend = LogMel(hp.sample_rate, hp.n_fft, hp.hop_length, hp.n_mels, hp.f_min, hp.f_max, hp.log, hp.top_db, hp.win_length,
                          hp.log_floor)
        cnn = build_audio_model(hp.arch, hp.num_classes, hp.norm, hp.norm_options, hp.arch_options)
        roll = [TimeRoll()] if hp.time_roll else []
        mask_value = math.log(hp.log_floor) if hp.mask_value == "floor" else 0.0
        augment = nn.Sequential(*roll, SpecAugment(hp.freq_mask, hp.time_mask, hp.freq_masks, mask_value),
                                FreqMixStyle(hp.mixstyle_p, hp.mixstyle_alpha))
        wave = WaveRoll(round(hp.roll_seconds * hp.sample_rate)) if hp.roll_seconds else None
        return LogMelClassifier(frontend, augment, cnn, wave)

    @property
    def frontend(self) -> LogMel:
        """The log-mel front-end ``(N, samples)`` -> ``(N, 1, n_mels, frames)``."""
        return self.network.frontend

    def set_inference_precision(self, precision: str) -> None:
        """Converts the network on the features (:attr:`feature_network`) to ``precision`` (``32``, ``16``
        or ``bf16``), as the DCASE baselines predict with ``model.half()``; the front-end stays float32
        and its features are cast on the way in. For evaluation and prediction, not for training."""
        if precision not in INFERENCE_PRECISIONS:
            raise ValueError(f"precision {precision!r}: choose one of {', '.join(INFERENCE_PRECISIONS)}")
        self.feature_network.to(INFERENCE_PRECISIONS[precision])

    def on_predict_start(self) -> None:
        self.set_inference_precision(self.hparams.predict_precision)

    @property
    def feature_network(self) -> nn.Module:
        """The network on the log-mels ``(N, 1, n_mels, frames)`` -> ``(N, num_classes)`` logits: what
        the DCASE complexity limits count (the augmentation between them is the identity at inference)."""
        return self.network.cnn

    @property
    def frontend_settings(self) -> dict[str, Any]:
        """Everything the front-end's output depends on (the datamodule's feature-cache key)."""
        return {key: self.hparams[key] for key in ("sample_rate", *FRONTEND_KEYS)}

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        logits = super().test_step(batch, batch_idx)
        self._probs.append(logits.softmax(1).cpu())
        self._labels.append(batch[1].cpu())
        return logits

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        probs, labels = torch.cat(self._probs).numpy(), torch.cat(self._labels).numpy()
        self._probs, self._labels = [], []
        folder = run_folder(self.trainer)
        if self.trainer.world_size > 1:
            warnings.warn("the DCASE report needs every test clip in one process: run test with --trainer.devices 1", stacklevel=2)
            return
        test_set = self.trainer.datamodule.test_set
        files = test_set.files[: len(labels)]  # in order; fewer with limit_test_batches
        report = dcase_report(probs, labels, test_set.devices[: len(labels)], self.hparams.class_names or [])
        if not self.trainer.fast_dev_run:
            report.write(folder)
        print(f"\nDCASE report ({len(files)} clips)\n{report}")

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        probs = super().predict_step(batch, batch_idx)
        self._probs.append(probs.cpu())
        return probs

    def on_predict_epoch_end(self) -> None:
        probs = torch.cat(self._probs).numpy()
        self._probs = []
        folder = run_folder(self.trainer)
        if self.trainer.world_size > 1:
            warnings.warn("the submission file needs every clip in one process: run predict with --trainer.devices 1", stacklevel=2)
            return
        folder.mkdir(parents=True, exist_ok=True)
        files = self.trainer.datamodule.predict_set.files[: len(probs)]
        write_submission(folder / "submission.csv", files, probs, self.hparams.class_names)
