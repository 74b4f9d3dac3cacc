"""Figures of the analysis histories, the test report and run comparisons (matplotlib's object API:
no pyplot state, no backend switch). Each function takes tables (pandas) or tensors and writes a PNG."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

__all__ = ["compare_runs", "plot_confusion", "plot_feature_norms", "plot_geometry", "plot_grad_norms"]


def plot_feature_norms(table: pd.DataFrame, path: Path) -> Path:
    """:class:`~l2bn_lit.lit.callbacks.FeatureNormMonitor`'s history (``step``, ``layer``, ``cv_in``,
    ``cv_out``): the spread at the norm layers' input and output, one line per layer."""
    layers = list(dict.fromkeys(table["layer"]))
    figure = Figure(figsize=(11, 4))
    axes = figure.subplots(1, 2, sharey=True)
    for axis, value, where in zip(axes, ("cv_in", "cv_out"), ("input", "output")):
        _by_depth(axis, table, value, layers)
        axis.set_title(f"per-sample l2 norm spread at the norm layers' {where}")
    axes[0].set_ylabel("coefficient of variation (std / mean)")
    return _save(figure, path)


def plot_grad_norms(table: pd.DataFrame, path: Path) -> Path:
    """:class:`~l2bn_lit.lit.callbacks.GradientNormMonitor`'s history (``step``, ``layer``, ``grad_norm``)."""
    layers = list(dict.fromkeys(table["layer"]))
    figure = Figure(figsize=(6, 4))
    axis = figure.subplots()
    _by_depth(axis, table, "grad_norm", layers)
    axis.set_yscale("log")
    axis.set_ylabel("weight-gradient l2 norm")
    axis.set_title("gradient scale per layer")
    return _save(figure, path)


def plot_geometry(table: pd.DataFrame, path: Path) -> Path:
    """:class:`~l2bn_lit.lit.callbacks.PenultimateGeometry`'s history (``epoch`` and the three measures)."""
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
    return _save(figure, path)


def plot_confusion(confusion: np.ndarray, names: list[str], path: Path) -> Path:
    """The confusion matrix ``(K, K)`` (rows: true class, columns: predicted), counts written in."""
    figure = Figure(figsize=(1 + 0.5 * len(names), 1 + 0.5 * len(names)))
    axis = figure.subplots()
    axis.imshow(confusion, cmap="Blues")
    axis.set(xticks=range(len(names)), yticks=range(len(names)), xlabel="predicted", ylabel="true")
    axis.set_xticklabels(names, rotation=90)
    axis.set_yticklabels(names)
    for (i, j), count in pd.DataFrame(confusion).stack().items():
        axis.text(j, i, int(count), ha="center", va="center", fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    return path


def _by_depth(axis: Axes, table: pd.DataFrame, value: str, layers: list[str]) -> None:
    """One line per layer over steps, coloured from the first layer (dark) to the last (light)."""
    colours = matplotlib.colormaps["viridis"]([i / max(1, len(layers) - 1) for i in range(len(layers))])
    for layer, colour in zip(layers, colours):
        rows = table[table["layer"] == layer]
        axis.plot(rows["step"], rows[value], color=colour, linewidth=0.8, marker=".", markersize=2)
    axis.plot(
        table.groupby("step")[value].mean(),
        color="black",
        linewidth=2,
        marker="o",
        markersize=3,
        label="mean over layers",
    )
    axis.set_xlabel("training step")
    axis.legend()


def _history(runs: list[Path], name: str) -> pd.DataFrame | None:
    """The ``<name>.csv`` histories of ``runs`` in one table with a ``run`` column (None if none has one)."""
    tables = [pd.read_csv(run / f"{name}.csv").assign(run=str(run)) for run in runs if (run / f"{name}.csv").is_file()]
    return pd.concat(tables, ignore_index=True) if tables else None


def _mean_band(axis: Axes, table: pd.DataFrame, x: str, value: str, label: str) -> None:
    """Mean over runs of ``value`` against ``x``, with the min-max band of the runs."""
    per_run = table.groupby(["run", x])[value].mean().unstack(0)
    line = axis.plot(
        per_run.index, per_run.mean(1), marker="o", markersize=3, label=f"{label} ({per_run.shape[1]} runs)"
    )[0]
    axis.fill_between(per_run.index, per_run.min(1), per_run.max(1), color=line.get_color(), alpha=0.2)


def compare_runs(runs_by_norm: dict[str, list[Path]], out: Path) -> list[Path]:
    """Draws the analysis histories of several runs per norm side by side (mean over a norm's runs,
    min-max band): ``compare_geometry.png``, ``compare_feature_norms.png`` (mean over layers) and
    ``compare_grad_norms.png`` (one panel per norm, one line per layer). Returns the files written."""
    histories = {
        name: {norm: _history(runs, name) for norm, runs in runs_by_norm.items()}
        for name in ("geometry", "feature_norms", "grad_norms")
    }
    written = []
    geometry = {norm: t for norm, t in histories["geometry"].items() if t is not None}
    if geometry:
        figure = Figure(figsize=(13, 3.8))
        axes = figure.subplots(1, 3)
        titles = {
            "intra_cos": "intra-class compactness (cosine to centroid)",
            "inter_angle": "inter-class angle (deg)",
            "scatter_ratio": "within / between scatter",
        }
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
            axis.set_title(
                f"per-sample l2 norm spread at the norm layers' {where}\n(coefficient of variation, mean over layers)"
            )
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
