"""The DCASE report against a hand computation, and the report/submission files through the CLI."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from l2bn_lit.lit.cli import main
from l2bn_lit.reports.dcase_scores import dcase_report, write_submission

ROOT = Path(__file__).resolve().parents[1]
PROBS = np.array([[0.7, 0.2, 0.1], [0.5, 0.4, 0.1], [0.1, 0.8, 0.1], [0.2, 0.3, 0.5]])
LABELS = np.array([0, 1, 1, 2])
DEVICES = ["a", "a", "s4", "s1"]


def test_report_matches_a_hand_computation():
    report = dcase_report(PROBS, LABELS, DEVICES, ["x", "y", "z"])
    summary = dict(zip(report.summary.metric, report.summary.value))
    assert summary["accuracy"] == pytest.approx(3 / 4)
    assert summary["macro class-wise accuracy"] == pytest.approx((1 + 0.5 + 1) / 3)
    log_loss = -(math.log(0.7) + math.log(0.4) + math.log(0.8) + math.log(0.5)) / 4
    assert summary["log loss"] == pytest.approx(log_loss)
    classes = report.classes.set_index("class")
    assert classes.loc["y", "accuracy"] == pytest.approx(0.5) and classes.loc["y", "support"] == 2
    assert classes.loc["y", "log loss"] == pytest.approx(-(math.log(0.4) + math.log(0.8)) / 2)
    devices = report.devices.set_index("device")
    assert devices.loc["a", "accuracy"] == pytest.approx(0.5)
    assert devices.loc["a", "macro class-wise accuracy"] == pytest.approx(0.5)  # classes x (1.0) and y (0.0)
    assert devices.loc["real", "log loss"] == pytest.approx(-(math.log(0.7) + math.log(0.4)) / 2)
    assert devices.loc["seen simulated", "accuracy"] == 1.0 and devices.loc["unseen simulated", "support"] == 1
    assert report.confusion.values.tolist() == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]


def test_submission_file_format(tmp_path):
    write_submission(tmp_path / "s.csv", ["audio/0.wav", "audio/1.wav"], PROBS[:2], ["x", "y", "z"])
    lines = (tmp_path / "s.csv").read_text().splitlines()
    assert lines[0].split("\t") == ["filename", "scene_label", "x", "y", "z"]
    assert lines[1].split("\t")[:3] == ["audio/0.wav", "x", "0.700000"]


def test_cli_test_and_predict_write_the_dcase_files(tmp_path):
    logger = f'[{{"class_path": "pytorch_lightning.loggers.CSVLogger", "init_args": {{"save_dir": "{tmp_path}"}}}}]'
    common = [
        "--config",
        str(ROOT / "configs" / "quickstart_dcase.yaml"),
        "--data.init_args.root",
        str(tmp_path / "data"),
        "--trainer.logger",
        logger,
        "--trainer.enable_progress_bar",
        "false",
    ]
    fit = main(["fit", *common, "--trainer.max_epochs", "2"])
    run = Path(fit.trainer.log_dir)
    devices = pd.read_csv(run / "dcase_devices.csv")
    assert {"real", "seen simulated", "unseen simulated", "s4"} <= set(devices.device)
    summary = pd.read_csv(run / "dcase_summary.csv").set_index("metric")["value"]
    assert summary["accuracy"] == pytest.approx(fit.trainer.callback_metrics["test/acc"].item(), abs=1e-6)
    predicted = main(["predict", *common, "--ckpt_path", str(run / "checkpoints" / "last.ckpt")])
    submission = pd.read_csv(Path(predicted.trainer.log_dir) / "submission.csv", sep="\t")
    listed = pd.read_csv(tmp_path / "data" / "evaluation_setup" / "fold1_test.csv", sep="\t")
    assert submission["filename"].tolist() == listed["filename"].tolist()
    assert list(submission.columns[2:]) == fit.model.hparams.class_names
    np.testing.assert_allclose(submission.iloc[:, 2:].sum(axis=1), 1.0, atol=1e-5)


def test_submission_header_is_the_task_examples(tmp_path):
    """The header of the DCASE 2024/2025 Task 1 example output file (tab-separated)."""
    scenes = [
        "airport",
        "bus",
        "metro",
        "metro_station",
        "park",
        "public_square",
        "shopping_mall",
        "street_pedestrian",
        "street_traffic",
        "tram",
    ]
    write_submission(tmp_path / "output.csv", ["audio/1.wav"], np.full((1, 10), 0.1), scenes)
    header = (tmp_path / "output.csv").read_text().splitlines()[0]
    published = (
        "filename\tscene_label\tairport\tbus\tmetro\tmetro_station\tpark\tpublic_square\tshopping_mall"
        "\tstreet_pedestrian\tstreet_traffic\ttram"
    )
    assert header == published
