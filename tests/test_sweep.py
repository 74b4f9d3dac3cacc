"""The sweep: statistics by hand, and a tiny real sweep (subprocess CLI runs) that resumes."""

from __future__ import annotations

import json
import math
import os
import shlex
from pathlib import Path

import pandas as pd
import pytest

from l2bn_lit.commands.sweep import main, run_environment
from l2bn_lit.reports.runs import parse_arm, summary_table
from l2bn_lit.reports.stats import paired_differences

ROOT = Path(__file__).resolve().parents[1]
T_975_2DF = 4.302653  # Student t quantile 0.975, 2 degrees of freedom (printed tables: 4.303)


def _runs() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "norm": ["bn"] * 3 + ["l2bn"] * 3,
            "seed": [0, 1, 2, 2, 0, 1],  # pairing is by seed, not by row order
            "test/acc": [0.80, 0.82, 0.84, 0.86, 0.81, 0.85],
        }
    )


def test_summary_and_paired_difference_by_hand():
    summary = summary_table(_runs(), ["test/acc"], ["bn", "l2bn"]).set_index("norm")
    assert summary.loc["bn", "test/acc mean"] == pytest.approx(0.82)
    assert summary.loc["bn", "test/acc std"] == pytest.approx(0.02)
    assert summary.loc["l2bn", "runs"] == 3
    (row,) = paired_differences(_runs(), ["test/acc"], ["bn", "l2bn"]).to_dict("records")
    # differences by seed: 0.81-0.80, 0.85-0.82, 0.86-0.84 = 0.01, 0.03, 0.02: mean 0.02, std 0.01
    assert row["pairs"] == 3 and row["mean"] == pytest.approx(0.02) and row["std"] == pytest.approx(0.01)
    half = T_975_2DF * 0.01 / math.sqrt(3)
    assert (row["ci low"], row["ci high"]) == pytest.approx((0.02 - half, 0.02 + half))


def test_a_single_pair_has_no_interval():
    runs = _runs()[_runs()["seed"] == 0]
    (row,) = paired_differences(runs, ["test/acc"], ["bn", "l2bn"]).to_dict("records")
    assert row["pairs"] == 1 and math.isnan(row["ci low"])


def test_parallel_runs_split_the_cpu_cores_unless_the_user_chose(monkeypatch):
    """``--parallel K``: each run gets ``OMP_NUM_THREADS`` = cores // K (at least 1); one run at a time, or
    a user's own ``OMP_NUM_THREADS``, leaves the environment as it is."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert run_environment(3)["OMP_NUM_THREADS"] == "2"
    assert run_environment(16)["OMP_NUM_THREADS"] == "1"
    assert "OMP_NUM_THREADS" not in run_environment(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert run_environment(3)["OMP_NUM_THREADS"] == "4"


def test_tiny_sweep_runs_every_combination_collects_and_resumes(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    out = tmp_path / "sweep"
    argv = [
        "--config",
        "configs/quickstart.yaml",
        "--norms",
        "bn",
        "l2bn",
        "--seeds",
        "0",
        "1",
        "--out",
        str(out),
        "--analysis",
        "--parallel",
        "2",
        "--",
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "3",
        "--trainer.enable_progress_bar",
        "false",
    ]
    runs = main(argv)
    assert sorted(zip(runs["norm"], runs["seed"])) == [("bn", 0), ("bn", 1), ("l2bn", 0), ("l2bn", 1)]
    for _, row in runs.iterrows():
        run = out / row["norm"] / f"seed{row['seed']}"
        assert row["test/acc"] == pd.read_csv(run / "metrics.csv")["test/acc"].dropna().iloc[-1]
        config = (run / "config.yaml").read_text()
        assert f"norm: {row['norm']}" in config and f"seed_everything: {row['seed']}" in config
    assert pd.read_csv(out / "sweep.csv").shape[0] == 4
    report = (out / "sweep.md").read_text()
    assert "| l2bn - bn    | test/acc" in report and "--norms bn l2bn --seeds 0 1 --analysis" in report
    for name in ("geometry", "feature_norms", "grad_norms"):
        assert (out / f"compare_{name}.png").stat().st_size > 1000
        assert (out / "l2bn" / "seed1" / f"{name}.csv").is_file()

    interrupted = out / "l2bn" / "seed1"
    metrics = pd.read_csv(interrupted / "metrics.csv")
    trained = metrics[metrics["test/acc"].isna()]
    trained.to_csv(interrupted / "metrics.csv", index=False)  # as if stopped before its test
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert f"2 runs at a time, each with OMP_NUM_THREADS={max(1, cores // 2)}" in capsys.readouterr().out
    again = main(argv)
    printed = capsys.readouterr().out
    assert printed.count("done before, kept") == 3
    assert f"l2bn seed 1: interrupted before, continuing from {interrupted / 'checkpoints' / 'last.ckpt'}" in printed
    assert len(again) == 4
    continued = pd.read_csv(interrupted / "metrics.csv")
    assert continued["test/acc"].notna().sum() == 1 and len(continued) == len(trained) + 1  # its rows kept, once

    main([*argv[:13], "--dry-run", *argv[13:]])
    commands = [line for line in capsys.readouterr().out.splitlines() if "-m l2bn_lit fit" in line]
    assert len(commands) == 4 and all("--trainer.max_epochs 1" in c for c in commands)


def test_a_norm_with_options_is_its_own_arm(tmp_path, capsys):
    assert parse_arm("l2bn:rescale=true,eps=1e-3") == ("l2bn", {"rescale": True, "eps": 1e-3})
    with pytest.raises(ValueError, match="key=value pairs"):
        parse_arm("l2bn:rescale")
    config = str(ROOT / "configs" / "quickstart.yaml")
    main(
        ["--config", config, "--norms", "bn", "l2bn:rescale=True", "--seeds", "0", "--out", str(tmp_path), "--dry-run"]
    )
    bn, rescaled = capsys.readouterr().out.splitlines()
    bn, rescaled = shlex.split(bn), shlex.split(rescaled)  # POSIX shell lines, for job scripts
    assert "--model.init_args.norm_options" not in bn
    assert rescaled[rescaled.index("--model.init_args.norm") + 1] == "l2bn"
    assert json.loads(rescaled[rescaled.index("--model.init_args.norm_options") + 1]) == {"rescale": True}
    assert "l2bn-rescale=true" in " ".join(rescaled)  # its run folder


def test_missing_config_is_named(tmp_path):
    with pytest.raises(SystemExit):
        main(["--config", str(tmp_path / "nope.yaml")])


def test_a_failed_run_stops_the_sweep_and_names_its_log(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    argv = [
        "--config",
        "configs/quickstart.yaml",
        "--norms",
        "bn",
        "l2bn",
        "--seeds",
        "0",
        "--out",
        str(tmp_path),
        "--parallel",
        "2",
        "--",
        "--model.init_args.lr",
        "fast",
    ]
    with pytest.raises(SystemExit, match=r"failed \(exit [0-9]+\); its output: .*seed0\.log"):
        main(argv)
