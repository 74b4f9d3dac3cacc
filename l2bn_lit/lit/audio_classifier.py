"""The acoustic-scene LightningModule: log-mel front-end + CNN on the shared ClassificationModule."""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, fields
from typing import Any, Literal

import torch
from torch import Tensor, nn

from l2bn_lit.reports.dcase_scores import dcase_report, write_submission
from models.audio import LogMelClassifier, build_audio_model
from models.audio_augment import FreqMixStyle, SpecAugment, TimeRoll, WaveRoll
from models.frontend import LogMel, LogMelSettings

from .classification_module import ClassificationModule, run_folder

__all__ = ["AudioSceneClassifier"]

#: the front-end settings checkpoints written before ``frontend`` held as hyperparameters of their own
_FLAT_FRONTEND_KEYS = tuple(field.name for field in fields(LogMelSettings))


#: inference precisions by name (``l2bn evaluate --precision``, ``predict_precision``)
INFERENCE_PRECISIONS = {"32": torch.float32, "16": torch.float16, "bf16": torch.bfloat16}


class AudioSceneClassifier(ClassificationModule):
    """Waveform ``(N, samples)`` at ``sample_rate`` (or its log-mel ``(N, 1, n_mels, frames)`` from
    the datamodule's feature cache) -> ``(N, num_classes)`` logits.

    The front-end settings (:class:`models.frontend.LogMelSettings`) belong to the architecture: they
    are saved in the checkpoint, and a checkpoint is refused by a model with other settings (or
    another sample rate). The walk of ``norm``: ``model.init_args.norm`` -> here ->
    :func:`models.audio.build_audio_model` -> the architecture's blocks.

    ``test`` also writes and prints the DCASE report (:func:`l2bn_lit.reports.dcase_scores.dcase_report`: macro
    class-wise accuracy, log loss, class-wise and device-wise tables) into the run folder;
    ``predict`` writes the DCASE submission file ``submission.csv`` there.

    Args:
        num_classes, input_shape, sample_rate: linked from the datamodule by the CLI.
        arch: a name from :data:`models.audio.AUDIO_ARCHITECTURES`.
        norm: normalization by name (``bn``, ``l2bn``, ``gn``, ``ln``, ``none``; :data:`l2bn_lit.NORM_KINDS`).
        norm_options: the norm's own options, e.g. ``{"rescale": true}`` for ``l2bn``.
        arch_options: keyword arguments of the architecture's constructor, e.g. CP-Mobile's
            ``{"expansion_rate": 2.0}`` (part of the architecture: checked against checkpoints).
        frontend: the log-mel front-end's :class:`~models.frontend.LogMelSettings` (``None``: their defaults),
            e.g. ``{n_fft: 4096, win_length: 3072, hop_length: 500, n_mels: 256, log: log}``.
        freq_mask, time_mask: SpecAugment mask widths in bins/frames (0: off), training only.
        freq_masks: how many frequency (and time) masks SpecAugment applies (the baselines: one).
        mask_value: ``zero`` fills masked bins with 0.0; ``floor`` with ``log(log_floor)``, which is what
            masking the power spectrogram before the log gives (the baselines); needs ``frontend.log: log``.
        time_roll: roll each training log-mel along time by a random number of frames (up to the whole clip).
        roll_seconds: roll each training waveform by a uniform shift of at most this many seconds before
            the front-end (the baselines: 0.1); waveform inputs only (the feature cache's log-mels are fixed).
        mixstyle_p, mixstyle_alpha: Freq-MixStyle probability per batch (0: off) and Beta parameter.
        predict_precision: the precision ``predict`` runs the network on the features at (``16``: as
            the DCASE baselines ship their models, ``model.half()``; see :meth:`set_inference_precision`).
        **kwargs: :class:`~l2bn_lit.lit.classification_module.ClassificationModule` options (init, optimizer,
            mixup, ...).
    """

    architecture_keys = (
        *ClassificationModule.architecture_keys,
        "arch",
        "arch_options",
        "norm",
        "norm_options",
        "frontend",
    )

    def __init__(
        self,
        num_classes: int,
        input_shape: list[int] | None = None,
        sample_rate: int | None = None,
        arch: str = "dcase_baseline",
        arch_options: dict[str, Any] | None = None,
        norm: str = "l2bn",
        norm_options: dict[str, Any] | None = None,
        frontend: LogMelSettings | None = None,
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
        settings = self._frontend_settings(frontend, kwargs)
        if mask_value == "floor" and settings.log != "log":
            raise ValueError("mask_value floor fills masks with log(log_floor): it needs frontend.log: log (not db)")
        roll = [TimeRoll()] if time_roll else []
        augment = nn.Sequential(
            *roll,
            SpecAugment(
                freq_mask, time_mask, freq_masks, math.log(settings.log_floor) if mask_value == "floor" else 0.0
            ),
            FreqMixStyle(mixstyle_p, mixstyle_alpha),
        )
        network = LogMelClassifier(
            LogMel(sample_rate, settings),
            augment,
            build_audio_model(arch, num_classes, norm, norm_options, arch_options),
            WaveRoll(round(roll_seconds * sample_rate)) if roll_seconds else None,
        )
        # the hyperparameter save_hyperparameters() reads from this frame: plain data, as checkpoints load weights-only
        frontend = asdict(settings)  # noqa: F841
        super().__init__(network, num_classes=num_classes, input_shape=input_shape, sample_rate=sample_rate, **kwargs)
        self._probs: list[Tensor] = []
        self._labels: list[Tensor] = []

    @staticmethod
    def _frontend_settings(frontend: LogMelSettings | dict[str, Any] | None, kwargs: dict[str, Any]) -> LogMelSettings:
        """The settings from ``frontend`` (a dict when read back from a checkpoint), or from the separate
        ``n_fft``, ``n_mels``, ... hyperparameters of a checkpoint written before ``frontend`` (taken out of
        ``kwargs``)."""
        flat = {key: kwargs.pop(key) for key in _FLAT_FRONTEND_KEYS if key in kwargs}
        if flat and frontend is not None:
            raise ValueError(f"give the front-end settings as frontend: {{...}}, not also as {sorted(flat)}")
        if isinstance(frontend, LogMelSettings):
            return frontend
        return LogMelSettings(**(frontend or flat))

    @classmethod
    def saved_architecture(cls, saved: dict[str, Any]) -> dict[str, Any]:
        """A checkpoint's hyperparameters with the separate front-end keys of older checkpoints folded
        into ``frontend``, so that they are compared with this model's as well."""
        if "frontend" in saved or not any(key in saved for key in _FLAT_FRONTEND_KEYS):
            return saved
        rest = dict(saved)
        return {**rest, "frontend": asdict(cls._frontend_settings(None, rest))}

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
            warnings.warn(
                "the DCASE report needs every test clip in one process: run test with --trainer.devices 1", stacklevel=2
            )
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
            warnings.warn(
                "the submission file needs every clip in one process: run predict with --trainer.devices 1",
                stacklevel=2,
            )
            return
        folder.mkdir(parents=True, exist_ok=True)
        files = self.trainer.datamodule.predict_set.files[: len(probs)]
        write_submission(folder / "submission.csv", files, probs, self.hparams.class_names)
