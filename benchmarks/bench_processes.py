"""Training steps of several processes at once on the CPU: L2BN's numba kernels beside torch's threads.

Runs ``bench_train_step.py`` (ResNet-20, BN and L2BN steps interleaved in each process) alone and as
``--processes`` copies at once, with torch's default thread count and with the cores split between the
processes (``OMP_NUM_THREADS`` = cores // processes, what ``l2bn sweep --parallel`` and Lightning's DDP
set), each with L2BN on the numba kernels and on the ATen path (no numba in the process: the
reference). Every process's medians are reported; compare a row with its ``aten`` twin and with the
process alone. numba's own OpenMP runtime once spun between kernels and took the cores from torch's
threads in every process on the machine (BN steps included).

    python benchmarks/bench_processes.py
    python benchmarks/bench_processes.py --processes 4 --batch-size 128
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

from l2bn_lit.commands.sweep import run_environment

ROOT = Path(__file__).resolve().parents[1]


def run_at_once(processes: int, environment: dict[str, str], args: argparse.Namespace) -> list[dict[str, float]]:
    """``processes`` copies of the training-step benchmark started at once: each one's table row."""
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "bench_train_step.py"),
        "--archs",
        "resnet20",
        "--channels-last",
        "--batch-size",
        str(args.batch_size),
        "--repeats",
        str(args.repeats),
        "--warmup",
        "2",
    ]
    started = [
        subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=environment, cwd=ROOT)
        for _ in range(processes)
    ]
    rows = []
    for process in started:
        output, _ = process.communicate(timeout=900)
        if process.returncode:
            raise SystemExit(f"bench_train_step.py failed (exit {process.returncode}):\n{output}")
        header, _, row = [line for line in output.splitlines() if line.startswith("|")][:3]
        names = [cell.strip() for cell in header.strip("|").split("|")]
        values = [cell.strip() for cell in row.strip("|").split("|")]
        rows.append({name: float(value) for name, value in zip(names, values) if name != "arch"})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "L2BN_KERNELS")}
    os.environ.pop("OMP_NUM_THREADS", None)
    if args.processes < 2:
        parser.error("--processes: at least 2 (the comparison is between processes at once)")
    split = run_environment(args.processes)["OMP_NUM_THREADS"]  # what `l2bn sweep --parallel` sets
    settings = [
        ("alone", 1, {}),
        (f"{args.processes} at once, default threads", args.processes, {}),
        (f"{args.processes} at once, OMP_NUM_THREADS={split}", args.processes, {"OMP_NUM_THREADS": split}),
    ]
    table = []
    for name, processes, extra in settings:
        for kernels in ("numba", "aten"):
            rows = run_at_once(processes, {**base, **extra, "L2BN_KERNELS": kernels}, args)
            table.append(
                {
                    "processes": name,
                    "L2BN path": kernels,
                    "BN step ms": " / ".join(f"{row['BN step ms']:.0f}" for row in rows),
                    "L2BN step ms": " / ".join(f"{row['L2BN step ms']:.0f}" for row in rows),
                    "L2BN/BN": " / ".join(f"{row['L2BN/BN']:.2f}" for row in rows),
                }
            )
    print(
        f"{os.cpu_count()} CPU cores; per process: ResNet-20, batch {args.batch_size}, channels_last, "
        f"{args.repeats} interleaved repeats (medians), one value per process"
    )
    print(pd.DataFrame(table).to_markdown(index=False))


if __name__ == "__main__":
    main()
