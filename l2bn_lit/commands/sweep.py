"""Norm x seed sweeps: every combination as an ordinary CLI run, then one table of test metrics.

    l2bn sweep --config configs/quickstart.yaml --norms bn l2bn --seeds 0 1 2 \\
        [--out runs/sweep] [--metrics test/acc test/acc_macro] [--analysis] [--parallel K] [--dry-run] [-- CLI OPTIONS]

Each run is ``python -m l2bn_lit fit --config ... --model.init_args.norm NORM --seed_everything
SEED --test_after_fit true`` plus the options after ``--`` (a norm given as ``l2bn:rescale=true``
also passes ``--model.init_args.norm_options '{"rescale": true}'``), each in a fresh process, one after
another or ``--parallel K`` at a time (small models leave a GPU mostly idle: several runs share it
well; each then gets ``OMP_NUM_THREADS`` = cores // K unless it is set), and ``--dry-run`` prints the
commands, for a cluster's job array. Run folders are
``OUT/<norm>/seed<seed>`` (``OUT/l2bn-rescale=true/seed0``); a run whose test metrics are already there
is not run again, and an interrupted one continues from its ``last.ckpt``, so an interrupted sweep
resumes. ``--analysis`` adds the callbacks of :mod:`l2bn_lit.lit.callbacks` to every run
and draws their curves per norm (mean over seeds) into ``OUT/compare_*.png``.

Writes ``OUT/sweep.csv`` (one row per run) and ``OUT/sweep.md``: mean +- std per norm and, for every
norm against the first one, the difference paired by seed with its 95% confidence interval
(Student t with n - 1 degrees of freedom).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from l2bn_lit.lit.callbacks import CALLBACKS
from l2bn_lit.reports.plots import compare_runs
from l2bn_lit.reports.runs import analysis_summary, collect_runs, norm_label, parse_arm, summary_table
from l2bn_lit.reports.stats import paired_differences
from l2bn_lit.serialization import load_checkpoint

__all__ = ["main", "run_command", "run_environment"]


def run_folder_name(arm: str) -> str:
    """The arm's folder under the sweep folder (``:`` is not portable in file names)."""
    norm, options = parse_arm(arm)
    return norm_label(norm, options).replace(":", "-").replace('"', "")


def run_command(
    config: str, arm: str, seed: int, out: Path, analysis: bool, extra: list[str], resume: Path | None = None
) -> list[str]:
    """The CLI command of one run of the sweep: ``arm`` is a norm, optionally with options; ``resume``:
    the run's ``last.ckpt`` to continue from (its metrics.csv kept up to that checkpoint)."""
    norm, options = parse_arm(arm)
    logger = {
        "class_path": "l2bn_lit.lit.csv_logger.RunCSVLogger",
        "init_args": {"save_dir": str(out), "name": run_folder_name(arm), "version": f"seed{seed}"},
    }
    if resume is not None:
        logger["init_args"]["resume_step"] = load_checkpoint(resume)["global_step"]
    command = [
        sys.executable,
        "-m",
        "l2bn_lit",
        "fit",
        "--config",
        config,
        "--model.init_args.norm",
        norm,
        "--seed_everything",
        str(seed),
        "--test_after_fit",
        "true",
        "--trainer.logger",
        json.dumps(logger),
        *(["--ckpt_path", str(resume)] if resume is not None else []),
    ]
    if options:
        command += ["--model.init_args.norm_options", json.dumps(options)]
    if analysis:
        command += [f"--trainer.callbacks+=l2bn_lit.lit.callbacks.{name}" for name in CALLBACKS]
    return command + extra


def _finished(run: Path, metrics: list[str]) -> bool:
    try:
        logged = pd.read_csv(run / "metrics.csv")
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return False
    return all(m in logged and logged[m].notna().any() for m in metrics)


def _measures_by_norm(summary: pd.DataFrame) -> pd.DataFrame:
    """The analysis summary turned into one row per measure and a ``mean +- std`` column per norm."""
    measures = [c[: -len(" mean")] for c in summary.columns if c.endswith(" mean")]
    return pd.DataFrame(
        {
            row["norm"]: [f"{row[f'{m} mean']:.4f} +- {row[f'{m} std']:.4f}" for m in measures]
            for _, row in summary.iterrows()
        },
        index=pd.Index(measures, name="measure"),
    )


def _sweep_command(args: argparse.Namespace) -> str:
    """The command line that reproduces this sweep (shell-quoted; ``--out`` left to the reader)."""
    argv = [
        "python",
        "-m",
        "l2bn_lit",
        "sweep",
        "--config",
        args.config,
        "--norms",
        *args.norms,
        "--seeds",
        *map(str, args.seeds),
    ]
    argv += ["--analysis"] if args.analysis else []
    return shlex.join(argv + (["--", *args.cli] if args.cli else []))


def _report(args: argparse.Namespace, runs: pd.DataFrame, analysis: pd.DataFrame | None) -> str:
    summary = summary_table(runs, args.metrics, args.norms)
    pairs = paired_differences(runs, args.metrics, args.norms)
    lines = [
        f"# Sweep: {args.config}",
        "",
        f"Command: `{_sweep_command(args)}`",
        f"Machine: torch {torch.__version__}, "
        f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'}, "
        f"{torch.get_num_threads()} threads.",
        "",
        "## Per norm (mean, sample std)",
        "",
        summary.to_markdown(index=False, floatfmt=".4f"),
        "",
        f"## Paired by seed, against {args.norms[0]} (95% CI, Student t)",
        "",
        pairs.to_markdown(index=False, floatfmt=".4f") if len(pairs) else "(one norm: nothing to compare)",
        "",
        *(
            [
                "## Analysis: mean +- std over seeds (l2bn_lit.reports.runs.analysis_summary)",
                "",
                _measures_by_norm(analysis).to_markdown(),
                "",
            ]
            if analysis is not None
            else []
        ),
        "## Runs",
        "",
        runs.to_markdown(index=False, floatfmt=".4f"),
        "",
    ]
    return "\n".join(lines)


