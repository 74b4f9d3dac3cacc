"""Callbacks that measure the paper's claims during training, usable from any config.

- :class:`FeatureNormMonitor`: spread of the per-sample l2 norms at the input (and output) of every
  norm layer, as the coefficient of variation std/mean over the batch (claim 1: L2BN equalizes the
  norms BN leaves unequal);
- :class:`PenultimateGeometry`: intra-class compactness, inter-class discrepancy and the
  within/between scatter ratio of the penultimate features on the validation set (claim 2);
- :class:`GradientNormMonitor`: the l2 norm of each layer's weight gradient (claim 3).

Each logs to the run's loggers while training, and at the end of fit writes its history as CSV and a
plot (PNG) into the run folder. Add them to a config::

    trainer:
      callbacks:
        - class_path: l2bn_lit.analysis.FeatureNormMonitor
        - class_path: l2bn_lit.analysis.PenultimateGeometry
        - class_path: l2bn_lit.analysis.GradientNormMonitor

or on the command line: ``--trainer.callbacks+=l2bn_lit.analysis.FeatureNormMonitor``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from pytorch_lightning.utilities import grad_norm
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _NormBase

from models.heads import classifier_of

from .module import run_folder

__all__ = [
    "CALLBACKS",
    "NORM_TYPES",
    "FeatureNormMonitor",
    "GradientNormMonitor",
    "PenultimateGeometry",
    "coefficient_of_variation",
    "analysis_summary",
    "compare_runs",
    "feature_geometry",
]

#: layers whose inputs FeatureNormMonitor watches (BN, L2BN and their Sync variants, InstanceNorm, GN, LN)
NORM_TYPES = (_NormBase, nn.GroupNorm, nn.LayerNorm)


def coefficient_of_variation(x: Tensor) -> float:
    """std / mean (sample std) of the per-sample l2 norms of ``x`` ``(N, ...)``, in float64."""
    return float(_norm_cv(x, torch.float64))


def feature_geometry(features: Tensor, labels: Tensor) -> dict[str, float]:
    """Geometry of ``features`` ``(N, D)`` with integer ``labels`` ``(N,)``, in float64.

    Returns:
        ``intra_cos``: mean cosine between each sample and its class centroid (higher: more compact);
        ``inter_angle``: mean angle in degrees between the centroids of two different classes
        (higher: more distinct); ``scatter_ratio``: trace of the within-class scatter over trace of
        the between-class scatter (lower: better separated). Only classes present count.
    """
    features, labels = features.double(), labels.long()
    classes = labels.unique()
    if len(classes) < 2:
        raise ValueError("feature geometry needs samples of at least two classes")
    centroids = torch.stack([features[labels == c].mean(0) for c in classes])
    own = centroids[torch.searchsorted(classes, labels)]
    intra = nn.functional.cosine_similarity(features, own, dim=1).mean()
    unit = nn.functional.normalize(centroids, dim=1)
    cosines = (unit @ unit.T).clamp(-1, 1)
    pairs = torch.triu_indices(len(classes), len(classes), offset=1)
    inter = torch.rad2deg(torch.acos(cosines[pairs[0], pairs[1]])).mean()
    within = (features - own).pow(2).sum(1).mean()
    counts = torch.stack([(labels == c).sum() for c in classes]).double()
    between = (counts * (centroids - features.mean(0)).pow(2).sum(1)).sum() / len(features)
    return {"intra_cos": float(intra), "inter_angle": float(inter), "scatter_ratio": float(within / between)}


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


def _by_depth(axis: Axes, table: pd.DataFrame, value: str, layers: list[str]) -> None:
    """One line per layer over steps, coloured from the first layer (dark) to the last (light)."""
    colours = matplotlib.colormaps["viridis"]([i / max(1, len(layers) - 1) for i in range(len(layers))])
    for layer, colour in zip(layers, colours):
        rows = table[table["layer"] == layer]
        axis.plot(rows["step"], rows[value], color=colour, linewidth=0.8, marker=".", markersize=2)
    axis.plot(table.groupby("step")[value].mean(), color="black", linewidth=2, marker="o", markersize=3, label="mean over layers")
    axis.set_xlabel("training step")
    axis.legend()


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
                self._batch.append((name, *(_norm_cv(t) for t in (inputs[0], output))))

        return record

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        self._step = trainer.global_step  # the optimizer step this batch makes (global_step counts it at batch end)
        self._active = self._step % self.every_n_steps == 0
        self._batch = []

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
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
        layers = list(dict.fromkeys(table["layer"]))
        figure = Figure(figsize=(11, 4))
        axes = figure.subplots(1, 2, sharey=True)
        for axis, value, where in zip(axes, ("cv_in", "cv_out"), ("input", "output")):
            _by_depth(axis, table, value, layers)
            axis.set_title(f"per-sample l2 norm spread at the norm layers' {where}")
        axes[0].set_ylabel("coefficient of variation (std / mean)")
        _save(figure, path)


def _norm_cv(x: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """:func:`coefficient_of_variation` as a tensor on ``x``'s device (no synchronization)."""
    norms = x.detach().flatten(1).to(dtype).norm(dim=1)
    return norms.std() / norms.mean()


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
                self.history.append({"step": trainer.global_step, "layer": name, "grad_norm": metrics[f"grad_norm/{name}"]})
        metrics["grad_norm/total"] = float(norms["grad_2.0_norm_total"])
        _log_now(trainer, metrics, trainer.global_step)

    def plot(self, table: pd.DataFrame, path: Path) -> None:
        layers = list(dict.fromkeys(table["layer"]))
        figure = Figure(figsize=(6, 4))
        axis = figure.subplots()
        _by_depth(axis, table, "grad_norm", layers)
        axis.set_yscale("log")
        axis.set_ylabel("weight-gradient l2 norm")
        axis.set_title("gradient scale per layer")
        _save(figure, path)


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
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
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
            warnings.warn(f"PenultimateGeometry: the validation samples of epoch {trainer.current_epoch} hold one class only; "
                          "no geometry this epoch", stacklevel=2)
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
        figure = Figure(figsize=(12, 3.6))
        axes = figure.subplots(1, 3)
        titles = {
            "intra_cos": "intra-class compactness\n(mean cosine to class centroid)",
            "inter_angle": "inter-class discrepancy\n(mean angle between centroids, deg)",
            "scatter_ratio": "within / between scatter",
        }
        for axis, (key, title) in zip(axes, titles.items()):
            axis.plot(table["epoch"], table[key], marker="o")
            axis.set_title(title)
            axis.set_xlabel("epoch")
        _save(figure, path)



