"""The CLI turns --trainer.sync_batchnorm true into L2BNLayerSync, never into plain SyncBatchNorm."""

from __future__ import annotations

import pytest
from pytorch_lightning.plugins.layer_sync import TorchSyncBatchNorm

from l2bn_lit import L2BNLayerSync
from l2bn_lit.cli import main, with_l2bn_layer_sync

BASE = ["--model", "models.ImageClassifier", "--model.arch", "small_cnn", "--data", "datamodules.DigitsDataModule",
        "--trainer.accelerator", "cpu",
        "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.logger", "false"]


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
    cli = main(["fit", "--model", "models.ImageClassifier", "--model.arch", "small_cnn", "--data",
                "datamodules.DigitsDataModule", "--trainer.accelerator", "cpu", "--trainer.fast_dev_run", "true",
                "--test_after_fit", "true"])
    assert cli.trainer.state.finished
    assert list(tmp_path.iterdir()) == []
