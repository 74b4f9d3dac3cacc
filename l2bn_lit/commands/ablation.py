"""Factor ablations: one norm x seed sweep per cell (a named set of CLI options), then one table.

    l2bn ablation --config configs/<x>.yaml --seeds 0 1 --out runs/ablation \\
        --cell baseline= --cell init_torch="--model.init_args.init torch" [--cell ...] \\
        [--norms bn l2bn] [--parallel K] [-- OPTIONS FOR EVERY RUN]

Each cell is a sweep (``l2bn sweep``, :mod:`l2bn_lit.commands.sweep`, in its own process) run into
``OUT/<cell>`` with the common options, then the cell's own (finished runs are kept, so an interrupted
ablation resumes; ``--report-only`` only tabulates). Writes ``OUT/ablation.md`` and
``OUT/ablation.csv``: per cell and norm the mean and std of the metric, the paired difference of each
norm against the first (by seed, 95% Student-t interval), and how that difference moved against the
first cell's, paired by seed as well (a difference of differences).
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd

from l2bn_lit.reports.runs import norm_label, parse_arm
from l2bn_lit.reports.stats import t_interval

__all__ = ["ablation_table", "main", "run_sweep"]


def ablation_table(cells: dict[str, pd.DataFrame], norms: list[str], metric: str) -> pd.DataFrame:
    """One row per cell from each cell's sweep runs (``norm``, ``seed``, ``metric`` columns)."""
    base_cell = next(iter(cells))
    gaps: dict[str, pd.Series] = {}
    rows = []
    for cell, runs in cells.items():
        by_norm = {norm: runs[runs["norm"] == norm].set_index("seed")[metric] for norm in norms}
        row: dict[str, object] = {"cell": cell}
        for norm, values in by_norm.items():
            row[f"{norm} mean"], row[f"{norm} std"], row[f"{norm} runs"] = values.mean(), values.std(), len(values)
        for norm in norms[1:]:
            seeds = sorted(set(by_norm[norm].index) & set(by_norm[norms[0]].index))
            gap = by_norm[norm].loc[seeds] - by_norm[norms[0]].loc[seeds]
            gaps[cell] = gap
            label = f"{norm} - {norms[0]}"
            row[label], row[f"{label} ci low"], row[f"{label} ci high"] = t_interval(gap)
            if cell != base_cell:
                common = sorted(set(gap.index) & set(gaps[base_cell].index))
                moved = gap.loc[common] - gaps[base_cell].loc[common]
                row[f"gap change vs {base_cell}"], row["change ci low"], row["change ci high"] = t_interval(moved)
        rows.append(row)
    return pd.DataFrame(rows)


def run_sweep(argv: list[str]) -> None:
    """``l2bn sweep ARGV`` in a child process (its output goes to this one's); a failed sweep stops the ablation."""
    result = subprocess.run([sys.executable, "-m", "l2bn_lit", "sweep", *argv], check=False)
    if result.returncode != 0:
        raise SystemExit(f"l2bn sweep {shlex.join(argv)} failed (exit status {result.returncode}); its output is above")


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument(
        "--cell",
        action="append",
        required=True,
        metavar="NAME=OPTIONS",
        help="a cell: its name and its CLI options (shell-quoted; empty for the baseline); the first is the reference",
    )
    parser.add_argument("--norms", nargs="+", default=["bn", "l2bn"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--out", default="runs/ablation")
    parser.add_argument("--metric", default="test/acc")
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--report-only", action="store_true", help="tabulate the finished cells, run nothing")
    parser.add_argument("cli", nargs=argparse.REMAINDER, help="after --: options passed to every run of every cell")
    args = parser.parse_args(argv)
    common = args.cli[1:] if args.cli[:1] == ["--"] else args.cli
    cells: dict[str, list[str]] = {}
    for item in args.cell:
        name, sep, options = item.partition("=")
        if not sep or not name or "/" in name:
            raise SystemExit(
                f"--cell {item!r}: give NAME=OPTIONS (NAME a folder name), e.g. "
                "init_torch='--model.init_args.init torch'"
            )
        cells[name] = shlex.split(options)
    out = Path(args.out)
    norms = [norm_label(*parse_arm(arm)) for arm in args.norms]
    results = {}
    for name, options in cells.items():
        folder = out / name
        if not args.report_only:
            sweep_args = [
                "--config",
                args.config,
                "--norms",
                *args.norms,
                "--seeds",
                *map(str, args.seeds),
                "--out",
                str(folder),
                "--metrics",
                args.metric,
                "--parallel",
                str(args.parallel),
                "--",
                *common,
                *options,
            ]
            run_sweep(sweep_args)
        if not (folder / "sweep.csv").is_file():
            raise SystemExit(f"cell {name}: {folder / 'sweep.csv'} missing (run without --report-only)")
        results[name] = pd.read_csv(folder / "sweep.csv")
    table = ablation_table(results, norms, args.metric)
    table.to_csv(out / "ablation.csv", index=False)
    command = shlex.join(
        [
            "l2bn",
            "ablation",
            "--config",
            args.config,
            *[f"--cell={c}" for c in args.cell],
            "--norms",
            *args.norms,
            "--seeds",
            *map(str, args.seeds),
            "--",
            *common,
        ]
    )
    cell_lines = [f"- `{name}`: `{shlex.join(options) or '(the config as it is)'}`" for name, options in cells.items()]
    report = "\n".join(
        [
            f"# Ablation: {args.config}, {args.metric}",
            "",
            f"Command: `{command}`",
            "",
            "Cells:",
            *cell_lines,
            "",
            table.to_markdown(index=False, floatfmt=".4f"),
            "",
        ]
    )
    (out / "ablation.md").write_text(report)
    print(report)
    return table


if __name__ == "__main__":
    from l2bn_lit.errors import run_main

    run_main(main)
