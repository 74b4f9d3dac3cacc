"""TrainingClock (training seconds, images per second) and time_to_accuracy, on the digits quickstart."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from l2bn_lit.lit.callbacks import TrainingClock
from l2bn_lit.lit.cli import main
from l2bn_lit.reports.runs import time_to_accuracy

ROOT = Path(__file__).resolve().parents[1]


def _fit(tmp_path: Path, epochs: int, *extra: str):
    logger = {
        "class_path": "l2bn_lit.lit.csv_logger.RunCSVLogger",
        "init_args": {"save_dir": str(tmp_path), "name": "run"},
    }
    return main(
        [
            "fit",
            "--config",
            str(ROOT / "configs" / "quickstart.yaml"),
            "--trainer.max_epochs",
            str(epochs),
            "--trainer.callbacks+=l2bn_lit.lit.callbacks.TrainingClock",
            "--trainer.logger",
            json.dumps(logger),
            "--trainer.enable_progress_bar",
            "false",
            "--test_after_fit",
            "false",
            *extra,
        ]
    )


def test_the_clock_counts_training_time_and_images_per_epoch(tmp_path):
    cli = _fit(tmp_path, 3)
    clock = next(cb for cb in cli.trainer.callbacks if isinstance(cb, TrainingClock))
    run = Path(cli.trainer.log_dir)
    table = pd.read_csv(run / "metrics.csv").groupby("epoch").max()
    seconds, rates = table["time/train_s"].tolist(), table["time/images_per_s"].tolist()
    assert (
        len(seconds) == 3
        and all(b > a > 0 for a, b in zip(seconds, seconds[1:]))
        and seconds[-1] == pytest.approx(clock.train_s, rel=1e-6)
    )
    train_images = sum(len(x) for x, _ in cli.datamodule.train_dataloader())  # what an epoch trains on
    for epoch, rate in enumerate(rates):  # this epoch's images over this epoch's seconds
        epoch_s = seconds[epoch] - (seconds[epoch - 1] if epoch else 0.0)
        assert rate == pytest.approx(train_images / epoch_s, rel=1e-5)  # logged as float32
    accuracy = table["val/acc"].tolist()
    first = next(i for i, acc in enumerate(accuracy) if acc >= accuracy[-1])
    assert time_to_accuracy(run, accuracy[-1]) == pytest.approx(seconds[first])
    assert time_to_accuracy(run, 1.01) is None


def test_a_resumed_run_goes_on_counting(tmp_path):
    first = _fit(tmp_path, 2)
    spent = next(cb for cb in first.trainer.callbacks if isinstance(cb, TrainingClock)).train_s
    checkpoint = Path(first.trainer.log_dir) / "checkpoints" / "last.ckpt"
    resumed = _fit(tmp_path / "again", 3, "--ckpt_path", str(checkpoint))
    clock = next(cb for cb in resumed.trainer.callbacks if isinstance(cb, TrainingClock))
    assert clock.train_s > spent
    table = pd.read_csv(Path(resumed.trainer.log_dir) / "metrics.csv").groupby("epoch").max()
    assert table.loc[2, "time/train_s"] == pytest.approx(clock.train_s, rel=1e-6)
