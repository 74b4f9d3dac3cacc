"""Collects the test metrics of finished runs into one table: one row per run, and mean/std per group.

    python -m l2bn_lit.results RUNS_FOLDER [--metric test/acc] [--csv out.csv]

A run is a folder holding ``config.yaml`` and ``metrics.csv`` (the CLI's CSV logger folder); runs that
logged no test metric (interrupted, or never tested) are listed apart, with the ``last.ckpt`` to
resume from. A run's group is the norm with its options (``model.init_args.norm`` and ``norm_options``, see
:func:`norm_label`) and its seed ``seed_everything``, read from the config.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

__all__ = ["scan_runs", "collect_runs", "norm_label", "summary_table"]


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
            reason = "no metrics.csv" if logged is None else f"logged no {', '.join(map(repr, missing))} (interrupted, or not tested)"
            incomplete.append({**row, "reason": reason, "last epoch": int(epochs.max()) if len(epochs) else None,
                               "last.ckpt": str(last[-1]) if last else None})
            continue
        finished.append({**row, **{m: float(logged[m].dropna().iloc[-1]) for m in metrics}})
    columns = ["run", "norm", "seed"]
    return (pd.DataFrame(finished, columns=[*columns, *metrics]),
            pd.DataFrame(incomplete, columns=[*columns, "reason", "last epoch", "last.ckpt"]))


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
        raise ValueError(f"run {Path(folder) / first['run']} {first['reason']}; {len(incomplete)} incomplete run(s) in all")
    if finished.empty:
        raise FileNotFoundError(f"no runs (config.yaml + metrics.csv) under {folder}")
    return finished


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
    runs, incomplete = scan_runs(args.folder, args.metric)
    if runs.empty and incomplete.empty:
        raise FileNotFoundError(f"no runs (config.yaml + metrics.csv) under {args.folder}")
    if not runs.empty:
        print(runs.drop(columns="run").to_markdown(index=False))
        print()
        print(summary_table(runs, args.metric).to_markdown(index=False, floatfmt=".4f"))
    if not incomplete.empty:
        print(f"\n{len(incomplete)} incomplete run(s), left out of the tables above:\n")
        print(incomplete.to_markdown(index=False))
    if args.csv:
        runs.to_csv(args.csv, index=False)


if __name__ == "__main__":
    from .errors import run_main

    run_main(main)
