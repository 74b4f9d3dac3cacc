"""The image pipeline through the CLI: quickstart, precision, checkpoints, resume, DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import pytorch_lightning as pl
import torch

from datamodules import DigitsDataModule
from l2bn_lit import L2BN2d
from l2bn_lit.lit.classification_module import CheckpointMismatchError
from l2bn_lit.lit.cli import main
from models import ImageClassifier

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")


def _cli(tmp_path: Path, *args: str, run: bool = True):
    logger = f'[{{"class_path": "pytorch_lightning.loggers.CSVLogger", "init_args": {{"save_dir": "{tmp_path}"}}}}]'
    return main([*args, "--trainer.logger", logger], run=run)


def _run_dir(cli) -> Path:
    return Path(cli.trainer.log_dir)


def test_quickstart_reaches_95_percent_and_writes_the_run_folder(tmp_path):
    cli = _cli(tmp_path, "fit", "--config", QUICKSTART)
    run = _run_dir(cli)
    accuracy = cli.trainer.callback_metrics["test/acc"].item()
    assert accuracy >= 0.95
    assert any(isinstance(m, L2BN2d) for m in cli.model.modules())
    assert (run / "config.yaml").is_file()
    assert json.loads((run / "complexity.json").read_text())["parameters"] == sum(
        p.numel() for p in cli.model.parameters()
    )
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert list((run / "checkpoints").glob("best-*.ckpt"))
    metrics = pd.read_csv(run / "metrics.csv")
    assert {"train/lr", "val/acc", "test/acc"} <= set(metrics.columns)
    per_class = pd.read_csv(run / "per_class_accuracy.csv")
    assert per_class["support"].sum() == len(cli.datamodule.test_set)
    # overall accuracy is the support-weighted mean of the per-class accuracies
    assert (per_class["accuracy"] * per_class["support"]).sum() / per_class["support"].sum() == pytest.approx(
        accuracy, abs=1e-6
    )
    confusion = pd.read_csv(run / "confusion_matrix.csv", index_col=0)
    assert confusion.values.trace() / confusion.values.sum() == pytest.approx(accuracy, abs=1e-6)
    assert (run / "confusion_matrix.png").stat().st_size > 1000


def test_bf16_mixed_fast_dev_run_on_cpu(tmp_path):
    cli = _cli(
        tmp_path, "fit", "--config", QUICKSTART, "--trainer.precision", "bf16-mixed", "--trainer.fast_dev_run", "true"
    )
    assert cli.trainer.precision == "bf16-mixed"
    assert all(torch.isfinite(p).all() for p in cli.model.parameters())


@pytest.fixture(scope="module")
def l2bn_checkpoint(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("ckpt")
    cli = _cli(tmp, "fit", "--config", QUICKSTART, "--trainer.max_epochs", "1", "--test_after_fit", "false")
    return _run_dir(cli) / "checkpoints" / "last.ckpt"


def test_ckpt_that_contradicts_the_config_is_an_error(l2bn_checkpoint, tmp_path):
    with pytest.raises(CheckpointMismatchError, match="norm: model='bn' checkpoint='l2bn'"):
        _cli(
            tmp_path,
            "test",
            "--config",
            QUICKSTART,
            "--model.init_args.norm",
            "bn",
            "--ckpt_path",
            str(l2bn_checkpoint),
        )


def test_ckpt_rebuilds_its_own_architecture(l2bn_checkpoint, tmp_path):
    cli = _cli(
        tmp_path,
        "test",
        "--model",
        "models.ImageClassifier",
        "--data",
        "datamodules.DigitsDataModule",
        "--ckpt_path",
        str(l2bn_checkpoint),
    )
    assert cli.model.hparams.arch == "small_cnn" and cli.model.hparams.norm == "l2bn"
    same_config = _cli(tmp_path, "test", "--config", QUICKSTART, "--ckpt_path", str(l2bn_checkpoint))
    rebuilt_acc = cli.trainer.callback_metrics["test/acc"].item()
    assert rebuilt_acc == same_config.trainer.callback_metrics["test/acc"].item()
    assert rebuilt_acc > 0.2  # trained for one epoch: well above the 10% of chance


def test_loading_a_checkpoint_into_a_different_norm_is_refused_outside_the_cli(l2bn_checkpoint):
    model = ImageClassifier(num_classes=10, input_shape=[1, 8, 8], arch="small_cnn", norm="bn")
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    with pytest.raises(CheckpointMismatchError, match="norm"):
        trainer.test(model, datamodule=DigitsDataModule(), ckpt_path=str(l2bn_checkpoint))


class _Interrupt(pl.Callback):
    """Stops fit after ``epochs`` epochs, as a killed job would (its last.ckpt is then written)."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


def _fit_weights(tmp_path: Path, *args: str, interrupt_after: int | None = None, ckpt_path: str | None = None):
    cli = _cli(tmp_path, "--config", QUICKSTART, "--trainer.max_epochs", "3", *args, run=False)
    if interrupt_after is not None:
        cli.trainer.callbacks.append(_Interrupt(interrupt_after))
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path)
    return {k: v.clone() for k, v in cli.model.state_dict().items()}, _run_dir(cli)


def test_resume_from_last_checkpoint_matches_uninterrupted_run(tmp_path):
    uninterrupted, _ = _fit_weights(tmp_path / "a")
    interrupted, run = _fit_weights(tmp_path / "b", interrupt_after=1)
    resumed, _ = _fit_weights(tmp_path / "b", ckpt_path=str(run / "checkpoints" / "last.ckpt"))
    assert any(not torch.equal(interrupted[k], uninterrupted[k]) for k in uninterrupted)
    for name, value in uninterrupted.items():
        torch.testing.assert_close(resumed[name], value, rtol=0, atol=0, msg=name)


def test_two_process_ddp_fit_through_the_cli_on_cpu(tmp_path):
    """A standalone `python cli.py` run (Lightning's ddp relaunches the script, so not in pytest)."""
    command = [
        sys.executable,
        "cli.py",
        "fit",
        "--config",
        QUICKSTART,
        "--trainer.strategy",
        "ddp",
        "--trainer.devices",
        "2",
        "--trainer.max_epochs",
        "2",
        "--trainer.sync_batchnorm",
        "true",
        "--trainer.logger",
        f'[{{"class_path": "pytorch_lightning.loggers.CSVLogger", "init_args": {{"save_dir": "{tmp_path}"}}}}]',
    ]
    proc = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        output, _ = proc.communicate(timeout=300)
    finally:  # never leave the relaunched rank behind, even after a timeout
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert proc.returncode == 0, output[-3000:]
    assert "Starting with 2 processes" in output or "MEMBER: 2/2" in output
    metrics = pd.read_csv(next(tmp_path.rglob("metrics.csv")))
    assert metrics["test/acc"].dropna().iloc[-1] > 0.2  # two short epochs; chance is 0.1
