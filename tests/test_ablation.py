"""``l2bn ablation``: cells of sweeps and the factor table, against hand computations."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
from scipy import stats

from l2bn_lit.commands import ablation


def _runs(bn: list[float], l2bn: list[float]) -> pd.DataFrame:
    seeds = list(range(len(bn)))
    return pd.DataFrame({"norm": ["bn"] * len(bn) + ["l2bn"] * len(l2bn), "seed": seeds + seeds, "test/acc": bn + l2bn})


def test_table_by_hand():
    cells = {"baseline": _runs([0.77, 0.78], [0.75, 0.77]), "init": _runs([0.76, 0.79], [0.77, 0.80])}
    table = ablation.ablation_table(cells, ["bn", "l2bn"], "test/acc").set_index("cell")
    assert table.loc["baseline", "bn mean"] == pytest.approx(0.775)
    assert table.loc["baseline", "l2bn - bn"] == pytest.approx(-0.015)  # gaps -0.02, -0.01
    half = stats.t.ppf(0.975, 1) * math.sqrt(((-0.02 + 0.015) ** 2 + (-0.01 + 0.015) ** 2) / 1) / math.sqrt(2)
    assert table.loc["baseline", "l2bn - bn ci low"] == pytest.approx(-0.015 - half)
    assert table.loc["init", "l2bn - bn"] == pytest.approx(0.01)  # gaps +0.01, +0.01
    assert table.loc["init", "gap change vs baseline"] == pytest.approx(0.025)  # +0.03, +0.02
    assert math.isnan(table.loc["baseline", "gap change vs baseline"])


def _record_sweeps(monkeypatch) -> list[list[str]]:
    """Replaces the sweep by one that writes a fixed table into its ``--out``; returns its argv list."""
    calls: list[list[str]] = []

    def fake_sweep(argv):
        calls.append(argv)
        out = Path(argv[argv.index("--out") + 1])
        out.mkdir(parents=True)
        _runs([0.7, 0.8], [0.7, 0.9]).to_csv(out / "sweep.csv", index=False)

    monkeypatch.setattr(ablation, "run_sweep", fake_sweep)
    return calls


def test_command_runs_each_cell_as_a_sweep_then_tabulates(tmp_path, monkeypatch):
    calls = _record_sweeps(monkeypatch)
    table = ablation.main(
        [
            "--config",
            "c.yaml",
            "--cell",
            "baseline=",
            "--cell",
            "init=--model.init_args.init torch",
            "--seeds",
            "0",
            "1",
            "--out",
            str(tmp_path),
            "--parallel",
            "2",
            "--",
            "--trainer.max_epochs",
            "4",
        ]
    )
    assert calls[0][-3:] == ["--", "--trainer.max_epochs", "4"]
    assert calls[1][-5:] == ["--", "--trainer.max_epochs", "4", "--model.init_args.init", "torch"]
    assert calls[1][calls[1].index("--out") + 1] == str(tmp_path / "init") and "--parallel" in calls[1]
    assert list(table["cell"]) == ["baseline", "init"]
    report = (tmp_path / "ablation.md").read_text()
    assert "`init`: `--model.init_args.init torch`" in report and (tmp_path / "ablation.csv").is_file()
    again = ablation.main(
        [
            "--config",
            "c.yaml",
            "--cell",
            "baseline=",
            "--cell",
            "init=--model.init_args.init torch",
            "--out",
            str(tmp_path),
            "--report-only",
        ]
    )
    assert len(calls) == 2 and again.equals(table)
    with pytest.raises(SystemExit, match="NAME=OPTIONS"):
        ablation.main(["--config", "c.yaml", "--cell", "no-equals-sign", "--out", str(tmp_path)])


def test_a_quoted_json_value_in_a_cell_stays_one_option(tmp_path, monkeypatch):
    calls = _record_sweeps(monkeypatch)
    cell = """shortcut_a=--model.init_args.arch_options '{"shortcut": "A"}' --data.init_args.std '[0.2, 0.2, 0.2]'"""
    ablation.main(["--config", "c.yaml", "--cell", cell, "--out", str(tmp_path)])
    assert calls[0][-4:] == [
        "--model.init_args.arch_options",
        '{"shortcut": "A"}',
        "--data.init_args.std",
        "[0.2, 0.2, 0.2]",
    ]
    assert (
        """`shortcut_a`: `--model.init_args.arch_options '{"shortcut": "A"}'"""
        in (tmp_path / "ablation.md").read_text()
    )
