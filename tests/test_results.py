"""The run collector against runs written by hand."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

from l2bn_lit.commands.results import main as results_main
from l2bn_lit.reports.runs import collect_runs, norm_label, scan_runs, summary_table


def _run(folder, norm, seed, accuracy):
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(
        yaml.safe_dump({"seed_everything": seed, "model": {"init_args": {"norm": norm}}})
    )
    pd.DataFrame({"epoch": [0, 1, 1], "val/acc": [0.5, 0.6, None], "test/acc": [None, None, accuracy]}).to_csv(
        folder / "metrics.csv", index=False
    )


def test_collect_and_summarize_by_hand(tmp_path):
    for norm, seed, acc in [("bn", 0, 0.80), ("bn", 1, 0.84), ("l2bn", 0, 0.85), ("l2bn", 1, 0.87)]:
        _run(tmp_path / f"{norm}_{seed}", norm, seed, acc)
    runs = collect_runs(tmp_path)
    assert sorted(runs["test/acc"]) == [0.80, 0.84, 0.85, 0.87]
    table = summary_table(runs).set_index("norm")
    assert table.loc["bn", "test/acc mean"] == pytest.approx(0.82)
    assert table.loc["bn", "test/acc std"] == pytest.approx(0.0282842712)  # sqrt(((0.02)^2 * 2) / 1)
    assert table.loc["l2bn", "runs"] == 2


def test_untested_run_is_an_error_naming_it(tmp_path):
    _run(tmp_path / "r", "bn", 0, None)
    with pytest.raises(ValueError, match="logged no 'test/acc'"):
        collect_runs(tmp_path)
    with pytest.raises(FileNotFoundError, match="no runs"):
        collect_runs(tmp_path / "empty")


def test_norm_options_make_their_own_group():
    assert norm_label("bn") == norm_label("bn", {}) == "bn"
    assert norm_label("l2bn", {"rescale": True, "eps": 0.001}) == "l2bn:eps=0.001,rescale=true"


def test_results_reports_finished_runs_and_lists_interrupted_ones_apart(tmp_path, capsys):
    _run(tmp_path / "bn_0", "bn", 0, 0.80)
    _run(tmp_path / "l2bn_0", "l2bn", 0, 0.85)
    _run(tmp_path / "l2bn_1", "l2bn", 1, None)  # interrupted before its test
    (tmp_path / "l2bn_1" / "checkpoints").mkdir()
    (tmp_path / "l2bn_1" / "checkpoints" / "last.ckpt").write_bytes(b"x")
    (tmp_path / "bn_1").mkdir()
    (tmp_path / "bn_1" / "config.yaml").write_text(
        yaml.safe_dump({"seed_everything": 1, "model": {"init_args": {"norm": "bn"}}})
    )
    finished, incomplete = scan_runs(tmp_path)
    assert sorted(finished["run"]) == ["bn_0", "l2bn_0"]
    assert incomplete.set_index("run").loc["l2bn_1", "last epoch"] == 1
    assert incomplete.set_index("run").loc["l2bn_1", "last.ckpt"].endswith("l2bn_1/checkpoints/last.ckpt")
    assert incomplete.set_index("run").loc["bn_1", "reason"] == "no metrics.csv"
    results_main([str(tmp_path)])
    out = capsys.readouterr().out
    table, rest = out.split("2 incomplete run(s)")
    assert "0.85" in table and "l2bn_1" not in table and "l2bn_1" in rest and "bn_1" in rest


def test_only_restricts_the_runs_considered(tmp_path):
    """A sweep over seed 0 is not stopped by an interrupted seed-1 run in the same folder (the sweep
    passes ``only``); the interrupted run is still an error for whoever asks for it."""
    _run(tmp_path / "bn" / "seed0", "bn", 0, 0.80)
    _run(tmp_path / "bn" / "seed1", "bn", 1, None)
    runs = collect_runs(tmp_path, only=lambda run: run.endswith("seed0"))
    assert runs["run"].tolist() == ["bn/seed0"]
    with pytest.raises(ValueError, match="bn/seed1 logged no 'test/acc'"):
        collect_runs(tmp_path, only=lambda run: run.endswith("seed1"))
