"""Runs that survive a cluster, end to end through the CLI in subprocesses (as a scheduler runs them):
a SIGKILL after an epoch and a SIGTERM/SIGUSR1 mid-epoch, each resumed from ``last.ckpt`` to weights
equal to an uninterrupted run's; a diverged run stops with a short error and no best checkpoint.

Every run is the quickstart (digits, small CNN, L2BN) for 4 epochs of 20 steps with mixup, so that
the random state matters: without the saved RNG state the resumed weights differ (by ~1e-2). The
first run of every test starts at once (independent processes, one thread each); the resumes follow
in their tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from processes import run_together

ROOT = Path(__file__).resolve().parents[1]
FIT = [
    sys.executable,
    str(ROOT / "cli.py"),
    "fit",
    "--config",
    str(ROOT / "configs" / "quickstart.yaml"),
    "--trainer.max_epochs",
    "4",
    "--trainer.enable_progress_bar",
    "false",
    "--test_after_fit",
    "false",
    "--model.init_args.mixup_alpha",
    "0.2",
]
STEPS_PER_EPOCH = 20  # 1,293 training digits, batches of 64, the last one dropped


#: every run on one thread: up to five run at once, and resumed weights are compared bit for bit
ENVIRONMENT = {
    **{k: v for k, v in os.environ.items() if k != "L2BN_DEBUG"},
    "PYTHONPATH": str(ROOT / "tests"),  # the SignalAt callback
    "OMP_NUM_THREADS": "1",
}


def _command(root: Path, *options: str) -> list[str]:
    """The quickstart fit writing under ``root`` (its ``default_root_dir``), with ``options`` added."""
    return [*FIT, "--trainer.default_root_dir", str(root), *options]


def _fit(root: Path, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        _command(root, *options),
        cwd=root.parent,
        env=ENVIRONMENT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _signal_at(tmp_path: Path, epoch: int, batch: int, signal: str) -> list[str]:
    """Options that add a callback sending ``signal`` when training batch ``batch`` of ``epoch`` starts."""
    config = tmp_path / f"{signal}.yaml"
    callback = {"class_path": "faults.SignalAt", "init_args": {"epoch": epoch, "batch": batch, "signal": signal}}
    config.write_text(yaml.safe_dump({"trainer": {"callbacks": [callback]}}))
    return ["--config", str(config)]


def _run(root: Path) -> Path:
    runs = sorted((root / "csv").iterdir())
    assert [r.name for r in runs] == ["version_0"], "a resumed run continues in its own folder"
    return runs[0]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def first_runs(tmp_path_factory) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    """Each test's first run, all started at once (independent processes): by name, its root folder
    (``default_root_dir``) and the finished process. The resumes run in the tests, after their checks."""
    folder = tmp_path_factory.mktemp("first_runs")
    options = {
        "uninterrupted": [],
        "diverged": ["--model.init_args.lr", "1e6", "--model.init_args.mixup_alpha", "0"],
        **{signal: _signal_at(folder, 2, 3, signal) for signal in ("SIGKILL", "SIGTERM", "SIGUSR1")},
    }
    roots = {name: folder / name / "runs" for name in options}
    for root in roots.values():
        root.parent.mkdir()
    results = run_together(
        *(_command(roots[name], *extra) for name, extra in options.items()),
        timeout=400,
        cwds=[root.parent for root in roots.values()],
        env=ENVIRONMENT,
    )
    return {name: (roots[name], result) for name, result in zip(options, results)}


@pytest.fixture(scope="module")
def uninterrupted(first_runs) -> Path:
    root, result = first_runs["uninterrupted"]
    assert result.returncode == 0, result.stderr[-2000:]
    return _run(root)


def _assert_same_weights(run: Path, reference: Path) -> None:
    mine, theirs = _weights(run), _weights(reference)
    assert mine.keys() == theirs.keys()
    for key in theirs:
        assert torch.equal(mine[key], theirs[key]), key


def test_sigkill_after_an_epoch_resumes_from_last_ckpt_to_the_uninterrupted_weights(uninterrupted, first_runs):
    root, killed = first_runs["SIGKILL"]
    assert killed.returncode == -9
    run = _run(root)
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert (last["epoch"], last["global_step"]) == (1, 2 * STEPS_PER_EPOCH)  # the last completed epoch, not the best
    assert not list(run.glob("checkpoints/.*.partial"))

    resumed = _fit(root, "--ckpt_path", str(run / "checkpoints" / "last.ckpt"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _run(root) == run
    _assert_same_weights(run, uninterrupted)
    metrics = pd.read_csv(run / "metrics.csv")
    validated = metrics.dropna(subset=["val/acc"])
    assert list(validated["epoch"]) == [0, 1, 2, 3]  # each epoch once: the killed epoch's rows were not kept twice
    reference = pd.read_csv(uninterrupted / "metrics.csv").dropna(subset=["val/acc"])
    assert list(validated["val/acc"]) == list(reference["val/acc"])
    best = sorted(p.name for p in run.glob("checkpoints/best-*.ckpt"))
    assert best == sorted(p.name for p in uninterrupted.glob("checkpoints/best-*.ckpt"))  # the choice saw every epoch
    assert "continued from" in (run / "resumes.txt").read_text()


@pytest.mark.parametrize("signal,status", [("SIGTERM", 143), ("SIGUSR1", 138)])
def test_preemption_signal_saves_the_current_state_and_exits_non_zero(signal, status, uninterrupted, first_runs):
    root, stopped = first_runs[signal]
    assert stopped.returncode == status, stopped.stderr[-2000:]
    assert f"preempted: {signal} at epoch 2, global step 44" in stopped.stderr
    run = _run(root)
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert (last["epoch"], last["global_step"]) == (2, 2 * STEPS_PER_EPOCH + 4)  # mid-epoch: batches 0-3 of epoch 2
    assert last["DigitsDataModule"]["train_batches_done"] == 4
    assert not list(run.glob("checkpoints/.*.partial"))
    if signal == "SIGTERM":  # the same resume path for both; run it once
        resumed = _fit(root, "--ckpt_path", str(run / "checkpoints" / "last.ckpt"))
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        _assert_same_weights(run, uninterrupted)
        steps = pd.read_csv(run / "metrics.csv")["step"]
        assert steps.is_monotonic_increasing and not steps.duplicated().any()


def test_a_diverged_run_stops_with_a_short_error_and_no_best_checkpoint(first_runs):
    root, result = first_runs["diverged"]
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "training diverged" in errors[0] and "at epoch 0" in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not list(root.rglob("best-*.ckpt"))
