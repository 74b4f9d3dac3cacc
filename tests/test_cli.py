"""The CLI turns --trainer.sync_batchnorm true into L2BNLayerSync, never into plain SyncBatchNorm."""

from __future__ import annotations

import pytest
from pytorch_lightning.plugins.layer_sync import TorchSyncBatchNorm

from l2bn_lit import L2BNLayerSync
from l2bn_lit.lit.cli import main, with_l2bn_layer_sync

BASE = [
    "--model",
    "models.ImageClassifier",
    "--model.arch",
    "small_cnn",
    "--data",
    "datamodules.DigitsDataModule",
    "--trainer.accelerator",
    "cpu",
    "--trainer.strategy",
    "ddp",
    "--trainer.devices",
    "2",
    "--trainer.logger",
    "false",
]


def _layer_sync(args):
    cli = main(BASE + args, run=False)
    return cli.trainer.strategy._layer_sync


def test_sync_batchnorm_flag_installs_l2bn_layer_sync():
    assert isinstance(_layer_sync(["--trainer.sync_batchnorm", "true"]), L2BNLayerSync)
    assert _layer_sync([]) is None


def test_plugin_list_gets_l2bn_layer_sync_once_and_conflicts_are_refused():
    existing = L2BNLayerSync()
    assert with_l2bn_layer_sync([existing]) == [existing]
    assert isinstance(with_l2bn_layer_sync(None)[0], L2BNLayerSync)
    with pytest.raises(ValueError, match="replaces the LayerSync plugin\\(s\\) TorchSyncBatchNorm"):
        with_l2bn_layer_sync([TorchSyncBatchNorm()])


def test_progress_bar_is_rich_and_can_be_switched_off():
    from pytorch_lightning.callbacks import RichProgressBar

    assert any(isinstance(cb, RichProgressBar) for cb in main(BASE, run=False).trainer.callbacks)
    quiet = main(BASE + ["--trainer.enable_progress_bar", "false"], run=False)
    assert quiet.trainer.progress_bar_callback is None


def test_fast_dev_run_writes_nothing_into_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = main(
        [
            "fit",
            "--model",
            "models.ImageClassifier",
            "--model.arch",
            "small_cnn",
            "--data",
            "datamodules.DigitsDataModule",
            "--trainer.accelerator",
            "cpu",
            "--trainer.fast_dev_run",
            "true",
            "--test_after_fit",
            "true",
        ]
    )
    assert cli.trainer.state.finished
    assert list(tmp_path.iterdir()) == []


FIT_QUICK = [
    "fit",
    "--model",
    "models.ImageClassifier",
    "--model.arch",
    "small_cnn",
    "--data",
    "datamodules.DigitsDataModule",
    "--trainer.accelerator",
    "cpu",
    "--trainer.max_epochs",
    "1",
    "--trainer.limit_train_batches",
    "2",
    "--trainer.limit_val_batches",
    "1",
    "--trainer.enable_progress_bar",
    "false",
]


def test_default_loggers_follow_default_root_dir(tmp_path, monkeypatch):
    """Logs, config and checkpoints go under --trainer.default_root_dir; nothing into the working folder."""
    cwd, root = tmp_path / "cwd", tmp_path / "job"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    cli = main([*FIT_QUICK, "--trainer.default_root_dir", str(root)])
    assert list(cwd.iterdir()) == []
    run = root / "csv" / "version_0"
    assert (run / "metrics.csv").is_file() and (run / "config.yaml").is_file()
    assert list((run / "checkpoints").glob("*.ckpt"))
    assert cli.trainer.log_dir == str(run)


def test_default_loggers_write_to_runs_without_default_root_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(FIT_QUICK)
    assert (tmp_path / "runs" / "csv" / "version_0" / "metrics.csv").is_file()


def test_an_explicit_logger_keeps_its_own_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    logger = '{"class_path": "pytorch_lightning.loggers.CSVLogger", "init_args": {"save_dir": "mine"}}'
    main([*FIT_QUICK, "--trainer.default_root_dir", str(tmp_path / "job"), "--trainer.logger", logger])
    assert (tmp_path / "mine" / "lightning_logs" / "version_0" / "metrics.csv").is_file()
