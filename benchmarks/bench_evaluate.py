"""Evaluating N checkpoints at once (``l2bn evaluate``) against N separate ``test`` runs.

Writes a synthetic TAU-layout set (1-s clips at 44.1 kHz by default), trains N short runs of
``configs/quickstart_dcase.yaml`` at that rate (alternating BN and L2BN), then times, ``--repeats``
times and interleaved: N ``test`` runs (the CLI in this process: each reads the clips and computes
the log-mels itself) and one ``evaluate`` of the N checkpoints (one pass, features once). Prints the
times and their ratio per repeat, then the range.

    python benchmarks/bench_evaluate.py [--n 5] [--repeats 3] [--sample-rate 44100] [--clips 24]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
import warnings
from pathlib import Path

import pandas as pd
import torch

from datamodules import write_synthetic_tau
from l2bn_lit.commands.evaluate import main as evaluate_main
from l2bn_lit.lit.cli import main as cli_main

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "quickstart_dcase.yaml")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sample-rate", type=int, default=44100)
    parser.add_argument("--clips", type=int, default=24, help="synthetic clips per scene (5 scenes)")
    args = parser.parse_args()
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    quiet = [
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        "--trainer.logger",
        "false",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        root = write_synthetic_tau(Path(tmp) / "data", clips_per_scene=args.clips, sample_rate=args.sample_rate)
        data = [
            "--config",
            CONFIG,
            "--data.init_args.root",
            str(root),
            "--data.init_args.sample_rate",
            str(args.sample_rate),
        ]
        checkpoints = []
        for i in range(args.n):
            run = Path(tmp) / f"run{i}"
            cli_main(
                [
                    "fit",
                    *data,
                    "--model.init_args.norm",
                    "bn" if i % 2 == 0 else "l2bn",
                    "--seed_everything",
                    str(i),
                    "--trainer.max_epochs",
                    "1",
                    "--test_after_fit",
                    "false",
                    "--trainer.default_root_dir",
                    str(run),
                    "--trainer.enable_progress_bar",
                    "false",
                ]
            )
            checkpoints.append(str(next(run.rglob("last.ckpt"))))
        test_clips = len(pd.read_csv(root / "evaluation_setup" / "fold1_evaluate.csv", sep="\t"))
        rows = []
        for repeat in range(args.repeats):
            start = time.perf_counter()
            for ckpt in checkpoints:
                cli_main(
                    ["test", *data, *quiet, "--ckpt_path", ckpt, "--trainer.default_root_dir", str(Path(tmp) / "test")]
                )
            separate = time.perf_counter() - start
            start = time.perf_counter()
            evaluate_main([*data, *checkpoints, "--out", str(Path(tmp) / "board")])
            together = time.perf_counter() - start
            rows.append(
                {
                    "repeat": repeat,
                    f"{args.n} test runs s": round(separate, 2),
                    "evaluate s": round(together, 2),
                    "ratio": round(together / separate, 3),
                }
            )
    table = pd.DataFrame(rows)
    print(
        f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads, {args.sample_rate} Hz 1-s clips, "
        f"N = {args.n} checkpoints, {test_clips} test clips"
    )
    print(table.to_markdown(index=False))
    print(f"evaluate / separate test runs: {table['ratio'].min():.3f}-{table['ratio'].max():.3f}")


if __name__ == "__main__":
    main()
