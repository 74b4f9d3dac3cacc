"""Callbacks of this project: the paper's measures during training, and the run's complexity.

- :class:`FeatureNormMonitor`: spread of the per-sample l2 norms at the input (and output) of every
  norm layer, as the coefficient of variation std/mean over the batch (claim 1: L2BN equalizes the
  norms BN leaves unequal);
- :class:`PenultimateGeometry`: intra-class compactness, inter-class discrepancy and the
  within/between scatter ratio of the penultimate features on the validation set (claim 2);
- :class:`GradientNormMonitor`: the l2 norm of each layer's weight gradient (claim 3);
- :class:`ComplexityReport`: ``complexity.json`` at the start of fit (the CLI adds it to every run);
- :class:`TrainingClock`: training seconds and images per second per epoch (time-to-accuracy).

The first three log to the run's loggers while training, and at the end of fit write their history
as CSV and a plot (PNG) into the run folder. Add them to a config::

    trainer:
      callbacks:
        - class_path: l2bn_lit.lit.callbacks.FeatureNormMonitor
        - class_path: l2bn_lit.lit.callbacks.PenultimateGeometry
        - class_path: l2bn_lit.lit.callbacks.GradientNormMonitor

or on the command line: ``--trainer.callbacks+=l2bn_lit.lit.callbacks.FeatureNormMonitor``.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any

import pandas as pd
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import grad_norm
from torch import Tensor, nn

from l2bn_lit.nn import NORM_TYPES
from l2bn_lit.reports.geometry import feature_geometry, sample_norm_cv
from l2bn_lit.reports.model_cost import complexity_report
from l2bn_lit.reports.plots import plot_feature_norms, plot_geometry, plot_grad_norms
from models.heads import classifier_of

from .classification_module import run_folder

__all__ = [
    "CALLBACKS",
    "ComplexityReport",
    "FeatureNormMonitor",
    "GradientNormMonitor",
    "PenultimateGeometry",
    "TrainingClock",
]


class _HistoryCallback(pl.Callback):
    """Keeps ``history`` rows and writes them as ``<name>.csv`` plus ``<name>.png`` at the end of fit."""

    name: str

    def __init__(self) -> None:
        self.history: list[dict[str, Any]] = []

    def plot(self, table: pd.DataFrame, path: Path) -> None:
        raise NotImplementedError

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        folder = run_folder(trainer)
        if not trainer.is_global_zero or not self.history or trainer.fast_dev_run:
            return
        folder.mkdir(parents=True, exist_ok=True)
        table = pd.DataFrame(self.history)
        table.to_csv(folder / f"{self.name}.csv", index=False)
        self.plot(table, folder / f"{self.name}.png")


def _log_now(trainer: pl.Trainer, metrics: dict[str, float], step: int) -> None:
    """Straight to every logger at this step: the callback's own frequency, not ``log_every_n_steps``
    (Lightning's loggers write on rank zero only)."""
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=step)


