"""The prepared GPU check's CPU path runs end to end and writes its report (benchmarks/gpu_check.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_cpu_quick_writes_every_section(tmp_path):
    report = tmp_path / "report.md"
    result = subprocess.run(
        [
            sys.executable,
            "benchmarks/gpu_check.py",
            "--device",
            "cpu",
            "--quick",
            "--work",
            str(tmp_path / "work"),
            "--report",
            str(report),
            "--parallel",
            "2",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    text = report.read_text()
    assert "## CIFAR-10 ResNet-20, BN vs L2BN, 2 seeds, 1 epochs" in text
    assert "| l2bn - bn    | test/acc" in text  # the sweep's paired comparison
    recipe = text.split("### The recipe per run")[1].split("##")[0]  # one row per run, timed by TrainingClock
    assert "s to 90% val acc" in recipe and recipe.count("| bn/seed") == 2 and recipe.count("| l2bn/seed") == 2
    assert "## bench_norm cpu float32 eager" in text and "L2BN2d/BN time" in text
    assert "## bench_train_step cpu channels_last float32" in text and "| resnet20 |" in text
    assert " — exit 0, " in text and "exit 1" not in text
