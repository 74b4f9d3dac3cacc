"""``l2bn evaluate``: many checkpoints in one pass, against separate ``test`` runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tau_lists import write_2025_eval_list

from l2bn_lit.commands.evaluate import find_checkpoints
from l2bn_lit.commands.evaluate import main as evaluate
from l2bn_lit.lit.classification_module import CheckpointMismatchError
from l2bn_lit.lit.cli import main

ROOT = Path(__file__).resolve().parents[1]
DCASE = str(ROOT / "configs" / "quickstart_dcase.yaml")


def test_leaderboard_rows_equal_separate_test_runs_and_the_ensemble_is_the_mean(dcase_runs, synthetic_root, tmp_path):
    folder, summaries = dcase_runs
    table = evaluate(
        [
            "--config",
            DCASE,
            "--data.init_args.root",
            str(synthetic_root),
            str(folder / "bn"),
            str(folder / "l2bn"),
            "--out",
            str(tmp_path / "board"),
            "--precision",
            "32",
        ]
    )  # as the test runs
    assert list(table["norm"]) == ["bn", "l2bn", "-"]
    for index, norm in enumerate(("bn", "l2bn")):
        row = table.iloc[index]
        assert "best-epoch=" in row["checkpoint"]  # each run's best checkpoint (as test_after_fit tested)
        for metric in ("macro class-wise accuracy", "accuracy", "log loss"):
            assert row[metric] == pytest.approx(summaries[norm][metric], abs=1e-6), (norm, metric)
    assert {"macro accuracy, known devices", "macro accuracy, unknown devices"} <= set(table.columns)
    assert table.iloc[2]["checkpoint"] == "ensemble (mean of 2)"
    assert table.iloc[2]["parameters"] == table.iloc[0]["parameters"] + table.iloc[1]["parameters"]
    assert (table["parameter memory (B)"] == 4 * table["parameters"]).all() and set(table["precision"]) == {"32"}
    written = pd.read_csv(tmp_path / "board" / "leaderboard.csv")
    assert (
        written.shape == table.shape and (tmp_path / "board" / "leaderboard.md").read_text().count("\n|") == 5
    )  # header, rule, 3 rows


def test_ensemble_row_is_the_mean_of_the_models_probabilities(dcase_runs, synthetic_root, tmp_path, monkeypatch):
    import l2bn_lit.commands.evaluate as module

    folder, _ = dcase_runs
    captured = {}
    real = module.evaluate_checkpoints

    def spy(models, loader, device, transfer=None):
        probs, labels = real(models, loader, device, transfer)
        captured.update(probs=probs, labels=labels, frontend_clips=sum(calls))
        return probs, labels

    calls = []
    monkeypatch.setattr(module, "evaluate_checkpoints", spy)
    from models.frontend import LogMel

    original = LogMel.forward
    monkeypatch.setattr(LogMel, "forward", lambda self, wave: calls.append(len(wave)) or original(self, wave))
    table = evaluate(
        ["--config", DCASE, "--data.init_args.root", str(synthetic_root), str(folder), "--out", str(tmp_path)]
    )
    mean = np.mean(captured["probs"], axis=0)
    labels = captured["labels"]
    assert table.iloc[-1]["accuracy"] == pytest.approx(float((mean.argmax(1) == labels).mean()))
    assert table.iloc[-1]["log loss"] == pytest.approx(float(-np.log(mean[np.arange(len(labels)), labels]).mean()))
    assert captured["frontend_clips"] == len(labels)  # both models share one front-end: each log-mel computed once


def test_checkpoints_that_do_not_fit_the_data_are_refused(dcase_runs, tmp_path):
    folder, _ = dcase_runs
    with pytest.raises(
        CheckpointMismatchError, match=r"does not fit the data: num_classes: data=10 checkpoint=5.*class_names"
    ):
        evaluate(["--config", str(ROOT / "configs" / "quickstart.yaml"), str(folder / "bn"), "--out", str(tmp_path)])
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        find_checkpoints([str(tmp_path / "nothing")])


def test_device_specific_models_route_their_devices_clips(dcase_runs, synthetic_root, tmp_path, monkeypatch):
    import l2bn_lit.commands.evaluate as module

    folder, _ = dcase_runs
    captured = {}
    real = module.evaluate_checkpoints

    def spy(models, loader, device, transfer=None):
        captured["probs"], captured["labels"] = real(models, loader, device, transfer)
        return captured["probs"], captured["labels"]

    monkeypatch.setattr(module, "evaluate_checkpoints", spy)
    general, device_a = find_checkpoints([str(folder / "bn")])[0], find_checkpoints([str(folder / "l2bn")])[0]
    table = evaluate(
        [
            "--config",
            DCASE,
            "--data.init_args.root",
            str(synthetic_root),
            str(general),
            "--device-model",
            f"a={device_a}",
            "--out",
            str(tmp_path),
        ]
    )
    test = pd.read_csv(synthetic_root / "evaluation_setup" / "fold1_evaluate.csv", sep="\t")
    is_a = test["filename"].str.endswith("-a.wav").to_numpy()
    assert 0 < is_a.sum() < len(is_a)
    bn, l2bn = captured["probs"]
    routed = np.where(is_a[:, None], l2bn, bn)
    labels = captured["labels"]
    assert table.iloc[-1]["checkpoint"].startswith("device-specific (a;")
    assert table.iloc[-1]["log loss"] == pytest.approx(float(-np.log(routed[np.arange(len(labels)), labels]).mean()))
    with pytest.raises(ValueError, match="--device-model 'a': give DEVICE=CHECKPOINT"):
        evaluate(["--config", DCASE, "--data.init_args.root", str(synthetic_root), str(general), "--device-model", "a"])


def test_predict_writes_the_challenge_output_file(dcase_runs, synthetic_root, tmp_path):
    folder, _ = dcase_runs
    evaluate(
        [
            "--config",
            DCASE,
            "--data.init_args.root",
            str(synthetic_root),
            str(folder),
            "--split",
            "predict",
            "--out",
            str(tmp_path),
        ]
    )
    output = pd.read_csv(tmp_path / "output.csv", sep="\t")
    listed = pd.read_csv(synthetic_root / "evaluation_setup" / "fold1_test.csv", sep="\t")["filename"]
    assert list(output.columns) == ["filename", "scene_label", "airport", "bus", "metro", "park", "street_traffic"]
    assert output["filename"].tolist() == listed.tolist()
    probs = output.iloc[:, 2:].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
    assert (output["scene_label"] == output.columns[2:][probs.argmax(1)]).all()


def test_device_ids_of_a_2025_evaluation_list_route_the_clips_and_a_missing_one_is_an_error(dcase_runs, root, tmp_path):
    folder, _ = dcase_runs
    general, device_a = find_checkpoints([str(folder / "bn")])[0], find_checkpoints([str(folder / "l2bn")])[0]
    listed = write_2025_eval_list(root, with_devices=True)
    common = [
        "--config",
        DCASE,
        "--data.init_args.root",
        str(root),
        "--data.init_args.predict_list",
        listed,
        "--split",
        "predict",
    ]

    def output(*checkpoints: str, out: str) -> pd.DataFrame:
        evaluate([*common, *checkpoints, "--out", str(tmp_path / out)])
        return pd.read_csv(tmp_path / out / "output.csv", sep="\t")

    routed = output(str(general), "--device-model", f"a={device_a}", out="routed")
    alone = {"bn": output(str(general), out="bn"), "l2bn": output(str(device_a), out="l2bn")}
    is_a = (pd.read_csv(root / listed, sep="\t")["device_id"] == "a").to_numpy()
    assert 0 < is_a.sum() < len(is_a)
    columns = routed.columns[2:]
    np.testing.assert_allclose(routed.loc[is_a, columns], alone["l2bn"].loc[is_a, columns], atol=1e-6)
    np.testing.assert_allclose(routed.loc[~is_a, columns], alone["bn"].loc[~is_a, columns], atol=1e-6)

    bare = write_2025_eval_list(root, with_devices=False)  # no device column, and the names carry none
    with pytest.raises(
        ValueError, match=r"--device-model: \d+ clip\(s\) of the list have no recording device, e.g. audio/eval_0.wav"
    ):
        evaluate(
            [
                *common[:-4],
                "--data.init_args.predict_list",
                bare,
                "--split",
                "predict",
                str(general),
                "--device-model",
                f"a={device_a}",
                "--out",
                str(tmp_path / "bare"),
            ]
        )


def test_audio_models_are_evaluated_at_16_bit_as_they_ship(dcase_runs, synthetic_root, tmp_path, monkeypatch):
    """By default the network on the features runs in float16 (the baselines' model.half()): the
    leaderboard's probabilities are those of the half-precision network, its memory 2 bytes per parameter."""
    import torch

    import l2bn_lit.commands.evaluate as module

    folder, _ = dcase_runs
    captured = {}
    real = module.evaluate_checkpoints

    def spy(models, loader, device, transfer=None):
        captured["dtypes"] = [next(m.feature_network.parameters()).dtype for m in models]
        captured["probs"], captured["labels"] = real(models, loader, device, transfer)
        return captured["probs"], captured["labels"]

    monkeypatch.setattr(module, "evaluate_checkpoints", spy)
    options = ["--config", DCASE, "--data.init_args.root", str(synthetic_root), str(folder / "l2bn")]
    half = evaluate([*options, "--out", str(tmp_path / "16")])
    assert captured["dtypes"] == [torch.float16] and half.iloc[0]["precision"] == "16"
    assert half.iloc[0]["parameter memory (B)"] == 2 * half.iloc[0]["parameters"]
    probs16 = captured["probs"][0]
    full = evaluate([*options, "--out", str(tmp_path / "32"), "--precision", "32"])
    probs32 = captured["probs"][0]
    assert not np.array_equal(probs16, probs32) and np.abs(probs16 - probs32).max() < 1e-2  # half rounding, no more
    assert abs(half.iloc[0]["accuracy"] - full.iloc[0]["accuracy"]) <= 2 / len(captured["labels"])
    with pytest.raises(ValueError, match="--precision 16 is for the DCASE audio models"):
        module._set_precision([object()], "16")


def test_predict_runs_the_network_at_16_bit(dcase_runs, synthetic_root, tmp_path):
    import torch

    folder, _ = dcase_runs
    ckpt = find_checkpoints([str(folder / "l2bn")])[0]
    cli = main(
        [
            "predict",
            "--config",
            DCASE,
            "--data.init_args.root",
            str(synthetic_root),
            "--ckpt_path",
            str(ckpt),
            "--trainer.default_root_dir",
            str(tmp_path),
            "--trainer.enable_progress_bar",
            "false",
        ]
    )
    assert next(cli.model.feature_network.parameters()).dtype == torch.float16
    evaluate(
        [
            "--config",
            DCASE,
            "--data.init_args.root",
            str(synthetic_root),
            str(ckpt),
            "--split",
            "predict",
            "--out",
            str(tmp_path / "e"),
        ]
    )
    by_evaluate = pd.read_csv(tmp_path / "e" / "output.csv", sep="\t")
    submission = next(tmp_path.rglob("submission.csv"))
    by_predict = pd.read_csv(submission, sep="\t")
    assert by_predict["filename"].tolist() == by_evaluate["filename"].tolist()
    assert (by_predict["scene_label"] == by_evaluate["scene_label"]).all()  # the same 16-bit network, the same argmax
