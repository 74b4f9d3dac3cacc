"""Shared fixtures: the synthetic TAU acoustic-scene set (16 kHz, 1-s clips)."""

from __future__ import annotations

import shutil

import pytest

from datamodules import write_synthetic_tau

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