def run_environment(parallel: int) -> dict[str, str]:
    """The environment of each run when ``parallel`` runs share the machine: the CPU cores split between
    them (``OMP_NUM_THREADS`` = cores // ``parallel``, at least 1, as ``torchrun`` does for its
    processes), unless ``OMP_NUM_THREADS`` is set. Each process otherwise starts a thread per core, and
    the oversubscribed threads made two CPU runs on 2 cores 2-6x slower than one thread each."""
    environment = dict(os.environ)
    if parallel > 1 and "OMP_NUM_THREADS" not in environment:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        environment["OMP_NUM_THREADS"] = str(max(1, cores // parallel))
    return environment


def _run_all(pending: list[tuple[str, int, Path, list[str]]], out: Path, parallel: int) -> None:
    """Runs the ``(norm, seed, run folder, command)`` jobs, ``parallel`` at a time, in
    :func:`run_environment`; the first failure stops the sweep (the other runs in flight are ended) and
    names its log."""
    environment = run_environment(parallel)
    if environment.get("OMP_NUM_THREADS") != os.environ.get("OMP_NUM_THREADS"):
        print(
            f"[sweep] {parallel} runs at a time, each with OMP_NUM_THREADS={environment['OMP_NUM_THREADS']} "
            "(the CPU cores split between them; set OMP_NUM_THREADS to choose)",
            flush=True,
        )
    running: list[tuple[str, int, subprocess.Popen, Path, float]] = []
    try:
        while pending or running:
            while pending and len(running) < parallel:
                norm, seed, run, command = pending.pop(0)
                if run.exists() and "--ckpt_path" not in command:  # interrupted before any checkpoint: start afresh
                    shutil.rmtree(run)
                log_path = out / "logs" / f"{run_folder_name(norm)}-seed{seed}.log"
                log_path.parent.mkdir(parents=True, exist_ok=True)
                with log_path.open("w") as log:
                    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment)
                running.append((norm, seed, process, log_path, time.perf_counter()))
            time.sleep(0.2)
            for job in [job for job in running if job[2].poll() is not None]:
                running.remove(job)
                norm, seed, process, log_path, start = job
                if process.returncode:
                    raise SystemExit(
                        f"[sweep] {norm} seed {seed} failed (exit {process.returncode}); its output: {log_path}"
                    )
                print(f"[sweep] {norm} seed {seed}: {time.perf_counter() - start:.0f} s ({log_path})", flush=True)
    finally:
        for _, _, process, _, _ in running:
            process.kill()
            process.wait()


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument(
        "--norms",
        nargs="+",
        default=["bn", "l2bn"],
        help="norms, each optionally with options (l2bn:rescale=true); "
        "the first is the baseline of the paired differences",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", help="sweep folder (default runs/sweep_<config name>)")
    parser.add_argument("--metrics", nargs="+", default=["test/acc", "test/acc_macro"])
    parser.add_argument("--analysis", action="store_true", help="add the analysis callbacks and compare their curves")
    parser.add_argument("--parallel", type=int, default=1, help="runs at a time (each a process of its own)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("cli", nargs=argparse.REMAINDER, help="after --: options passed to every run")
    args = parser.parse_args(argv)
    args.cli = args.cli[1:] if args.cli[:1] == ["--"] else args.cli
    if not Path(args.config).is_file():
        parser.error(f"--config {args.config} does not exist")
    out = Path(args.out or f"runs/sweep_{Path(args.config).stem}")
    args.norms = [norm_label(*parse_arm(arm)) for arm in args.norms]  # one spelling per arm
    pending = []
    for norm in args.norms:
        for seed in args.seeds:
            run = out / run_folder_name(norm) / f"seed{seed}"
            last = run / "checkpoints" / "last.ckpt"
            finished = _finished(run, args.metrics)
            resume = last if last.is_file() and not finished and not args.dry_run else None
            command = run_command(args.config, norm, seed, out, args.analysis, args.cli, resume)
            if args.dry_run:
                print(shlex.join(command))
            elif finished:
                print(f"[sweep] {norm} seed {seed}: done before, kept ({run})")
            else:
                if resume is not None:
                    print(f"[sweep] {norm} seed {seed}: interrupted before, continuing from {resume}")
                pending.append((norm, seed, run, command))
    if args.dry_run:
        return pd.DataFrame()
    _run_all(pending, out, max(1, args.parallel))
    # this sweep's runs only: an interrupted run of another seed in the same folder is not one of them
    requested = {(run_folder_name(norm), f"seed{seed}") for norm in args.norms for seed in args.seeds}
    runs = collect_runs(out, args.metrics, only=lambda run: tuple(Path(run).parts[:2]) in requested)
    arms = {
        run_folder_name(norm): norm for norm in args.norms
    }  # by folder: a config's own norm_options stay out of the label
    runs["norm"] = [arms.get(Path(run).parts[0]) for run in runs["run"]]
    runs = runs[runs["norm"].notna() & runs["seed"].isin(args.seeds)].sort_values(["norm", "seed"])
    runs.to_csv(out / "sweep.csv", index=False)
    folders = {norm: [out / run_folder_name(norm) / f"seed{seed}" for seed in args.seeds] for norm in args.norms}
    report = _report(args, runs, analysis_summary(folders) if args.analysis else None)
    (out / "sweep.md").write_text(report)
    if args.analysis:
        compare_runs(folders, out)
    print(report)
    return runs


if __name__ == "__main__":
    from l2bn_lit.errors import run_main

    run_main(main)
