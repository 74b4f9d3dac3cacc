"""Collects the test metrics of finished runs into one table: one row per run, and mean/std per group.

    python -m l2bn_lit.results RUNS_FOLDER [--metric test/acc] [--csv out.csv]

A run is a folder holding ``config.yaml`` and ``metrics.csv`` (the CLI's CSV logger folder); its
group is the norm with its options (``model.init_args.norm`` and ``norm_options``, see
:func:`norm_label`) and its seed ``seed_everything``, read from the config.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

__all__ = ["collect_runs", "norm_label", "summary_table"]


def norm_label(norm: str, options: dict[str, Any] | None = None) -> str:
    """``norm``, or ``norm:key=value,...`` (sorted keys, JSON values) when it has options:
    ``l2bn:rescale=true``. Runs are grouped by this label."""
    if not options:
        return norm
    return f"{norm}:" + ",".join(f"{key}={json.dumps(value)}" for key, value in sorted(options.items()))


def collect_runs(folder: str | Path, metrics: str | Sequence[str] = "test/acc") -> pd.DataFrame:
    """One row per run under ``folder``: run folder, norm, seed and the last logged value of each metric."""
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    rows = []
    for config_path in sorted(Path(folder).rglob("config.yaml")):
        metrics_path = config_path.with_name("metrics.csv")
        if not metrics_path.is_file():
            raise FileNotFoundError(f"run {config_path.parent} has a config.yaml but no metrics.csv")
        logged = pd.read_csv(metrics_path)
        config = yaml.safe_load(config_path.read_text())
        init_args = config["model"]["init_args"]
        row = {
            "run": str(config_path.parent.relative_to(folder)),
            "norm": norm_label(init_args["norm"], init_args.get("norm_options")),
            "seed": config.get("seed_everything"),
        }
        for metric in metrics:
            if metric not in logged or logged[metric].dropna().empty:
                raise ValueError(f"run {config_path.parent} logged no {metric!r} (was it tested?)")
            row[metric] = float(logged[metric].dropna().iloc[-1])
        rows.append(row)
    if not rows:
        raise FileNotFoundError(f"no runs (config.yaml + metrics.csv) under {folder}")
    return pd.DataFrame(rows)


def summary_table(runs: pd.DataFrame, metrics: str | Sequence[str] = "test/acc", norms: Sequence[str] | None = None) -> pd.DataFrame:
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder")
    parser.add_argument("--metric", default="test/acc")
    parser.add_argument("--csv", help="also write the per-run table here")
    args = parser.parse_args(argv)
    runs = collect_runs(args.folder, args.metric)
    print(runs.drop(columns="run").to_markdown(index=False))
    print()
    print(summary_table(runs, args.metric).to_markdown(index=False, floatfmt=".4f"))
    if args.csv:
        runs.to_csv(args.csv, index=False)


if __name__ == "__main__":
    from .errors import run_command

    run_command(main)
