"""The DCASE 2024/2025 Task 1 pieces: the CP-Mobile-style network, device impulse responses, and
the task config on a small data set in the TAU 2022 layout with the task's split files."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
import torchaudio
from torch import nn

from datamodules import TAUScenesDataModule, write_synthetic_tau
from datamodules.dcase import load_impulse_responses
from l2bn_lit import L2BN2d, get_norm_layer
from l2bn_lit.commands.complexity import main as complexity
from l2bn_lit.lit.cli import main
from l2bn_lit.reports.model_cost import complexity_report
from models.cp_mobile import CPMobile, make_divisible

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "dcase2024_task1_cpmobile.yaml")


def test_make_divisible_by_hand():
    assert [make_divisible(v) for v in (32, 57.6, 103.68, 67.2, 4, 11)] == [32, 56, 104, 64, 8, 16]


@pytest.mark.parametrize("norm", ["bn", "l2bn"])
def test_cp_mobile_has_the_baselines_size(norm):
    """61,148 parameters and 29.4 M MACs (the DCASE 2024 baseline's published figures) for one
    (1, 256, 65) log-mel; the norm switch reaches every norm and adds no parameter."""
    model = CPMobile(10, get_norm_layer(norm, 2))
    report = complexity_report(model, [1, 256, 65])
    assert report["parameters"] == 61_148
    assert report["macs"] == 29_419_156  # torchinfo's total_mult_adds, as the challenge's script counts
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert len(norms) == 2 + 6 * 3 + 1 and all(isinstance(m, L2BN2d) == (norm == "l2bn") for m in norms)
    out = model(torch.randn(3, 1, 256, 65))
    assert out.shape == (3, 10)


def _write_ir(path: Path, response: np.ndarray, rate: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, response, rate, subtype="FLOAT")


def test_device_impulse_responses_convolve_device_a_clips(root, tmp_path):
    rng = np.random.default_rng(0)
    response = rng.standard_normal(64).astype(np.float32)
    _write_ir(tmp_path / "irs" / "mic1.wav", response, 16000)
    assert torch.allclose(
        load_impulse_responses(tmp_path / "irs", 16000)[0], torch.from_numpy(response / np.abs(response).max())
    )
    data = TAUScenesDataModule(
        str(root), sample_rate=16000, duration=1.0, device_irs=str(tmp_path / "irs"), device_ir_p=1.0
    )
    data.setup("fit")
    train, plain = data.train_set.dataset, data.val_set.dataset
    devices = [Path(f).stem.rsplit("-", 1)[-1] for f in train.files]
    a, b = devices.index("a"), devices.index("b")
    for index, convolved in ((a, True), (b, False)):
        wave = plain[index][0].double().numpy()
        expected = (
            np.convolve(wave, response.astype(np.float64) / np.abs(response).max())[: len(wave)] if convolved else wave
        )
        torch.manual_seed(0)
        np.testing.assert_allclose(train[index][0].numpy(), expected, atol=1e-4)
    data = TAUScenesDataModule(
        str(root), sample_rate=16000, duration=1.0, device_irs=str(tmp_path / "irs"), device_ir_p=0.0
    )
    data.setup("fit")
    assert torch.equal(data.train_set.dataset[a][0], data.val_set.dataset[a][0])


def test_device_ir_errors_name_the_option(root, tmp_path):
    (tmp_path / "empty").mkdir()
    data = TAUScenesDataModule(str(root), sample_rate=16000, duration=1.0, device_irs=str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="device_irs=.*no .wav impulse responses"):
        data.setup("fit")
    with pytest.raises(ValueError, match="device_irs .* feature cache"):
        TAUScenesDataModule(str(root), device_irs=str(tmp_path), feature_cache=str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def tau2022(tmp_path_factory) -> Path:
    """The TAU 2022 layout at 32 kHz with the DCASE 2024 split files (split25.csv, test.csv)."""
    root = write_synthetic_tau(tmp_path_factory.mktemp("tau2022") / "data", clips_per_scene=12, sample_rate=32000)
    (root / "split_setup").mkdir()
    shutil.copy(root / "evaluation_setup" / "fold1_train.csv", root / "split_setup" / "split25.csv")
    test = pd.read_csv(root / "evaluation_setup" / "fold1_evaluate.csv", sep="\t")
    test[["filename"]].to_csv(root / "split_setup" / "test.csv", sep="\t", index=False)  # labels from meta.csv
    return root


def test_task_config_model_is_within_the_limits(tau2022, capsys):
    report = complexity(["--config", CONFIG, "--data.init_args.root", str(tau2022)])
    assert (
        report["parameters"] == 56_380 - 104 * 5 - 2 * 5
    )  # 5 synthetic scenes: the 104->classes conv and its norm shrink
    assert report["macs_for_limits"] == report["macs_network"] + report["l2bn_inference_macs"] < 30e6
    assert report["parameter_memory_bytes"] < 128_000
    assert "within the limits" in capsys.readouterr().out


def test_task_config_trains_and_tests(tau2022, tmp_path):
    cli = main(
        [
            "fit",
            "--config",
            CONFIG,
            "--data.init_args.root",
            str(tau2022),
            "--data.init_args.batch_size",
            "8",
            "--trainer.max_epochs",
            "1",
            "--trainer.limit_train_batches",
            "2",
            "--trainer.accelerator",
            "cpu",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.default_root_dir",
            str(tmp_path),
        ]
    )
    metrics = cli.trainer.callback_metrics
    assert torch.isfinite(metrics["test/loss"]) and 0 <= float(metrics["test/acc"]) <= 1
    devices = pd.read_csv(tmp_path / "csv" / "version_0" / "dcase_devices.csv")
    test = pd.read_csv(tau2022 / "split_setup" / "test.csv", sep="\t")["filename"]
    unseen = int(test.str.contains(r"-s[456]\.wav$").sum())
    assert unseen > 0 and devices.set_index("device").loc["unseen simulated", "support"] == unseen


def test_device_subset_keeps_the_label_set(root):
    everything = TAUScenesDataModule(str(root), sample_rate=16000, duration=1.0)
    only_a = TAUScenesDataModule(str(root), sample_rate=16000, duration=1.0, devices=["a"])
    assert (
        set(only_a.train_table["device"]) == {"a"}
        and len(only_a.train_table) == (everything.train_table["device"] == "a").sum()
    )
    assert only_a.class_names == everything.class_names  # a device-specific model keeps the general one's classes
    only_a.setup("fit")
    everything.setup("fit")
    assert {Path(f).stem.rsplit("-", 1)[-1] for f in only_a.train_set.dataset.files} == {"a"}
    assert only_a.test_set.files == everything.test_set.files  # the test list is not filtered
    with pytest.raises(ValueError, match=r"devices=\['s9'\]: \['s9'\] not in"):
        TAUScenesDataModule(str(root), sample_rate=16000, duration=1.0, devices=["s9"])


def test_init_from_starts_from_a_checkpoints_network(synthetic_root, tmp_path):
    from l2bn_lit.lit.classification_module import CheckpointMismatchError
    from models import AudioSceneClassifier

    config = str(ROOT / "configs" / "quickstart_dcase.yaml")
    cli = main(
        [
            "fit",
            "--config",
            config,
            "--data.init_args.root",
            str(synthetic_root),
            "--trainer.max_epochs",
            "1",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.default_root_dir",
            str(tmp_path),
            "--test_after_fit",
            "false",
        ]
    )
    ckpt = str(tmp_path / "csv" / "version_0" / "checkpoints" / "last.ckpt")
    hp = {k: v for k, v in cli.model.hparams.items() if k not in ("init_from", "_class_path", "_instantiator")}
    torch.manual_seed(123)
    tuned = AudioSceneClassifier(**{**hp, "init_from": ckpt})
    trained = torch.load(ckpt, weights_only=False)["state_dict"]
    for key, value in tuned.state_dict().items():
        assert torch.equal(value, trained[key]), key
    with pytest.raises(CheckpointMismatchError, match="init_from=.*norm"):
        AudioSceneClassifier(**{**hp, "norm": "bn" if hp["norm"] == "l2bn" else "l2bn", "init_from": ckpt})


# --- the baselines' recipe (CPJKU dcase2024/2025_task1_baseline), each point against its formula ---


def test_warmup_steps_follow_the_baselines_cosine_schedule_from_zero(tmp_path):
    """transformers.get_cosine_schedule_with_warmup: lr x step/W for step < W, then lr x (1 + cos(pi p)) / 2."""
    from test_module import _lrs, _model

    lrs = _lrs(_model(lr=0.2, schedule="cosine", warmup_steps=5, optimizer="adamw"), tmp_path, epochs=2)
    total = len(lrs)
    expected = [0.2 * (s / 5 if s < 5 else 0.5 * (1 + math.cos(math.pi * (s - 5) / (total - 5)))) for s in range(total)]
    assert lrs == pytest.approx(expected, abs=1e-12)
    assert lrs[0] == 0.0


def test_log_floor_and_masks_filled_with_it_as_masking_the_power_does():
    from models.audio_augment import SpecAugment
    from models.frontend import LogMel

    wave = torch.randn(2, 16000)
    frontend = LogMel(16000, n_fft=512, hop_length=256, n_mels=40, log="log", top_db=None, log_floor=1e-5)
    power = frontend.mel(wave).unsqueeze(1)
    torch.testing.assert_close(frontend(wave), torch.log(power + 1e-5))
    mask = SpecAugment(freq_mask=8, masks=1, mask_value=math.log(1e-5)).train()
    torch.manual_seed(0)
    masked = mask(frontend(wave))
    torch.manual_seed(0)  # the same mask on the power spectrogram, then the log: the baselines' order
    from_power = torch.log(torchaudio.transforms.FrequencyMasking(8, iid_masks=True)(power) + 1e-5)
    torch.testing.assert_close(masked, from_power)
    assert (masked == math.log(1e-5)).any() and mask.eval()(frontend(wave)).equal(frontend(wave))


def test_wave_roll_shifts_by_at_most_the_given_seconds():
    from models.audio_augment import WaveRoll

    roll = WaveRoll(max_shift=3200).train()  # 0.1 s at 32 kHz
    wave = torch.arange(32000.0).repeat(200, 1)
    rolled = roll(wave)
    shifts = (rolled[:, 0] - wave[:, 0]).remainder(32000).long()
    shifts = torch.where(shifts > 16000, shifts - 32000, -shifts)  # rolled[0] = wave[-shift]
    assert shifts.abs().max() <= 3200 and len(set(shifts.tolist())) > 50
    torch.testing.assert_close(rolled.sort(1).values, wave)  # a circular roll: every sample kept
    assert roll.eval()(wave).equal(wave)


def test_the_task_config_is_the_baselines_recipe(tmp_path):
    """Where the baseline is explicit, the config says the same (its width is narrower: docs/dcase.md)."""
    import yaml

    config = yaml.safe_load(Path(CONFIG).read_text())
    model, data = config["model"]["init_args"], config["data"]["init_args"]
    assert config["trainer"]["max_epochs"] == 150 and data["batch_size"] == 256 and data["sample_rate"] == 32000
    mel = model["frontend"]
    assert (mel["n_fft"], mel["win_length"], mel["hop_length"], mel["n_mels"]) == (4096, 3072, 500, 256)
    assert (mel["log"], mel["log_floor"], model["freq_mask"], model["freq_masks"], model["mask_value"]) == (
        "log",
        1e-5,
        48,
        1,
        "floor",
    )
    assert model["roll_seconds"] == 0.1 and not model.get("time_roll", False)
    assert (model["optimizer"], model["lr"], model["weight_decay"], model["warmup_steps"]) == (
        "adamw",
        5e-3,
        1e-4,
        2000,
    )
    assert model["norm_weight_decay"] is None and model["bias_weight_decay"] is None  # AdamW on every parameter
    assert (model["mixstyle_p"], model["mixstyle_alpha"]) == (0.4, 0.3)
    finetune = yaml.safe_load((ROOT / "configs" / "dcase2025_task1_device_finetune.yaml").read_text())
    assert finetune["trainer"]["max_epochs"] == 50
    assert (finetune["model"]["init_args"]["lr"], finetune["model"]["init_args"]["warmup_steps"]) == (5e-4, 200)
    assert finetune["model"]["init_args"]["mixstyle_p"] == 0.0


def test_the_baselines_validation_protocol_validates_on_its_list_and_trains_on_every_clip(tau2022, tmp_path):
    protocol = str(ROOT / "configs" / "dcase_baseline_protocol.yaml")
    cli = main(
        [
            "fit",
            "--config",
            CONFIG,
            "--config",
            protocol,
            "--data.init_args.root",
            str(tau2022),
            "--data.init_args.batch_size",
            "8",
            "--trainer.max_epochs",
            "1",
            "--trainer.check_val_every_n_epoch",
            "1",
            "--trainer.limit_train_batches",
            "2",
            "--trainer.accelerator",
            "cpu",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.default_root_dir",
            str(tmp_path),
        ]
    )
    data = cli.datamodule
    train_list = pd.read_csv(tau2022 / "split_setup" / "split25.csv", sep="\t")
    assert len(data.train_set) == len(train_list)  # nothing held out
    assert data.val_set.files == pd.read_csv(tau2022 / "split_setup" / "test.csv", sep="\t")["filename"].tolist()
    logged = pd.read_csv(Path(cli.trainer.log_dir) / "metrics.csv")
    assert logged["val/acc"].notna().sum() == 1 and cli.config["fit"]["test_ckpt"] == "last"
    assert "test/acc" in cli.trainer.callback_metrics  # the last epoch's weights were tested
