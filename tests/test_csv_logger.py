"""The run's metrics.csv across a resume: Lightning's CSVLogger erases it, RunCSVLogger continues it."""

from __future__ import annotations

import warnings

import pandas as pd
from pytorch_lightning.loggers import CSVLogger

from l2bn_lit.lit.csv_logger import RunCSVLogger


def _log(logger, rows: list[tuple[int, int, float]]) -> None:
    for epoch, step, value in rows:
        logger.log_metrics({"epoch": epoch, "val/acc": value}, step=step)
    logger.save()


def test_lightning_erases_a_reused_folders_metrics_and_run_logger_continues_them(tmp_path):
    first = [(0, 19, 0.5), (1, 39, 0.6), (2, 59, 0.7)]  # epochs 0-2; the checkpoint was written after step 40
    _log(CSVLogger(tmp_path, name="csv", version="version_0"), first)
    path = tmp_path / "csv" / "version_0" / "metrics.csv"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _log(CSVLogger(tmp_path, name="csv", version="version_0"), [(2, 59, 0.8)])
    assert list(pd.read_csv(path)["epoch"]) == [2]  # the library behaviour: the epochs before are gone

    _log(CSVLogger(tmp_path, name="csv", version="version_1"), first)
    resumed = RunCSVLogger(tmp_path, name="csv", version="version_1", resume_step=40)
    _log(resumed, [(2, 59, 0.8), (3, 79, 0.9)])
    table = pd.read_csv(tmp_path / "csv" / "version_1" / "metrics.csv")
    assert list(table["epoch"]) == [0, 1, 2, 3]  # epoch 2 of the interrupted run dropped, logged again once
    assert list(table["val/acc"]) == [0.5, 0.6, 0.8, 0.9]
    assert not list((tmp_path / "csv" / "version_1").glob("*.partial"))
