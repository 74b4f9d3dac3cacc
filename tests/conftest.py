"""Shared fixtures: the synthetic TAU acoustic-scene set (16 kHz, 1-s clips) and two short runs on it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch  # imports no Triton; Lightning and torchvision do

if not torch.cuda.is_available():
    # the fused kernels' CPU tests (tests/test_fused.py) run them under Triton's interpreter, which
    # Triton reads when it is first imported
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from datamodules import write_synthetic_tau  # noqa: E402

#: sample rate and clip length of the ``synthetic_root`` fixture
TAU_RATE, TAU_DURATION = 16000, 1.0


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    """The synthetic set, written once per test session; read it, never change it."""
    return write_synthetic_tau(tmp_path_factory.mktemp("tau") / "data", sample_rate=TAU_RATE, duration=TAU_DURATION)


@pytest.fixture
def root(synthetic_root, tmp_path):
    """A private copy of the synthetic set to damage."""
    return shutil.copytree(synthetic_root, tmp_path / "data")


@pytest.fixture(scope="session")
def dcase_runs(tmp_path_factory, synthetic_root):
    """Two short runs (BN, L2BN) of ``configs/quickstart_dcase.yaml`` on the synthetic scenes, and
    each one's ``test`` summary: ``(folder with bn/ and l2bn/, {norm: summary})``."""
    from l2bn_lit.lit.cli import main

    config = str(Path(__file__).resolve().parents[1] / "configs" / "quickstart_dcase.yaml")
    folder = tmp_path_factory.mktemp("runs")
    summaries = {}
    for norm in ("bn", "l2bn"):
        main(
            [
                "fit",
                "--config",
                config,
                "--data.init_args.root",
                str(synthetic_root),
                "--model.init_args.norm",
                norm,
                "--trainer.max_epochs",
                "2",
                "--trainer.enable_progress_bar",
                "false",
                "--trainer.default_root_dir",
                str(folder / norm),
            ]
        )
        run = folder / norm / "csv" / "version_0"
        summaries[norm] = pd.read_csv(run / "dcase_summary.csv").set_index("metric")["value"]
    return folder, summaries