#: the callbacks of this module, by class name (what ``python -m l2bn_lit.sweep --analysis`` adds)
CALLBACKS = ("FeatureNormMonitor", "PenultimateGeometry", "GradientNormMonitor")


def _history(runs: list[Path], name: str) -> pd.DataFrame | None:
    """The ``<name>.csv`` histories of ``runs`` in one table with a ``run`` column (None if none has one)."""
    tables = [pd.read_csv(run / f"{name}.csv").assign(run=str(run)) for run in runs if (run / f"{name}.csv").is_file()]
    return pd.concat(tables, ignore_index=True) if tables else None


def _mean_band(axis: Axes, table: pd.DataFrame, x: str, value: str, label: str) -> None:
    """Mean over runs of ``value`` against ``x``, with the min-max band of the runs."""
    per_run = table.groupby(["run", x])[value].mean().unstack(0)
    line = axis.plot(per_run.index, per_run.mean(1), marker="o", markersize=3, label=f"{label} ({per_run.shape[1]} runs)")[0]
    axis.fill_between(per_run.index, per_run.min(1), per_run.max(1), color=line.get_color(), alpha=0.2)


def analysis_summary(runs_by_norm: dict[str, list[Path]]) -> pd.DataFrame:
    """One row per norm: each analysis measure per run, then mean and sample std over the runs.

    Per run: ``cv_in``/``cv_out``, the feature-norm spread averaged over layers and recorded steps;
    ``intra_cos``, ``inter_angle``, ``scatter_ratio`` at the last recorded epoch; ``grad_log_std``,
    the step-to-step standard deviation of log10 of each layer's gradient norm over the second half
    of the recorded steps, averaged over layers (lower: a steadier gradient scale).
    """
    rows = []
    for norm, runs in runs_by_norm.items():
        per_run = []
        for run in runs:
            values: dict[str, float] = {}
            if (run / "feature_norms.csv").is_file():
                norms = pd.read_csv(run / "feature_norms.csv")
                values.update(cv_in=norms["cv_in"].mean(), cv_out=norms["cv_out"].mean())
            if (run / "geometry.csv").is_file():
                geometry = pd.read_csv(run / "geometry.csv")
                values.update(geometry.loc[geometry["epoch"].idxmax(), ["intra_cos", "inter_angle", "scatter_ratio"]].to_dict())
            if (run / "grad_norms.csv").is_file():
                grads = pd.read_csv(run / "grad_norms.csv")
                steps = sorted(grads["step"].unique())
                late = grads[grads["step"].isin(steps[len(steps) // 2 :])]
                values["grad_log_std"] = late.assign(log=np.log10(late["grad_norm"])).groupby("layer")["log"].std().mean()
            per_run.append(values)
        table = pd.DataFrame(per_run)
        row: dict[str, Any] = {"norm": norm, "runs": len(table)}
        for column in table:
            row[f"{column} mean"], row[f"{column} std"] = table[column].mean(), table[column].std()
        rows.append(row)
    return pd.DataFrame(rows)


def compare_runs(runs_by_norm: dict[str, list[Path]], out: Path) -> list[Path]:
    """Draws the analysis histories of several runs per norm side by side (mean over a norm's runs,
    min-max band): ``compare_geometry.png``, ``compare_feature_norms.png`` (mean over layers) and
    ``compare_grad_norms.png`` (one panel per norm, one line per layer). Returns the files written."""
    histories = {name: {norm: _history(runs, name) for norm, runs in runs_by_norm.items()} for name in ("geometry", "feature_norms", "grad_norms")}
    written = []
    geometry = {norm: t for norm, t in histories["geometry"].items() if t is not None}
    if geometry:
        figure = Figure(figsize=(13, 3.8))
        axes = figure.subplots(1, 3)
        titles = {"intra_cos": "intra-class compactness (cosine to centroid)", "inter_angle": "inter-class angle (deg)",
                  "scatter_ratio": "within / between scatter"}
        for axis, (key, title) in zip(axes, titles.items()):
            for norm, table in geometry.items():
                _mean_band(axis, table, "epoch", key, norm)
            axis.set_title(title)
            axis.set_xlabel("epoch")
            axis.legend()
        written.append(_save(figure, out / "compare_geometry.png"))
    norms = {norm: t for norm, t in histories["feature_norms"].items() if t is not None}
    if norms:
        figure = Figure(figsize=(11, 3.8))
        axes = figure.subplots(1, 2, sharey=True)
        for axis, (key, where) in zip(axes, (("cv_in", "input"), ("cv_out", "output"))):
            for norm, table in norms.items():
                _mean_band(axis, table, "step", key, norm)
            axis.set_title(f"per-sample l2 norm spread at the norm layers' {where}\n(coefficient of variation, mean over layers)")
            axis.set_xlabel("training step")
            axis.legend()
        written.append(_save(figure, out / "compare_feature_norms.png"))
    grads = {norm: t for norm, t in histories["grad_norms"].items() if t is not None}
    if grads:
        figure = Figure(figsize=(5.5 * len(grads), 3.8))
        axes = figure.subplots(1, len(grads), sharey=True, squeeze=False)
        for axis, (norm, table) in zip(axes[0], grads.items()):
            mean = table.groupby(["step", "layer"], sort=False)["grad_norm"].mean().reset_index()
            _by_depth(axis, mean, "grad_norm", list(dict.fromkeys(table["layer"])))
            axis.set_yscale("log")
            axis.set_title(f"{norm}: weight-gradient l2 norm per layer\n(mean over runs; dark = first layer)")
        axes[0][0].set_ylabel("gradient l2 norm")
        written.append(_save(figure, out / "compare_grad_norms.png"))
    return written


def _save(figure: Figure, path: Path) -> Path:
    """Writes ``figure`` as a PNG (matplotlib's object API: no pyplot state, no backend switch)."""
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return path
