"""Collects the test metrics of finished runs into one table: one row per run, and mean/std per group.

    l2bn results RUNS_FOLDER [--metric test/acc] [--csv out.csv]

What a run is and how runs are grouped: :mod:`l2bn_lit.reports.runs`. Runs that logged no test metric
are listed apart, with the ``last.ckpt`` to resume from.
"""

from __future__ import annotations

import argparse

from l2bn_lit.reports.runs import scan_runs, summary_table

__all__ = ["main"]


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
    from l2bn_lit.errors import run_main

    run_main(main)