class FeatureNormMonitor(_HistoryCallback):
    """Coefficient of variation of the per-sample l2 norms at every norm layer's input and output,
    on one training batch every ``every_n_steps`` steps (on rank 0's share of the batch under DDP).

    Logs ``feature_norm_cv/<layer>`` (input) and ``feature_norm_cv_out/<layer>``, plus their means
    over layers (``feature_norm_cv/mean``, ``feature_norm_cv_out/mean``).
    """

    name = "feature_norms"

    def __init__(self, every_n_steps: int = 50) -> None:
        super().__init__()
        self.every_n_steps = every_n_steps
        self._handles: list[Any] = []
        self._batch: list[tuple[str, Tensor, Tensor]] = []
        self._active = False
        self._step = 0

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        for name, module in pl_module.named_modules():
            if isinstance(module, NORM_TYPES):
                self._handles.append(module.register_forward_hook(self._hook(name)))

    def _hook(self, name: str):
        def record(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            if self._active and module.training:
                self._batch.append((name, *(sample_norm_cv(t) for t in (inputs[0], output))))

        return record

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._step = trainer.global_step  # the optimizer step this batch makes (global_step counts it at batch end)
        self._active = self._step % self.every_n_steps == 0
        self._batch = []

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self._active or not self._batch:
            return
        self._active = False
        values = torch.stack([torch.stack([cv_in, cv_out]) for _, cv_in, cv_out in self._batch]).tolist()
        step = self._step
        metrics = {}
        for (layer, _, _), (cv_in, cv_out) in zip(self._batch, values):
            self.history.append({"step": step, "layer": layer, "cv_in": cv_in, "cv_out": cv_out})
            metrics[f"feature_norm_cv/{layer}"], metrics[f"feature_norm_cv_out/{layer}"] = cv_in, cv_out
        metrics["feature_norm_cv/mean"] = sum(v[0] for v in values) / len(values)
        metrics["feature_norm_cv_out/mean"] = sum(v[1] for v in values) / len(values)
        _log_now(trainer, metrics, step)
        self._batch = []

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def plot(self, table: pd.DataFrame, path: Path) -> None:
        plot_feature_norms(table, path)


class GradientNormMonitor(_HistoryCallback):
    """l2 norm of each layer's weight gradient (parameters with 2 or more dimensions: convolutions and
    linear layers), every ``every_n_steps`` optimizer steps, after AMP unscaling (Lightning's
    ``grad_norm``). Logs ``grad_norm/<parameter>`` and ``grad_norm/total`` (all parameters)."""

    name = "grad_norms"

    def __init__(self, every_n_steps: int = 50) -> None:
        super().__init__()
        self.every_n_steps = every_n_steps

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        if trainer.global_step % self.every_n_steps:
            return
        norms = grad_norm(pl_module, norm_type=2)  # {"grad_2.0_norm/<parameter>": ..., "grad_2.0_norm_total": ...}
        metrics = {}
        for name, parameter in pl_module.named_parameters():
            if parameter.dim() >= 2 and f"grad_2.0_norm/{name}" in norms:
                metrics[f"grad_norm/{name}"] = float(norms[f"grad_2.0_norm/{name}"])
                self.history.append(
                    {"step": trainer.global_step, "layer": name, "grad_norm": metrics[f"grad_norm/{name}"]}
                )
        metrics["grad_norm/total"] = float(norms["grad_2.0_norm_total"])
        _log_now(trainer, metrics, trainer.global_step)

    def plot(self, table: pd.DataFrame, path: Path) -> None:
        plot_grad_norms(table, path)


class PenultimateGeometry(_HistoryCallback):
    """:func:`feature_geometry` of the penultimate features (the classifier layer's input, globally
    average-pooled when it is a feature map) over the validation set, every ``every_n_epochs``
    epochs (at most ``max_samples`` samples, gathered from every process).

    Args:
        layer: name (as in ``named_modules()`` of the LightningModule) of the classifier layer;
            None finds it with :func:`models.heads.classifier_of` on ``pl_module.network``.

    Logs ``geometry/intra_cos``, ``geometry/inter_angle`` and ``geometry/scatter_ratio``.
    """

    name = "geometry"

    def __init__(self, every_n_epochs: int = 1, max_samples: int = 10000, layer: str | None = None) -> None:
        super().__init__()
        self.every_n_epochs, self.max_samples, self.layer = every_n_epochs, max_samples, layer
        self._features: list[Tensor] = []
        self._labels: list[Tensor] = []
        self._handle: Any = None
        self._active = False

    def _classifier(self, pl_module: pl.LightningModule) -> nn.Module:
        if self.layer is None:
            return classifier_of(pl_module.network)
        modules = dict(pl_module.named_modules())
        if self.layer not in modules:
            raise ValueError(f"PenultimateGeometry layer {self.layer!r} is not a module of {type(pl_module).__name__}")
        return modules[self.layer]

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._handle = self._classifier(pl_module).register_forward_pre_hook(self._record)

    def _record(self, module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        if self._active and sum(len(f) for f in self._features) < self.max_samples:
            x = inputs[0].detach()
            self._features.append((x.flatten(2).mean(2) if x.dim() > 2 else x).float())

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._active = not trainer.sanity_checking and trainer.current_epoch % self.every_n_epochs == 0
        self._features, self._labels = [], []

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._active and len(self._labels) < len(self._features):
            self._labels.append(batch[1][: len(self._features[-1])])

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._active or not self._features:
            return
        self._active = False
        features, labels = torch.cat(self._features), torch.cat(self._labels)
        if trainer.world_size > 1:  # the same number of batches on every process (DistributedSampler)
            features = pl_module.all_gather(features).flatten(0, 1)
            labels = pl_module.all_gather(labels).flatten(0, 1)
        if len(labels.unique()) < 2:  # e.g. a tiny limit_val_batches: say so rather than stop the run
            warnings.warn(
                f"PenultimateGeometry: the validation samples of epoch {trainer.current_epoch} hold one class only; "
                "no geometry this epoch",
                stacklevel=2,
            )
            return
        geometry = feature_geometry(features.cpu(), labels.cpu())
        self.history.append({"epoch": trainer.current_epoch, "step": trainer.global_step, **geometry})
        pl_module.log_dict({f"geometry/{k}": v for k, v in geometry.items()}, on_epoch=True)
        self._features, self._labels = [], []

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def plot(self, table: pd.DataFrame, path: Path) -> None:
        plot_geometry(table, path)


#: the callbacks of this module, by class name (what ``l2bn sweep --analysis`` adds)
CALLBACKS = ("FeatureNormMonitor", "PenultimateGeometry", "GradientNormMonitor")


class ComplexityReport(pl.Callback):
    """Writes ``complexity.json`` into the run folder at the start of fit and logs the numbers."""

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        folder = run_folder(trainer)
        shape = pl_module.hparams.get("input_shape")
        if shape is None or not trainer.is_global_zero or trainer.fast_dev_run:  # fast_dev_run writes nothing
            return
        report = complexity_report(pl_module, list(shape))
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "complexity.json").write_text(json.dumps(report, indent=2))


class TrainingClock(pl.Callback):
    """Wall time spent training, for time-to-accuracy: logs ``time/train_s`` (seconds of training epochs so
    far: validation, testing and the sanity check excluded) and ``time/images_per_s`` (this epoch's training
    images per second, all processes) at the end of every epoch.

    An epoch's clock runs from its start to the start of its validation (or its end). On CUDA the device is
    synchronized at those two edges, so queued kernels count in the epoch that runs them. The total is saved
    in checkpoints: a resumed run goes on counting (:func:`l2bn_lit.reports.runs.time_to_accuracy` reads it).
    """

    def __init__(self) -> None:
        self.train_s = 0.0
        self._start: float | None = None
        self._epoch_s = 0.0
        self._images = 0

    @staticmethod
    def _now(pl_module: pl.LightningModule) -> float:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        return time.perf_counter()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._images, self._epoch_s = 0, 0.0
        self._start = self._now(pl_module)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._images += len(batch[0]) * trainer.world_size

    def _stop(self, pl_module: pl.LightningModule) -> None:
        if self._start is not None:
            self._epoch_s += self._now(pl_module) - self._start
            self._start = None

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._stop(pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stop(pl_module)
        self.train_s += self._epoch_s
        rate = self._images / self._epoch_s if self._epoch_s > 0 else float("nan")
        pl_module.log_dict({"time/train_s": self.train_s, "time/images_per_s": rate}, on_epoch=True)

    def state_dict(self) -> dict[str, float]:
        return {"train_s": self.train_s}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.train_s = float(state_dict["train_s"])
