"""The prepared GPU check's CPU path runs end to end and writes its report (benchmarks/gpu_check.py)."""

from __future__ import annotations

import importlib.util
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
    assert "## CIFAR-10 ResNet-20, BN vs L2BN, black padding (l2bn sweep), 2 seeds, 1 epochs" in text
    assert "| l2bn - bn    | test/acc" in text  # the sweep's paired comparison
    recipe = text.split("### The recipe per run")[1].split("##")[0]  # one row per run, timed by TrainingClock
    assert "s to 90% val acc" in recipe and recipe.count("| bn/seed") == 2 and recipe.count("| l2bn/seed") == 2
    assert "## bench_norm cpu float32 eager" in text and "L2BN2d/BN time" in text
    assert "## bench_train_step cpu channels_last float32" in text and "| resnet20 |" in text
    assert " — exit 0, " in text and "exit 1" not in text


def test_several_paddings_run_as_an_ablation_with_one_cell_each(tmp_path):
    """``--padding black reflect``: one ``l2bn ablation`` with a cell per padding (black the reference), the
    common options after ``--``; one padding stays one ``l2bn sweep`` with that padding's options."""
    gpu_check = _gpu_check()
    common = ["--trainer.max_epochs", "3"]
    title, command = gpu_check.comparison_command("python", tmp_path, 3, 6, ["black", "reflect"], common)
    assert "padding black vs reflect" in title
    assert command[:4] == ["python", "-m", "l2bn_lit", "ablation"]
    cells = [command[i + 1] for i, arg in enumerate(command) if arg == "--cell"]
    assert cells == ["black=", "reflect=--data.init_args.padding_mode reflect"]
    assert shlex.split(cells[1].split("=", 1)[1]) == ["--data.init_args.padding_mode", "reflect"]
    assert command[command.index("--") + 1 :] == common
    assert command[command.index("--seeds") + 1 : command.index("--out")] == ["0", "1", "2"]
    title, command = gpu_check.comparison_command("python", tmp_path, 2, 6, ["mean"], common)
    assert command[3] == "sweep" and command[-2:] == ["--data.init_args.pad_fill", "mean"]
    assert command[command.index("--") + 1 :] == [*common, "--data.init_args.pad_fill", "mean"]


def test_recipe_table_has_one_row_per_run_of_every_padding(tmp_path):
    """The recipe table reads ``<padding>/<norm>/seed*`` (an ablation) as well as ``<norm>/seed*``: per run its
    test accuracy, training seconds, images/s and the seconds to 90% validation accuracy (the first epoch there)."""
    for padding, norm, seed in [("black", "bn", 0), ("black", "l2bn", 0), ("reflect", "bn", 0), ("reflect", "l2bn", 0)]:
        run = tmp_path / padding / norm / f"seed{seed}"
        run.mkdir(parents=True)
        reaches = padding == "reflect"
        pd.DataFrame(
            {
                "epoch": [0, 1, 1],
                "step": [10, 20, 20],
                "val/acc": [0.5, 0.95 if reaches else 0.8, None],
                "time/train_s": [30.0, 61.0, None],
                "time/images_per_s": [1000.0, 1200.0, None],
                "test/acc": [None, None, 0.91],
            }
        ).to_csv(run / "metrics.csv", index=False)
    table = "\n".join(_gpu_check().recipe_table(tmp_path))
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in table.splitlines() if "/seed0" in line]
    assert [row[0] for row in rows] == ["black/bn/seed0", "black/l2bn/seed0", "reflect/bn/seed0", "reflect/l2bn/seed0"]
    never, at_61_s = ["0.91", "61", "1100", "not reached"], ["0.91", "61", "1100", "61.0"]
    assert [row[1:] for row in rows] == [never, never, at_61_s, at_61_s]
