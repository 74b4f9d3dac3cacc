"""Run folders as tables: finished runs and their test metrics, grouped by norm (with its options) and
seed, and the analysis callbacks' measures per norm.

A run is a folder holding ``config.yaml`` and ``metrics.csv`` (the CLI's CSV logger folder); runs that
logged no test metric (interrupted, or never tested) are listed apart, with the ``last.ckpt`` to
resume from. A run's group is the norm with its options (``model.init_args.norm`` and
``norm_options``, see :func:`norm_label`) and its seed ``seed_everything``, read from the config.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

__all__ = [
    "analysis_summary",
    "collect_runs",
    "norm_label",
    "parse_arm",
    "scan_runs",
    "summary_table",
    "time_to_accuracy",
]


def norm_label(norm: str, options: dict[str, Any] | None = None) -> str:
    """``norm``, or ``norm:key=value,...`` (sorted keys, JSON values) when it has options:
    ``l2bn:rescale=true``. Runs are grouped by this label."""
    if not options:
        return norm
    return f"{norm}:" + ",".join(f"{key}={json.dumps(value)}" for key, value in sorted(options.items()))


def scan_runs(folder: str | Path, metrics: str | Sequence[str] = "test/acc") -> tuple[pd.DataFrame, pd.DataFrame]:
    """The runs under ``folder``, finished and not.

    Returns:
        ``(finished, incomplete)``: one row per finished run (run folder, norm, seed and the last
        logged value of each metric), and one per run that logged no value of some metric (an
        interrupted or untested run) with ``reason``, its last logged epoch and its ``last.ckpt``
        (to resume from) when there is one.
    """
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    finished, incomplete = [], []
    for config_path in sorted(Path(folder).rglob("config.yaml")):
        run = config_path.parent
        config = yaml.safe_load(config_path.read_text())
        init_args = config["model"]["init_args"]
        row = {
            "run": str(run.relative_to(folder)),
            "norm": norm_label(init_args["norm"], init_args.get("norm_options")),
            "seed": config.get("seed_everything"),
        }
        logged = pd.read_csv(run / "metrics.csv") if (run / "metrics.csv").is_file() else None
        missing = [m for m in metrics if logged is None or m not in logged or logged[m].dropna().empty]
        if missing:
            epochs = logged["epoch"].dropna() if logged is not None and "epoch" in logged else pd.Series(dtype=float)
            last = sorted(run.glob("checkpoints/last*.ckpt"))
            reason = (
                "no metrics.csv"
                if logged is None
                else f"logged no {', '.join(map(repr, missing))} (interrupted, or not tested)"
            )
            incomplete.append(
                {
                    **row,
                    "reason": reason,
                    "last epoch": int(epochs.max()) if len(epochs) else None,
                    "last.ckpt": str(last[-1]) if last else None,
                }
            )
            continue
        finished.append({**row, **{m: float(logged[m].dropna().iloc[-1]) for m in metrics}})
    columns = ["run", "norm", "seed"]
    return (
        pd.DataFrame(finished, columns=[*columns, *metrics]),
        pd.DataFrame(incomplete, columns=[*columns, "reason", "last epoch", "last.ckpt"]),
    )


def collect_runs(
    folder: str | Path, metrics: str | Sequence[str] = "test/acc", only: Callable[[str], bool] | None = None
) -> pd.DataFrame:
    """One row per run under ``folder``: run folder, norm, seed and the last logged value of each metric.
    ``only``: consider just the runs whose folder (relative to ``folder``) it accepts.

    Raises:
        FileNotFoundError: there is no run under ``folder``.
        ValueError: a run is incomplete (:func:`scan_runs` lists such runs without raising).
    """
    finished, incomplete = scan_runs(folder, metrics)
    if only is not None:
        finished = finished[[only(run) for run in finished["run"]]]
        incomplete = incomplete[[only(run) for run in incomplete["run"]]]
    if len(incomplete):
        first = incomplete.iloc[0]
        raise ValueError(
            f"run {Path(folder) / first['run']} {first['reason']}; {len(incomplete)} incomplete run(s) in all"
        )
    if finished.empty:
        raise FileNotFoundError(f"no runs (config.yaml + metrics.csv) under {folder}")
    return finished


def summary_table(
    runs: pd.DataFrame, metrics: str | Sequence[str] = "test/acc", norms: Sequence[str] | None = None
) -> pd.DataFrame:
    """Mean, sample standard deviation and number of runs of each metric per norm (in ``norms``
    order; by default every norm of ``runs``, sorted)."""
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    rows = []
    for norm in norms or sorted(runs["norm"].unique()):
        group = runs[runs["norm"] == norm]
        row = {"norm": norm, "runs": len(group)}
        for metric in metrics:
            row[f"{metric} mean"], row[f"{metric} std"] = group[metric].mean(), group[metric].std()
        rows.append(row)
    return pd.DataFrame(rows)


def parse_arm(arm: str) -> tuple[str, dict[str, Any]]:
    """``"l2bn"`` -> ``("l2bn", {})``; ``"l2bn:rescale=true,eps=1e-3"`` -> the norm and its options
    (values read as JSON, else YAML)."""
    norm, _, options = arm.partition(":")
    parsed = {}
    for item in filter(None, options.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(
                f"--norms {arm!r}: options are key=value pairs separated by commas, e.g. l2bn:rescale=true"
            )
        try:
            parsed[key] = json.loads(value)  # 1e-3 is a number here (YAML 1.1 would read a string)
        except ValueError:
            parsed[key] = yaml.safe_load(value)  # True, yes, bare strings
    return norm, parsed


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
                values.update(
                    geometry.loc[geometry["epoch"].idxmax(), ["intra_cos", "inter_angle", "scatter_ratio"]].to_dict()
                )
            if (run / "grad_norms.csv").is_file():
                grads = pd.read_csv(run / "grad_norms.csv")
                steps = sorted(grads["step"].unique())
                late = grads[grads["step"].isin(steps[len(steps) // 2 :])]
                values["grad_log_std"] = (
                    late.assign(log=np.log10(late["grad_norm"])).groupby("layer")["log"].std().mean()
                )
            per_run.append(values)
        table = pd.DataFrame(per_run)
        row: dict[str, Any] = {"norm": norm, "runs": len(table)}
        for column in table:
            row[f"{column} mean"], row[f"{column} std"] = table[column].mean(), table[column].std()
        rows.append(row)
    return pd.DataFrame(rows)


def time_to_accuracy(run: str | Path, target: float, metric: str = "val/acc") -> float | None:
    """Training seconds (``time/train_s`` of :class:`~l2bn_lit.lit.callbacks.TrainingClock`) at the end of
    the first epoch whose ``metric`` reached ``target``; None when no epoch did (or the run has no clock)."""
    table = pd.read_csv(Path(run) / "metrics.csv")
    if "time/train_s" not in table or metric not in table:
        return None
    by_epoch = table.groupby("epoch")[["time/train_s", metric]].max().dropna()
    reached = by_epoch[by_epoch[metric] >= target]
    return float(reached["time/train_s"].iloc[0]) if len(reached) else None
