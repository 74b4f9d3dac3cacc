"""Cost of the analysis callbacks at their default frequency, as a share of an epoch.

One-epoch Lightning fits (training + validation) of a CIFAR model on random CIFAR-shaped data,
alternately without and with the three callbacks of :mod:`l2bn_lit.lit.callbacks`
(FeatureNormMonitor and GradientNormMonitor every 50 steps, PenultimateGeometry every epoch).
Reported: median epoch time (training + validation, timed by a callback) of each arm and their
ratio, and the median one-time cost at the end of fit (the CSV and PNG files).

    python benchmarks/bench_analysis_overhead.py                    # CPU, ResNet-20, L2BN
    python benchmarks/bench_analysis_overhead.py --device gpu --steps 390 --batch-size 128
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import pandas as pd
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from l2bn_lit.lit.callbacks import FeatureNormMonitor, GradientNormMonitor, PenultimateGeometry
from models import ImageClassifier


class EpochClock(pl.Callback):
    """Seconds from the start of the training epoch to the end of its validation, and of on_fit_end."""

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.start = time.perf_counter()

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.epoch = time.perf_counter() - self.start

    def on_fit_end(self, trainer, pl_module) -> None:  # runs first: callbacks are called in list order
        self.fit_end_start = time.perf_counter()


def one_fit(args: argparse.Namespace, with_analysis: bool, folder: str) -> tuple[float, float]:
    torch.manual_seed(0)
    x = torch.randn(args.steps * args.batch_size, 3, 32, 32)
    y = torch.randint(0, 10, (len(x),))
    train = DataLoader(TensorDataset(x, y), batch_size=args.batch_size, shuffle=True)
    val = DataLoader(TensorDataset(x[: args.val_samples], y[: args.val_samples]), batch_size=256)
    clock = EpochClock()
    analysis = [FeatureNormMonitor(), GradientNormMonitor(), PenultimateGeometry()] if with_analysis else []
    trainer = pl.Trainer(
        accelerator=args.device,
        devices=1,
        max_epochs=1,
        logger=pl.loggers.CSVLogger(folder),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[clock, *analysis],
    )
    model = ImageClassifier(10, [3, 32, 32], arch=args.arch, norm=args.norm)
    trainer.fit(model, train, val)
    return clock.epoch, time.perf_counter() - clock.fit_end_start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet20")
    parser.add_argument("--norm", default="l2bn")
    parser.add_argument("--steps", type=int, default=100, help="training steps per epoch")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--val-samples", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    times: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as folder:
        one_fit(args, True, folder)  # warm-up, untimed
        for _ in range(args.repeats):
            for arm in (False, True):
                times[arm].append(one_fit(args, arm, folder))
    plain = statistics.median(t[0] for t in times[False])
    analysed = statistics.median(t[0] for t in times[True])
    end = statistics.median(t[1] for t in times[True]) - statistics.median(t[1] for t in times[False])
    print(
        f"torch {torch.__version__}, {args.device}, {torch.get_num_threads()} threads; {args.arch} ({args.norm}), "
        f"{args.steps} steps of {args.batch_size} + {args.val_samples} validation samples per epoch, "
        f"{args.repeats} repeats"
    )
    row = {
        "epoch s (no callbacks)": round(plain, 2),
        "epoch s (analysis callbacks)": round(analysed, 2),
        "ratio": round(analysed / plain, 3),
        "end of fit s (CSV + PNG)": round(end, 2),
    }
    print(pd.DataFrame([row]).to_markdown(index=False))


if __name__ == "__main__":
    main()
