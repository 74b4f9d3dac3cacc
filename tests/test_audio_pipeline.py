"""The audio pipeline: log-mel against librosa, the synthetic quickstart, front-end checkpoint checks."""

from __future__ import annotations

from pathlib import Path

import librosa
import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from datamodules import TAUScenesDataModule
from l2bn_lit import L2BN2d
from l2bn_lit.lit.classification_module import CheckpointMismatchError
from l2bn_lit.lit.cli import main
from models import AudioSceneClassifier
from models.audio_augment import SpecAugment
from models.frontend import LogMel, LogMelSettings

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART_DCASE = str(ROOT / "configs" / "quickstart_dcase.yaml")


def test_logmel_matches_librosa_and_the_papers_frame_count():
    rng = np.random.default_rng(0)
    wave = rng.standard_normal(44100 * 10).astype(np.float32) * 0.1
    frontend = LogMel(44100, n_fft=2048, hop_length=1024, n_mels=128, log="log")
    ours = frontend(torch.from_numpy(wave)[None])[0, 0].double()
    assert ours.shape == (128, 431)  # the paper's 431 frames per 10-s clip
    reference = librosa.feature.melspectrogram(
        y=wave.astype(np.float64),
        sr=44100,
        n_fft=2048,
        hop_length=1024,
        n_mels=128,
        power=2.0,
        htk=True,
        norm=None,
        center=True,
        pad_mode="reflect",
    )
    torch.testing.assert_close(ours, torch.from_numpy(np.log(reference + 1e-6)), atol=2e-3, rtol=1e-4)


def test_db_floor_is_each_clips_own_and_not_the_batchs():
    quiet, loud = torch.randn(1, 16000) * 1e-3, torch.randn(1, 16000)
    frontend = LogMel(16000, n_fft=512, hop_length=256, n_mels=40, top_db=80.0)
    alone = frontend(quiet)
    assert torch.equal(frontend(torch.cat([quiet, loud]))[:1], alone)
    power = frontend.mel(quiet).double()
    reference = 10 * torch.log10(power.clamp_min(1e-10))
    reference = torch.maximum(reference, reference.max() - 80.0)  # hand-written: floor 80 dB below the clip's peak
    torch.testing.assert_close(alone[0, 0].double(), reference[0], atol=1e-4, rtol=1e-5)


def test_specaugment_masks_only_in_training():
    x = torch.randn(4, 1, 64, 100)
    augment = SpecAugment(freq_mask=10, time_mask=20)
    assert torch.equal(augment.eval()(x), x)
    masked = augment.train()(x)
    assert (masked == 0).sum() > 0 and masked.shape == x.shape


def _cli(tmp_path, *args, run=True):
    logger = f'[{{"class_path": "pytorch_lightning.loggers.CSVLogger", "init_args": {{"save_dir": "{tmp_path}"}}}}]'
    data_root = ["--data.init_args.root", str(tmp_path / "dcase")]
    return main([*args, *data_root, "--trainer.logger", logger, "--trainer.enable_progress_bar", "false"], run=run)


def test_quickstart_dcase_learns_the_synthetic_scenes(tmp_path):
    cli = _cli(tmp_path, "fit", "--config", QUICKSTART_DCASE)
    assert cli.trainer.callback_metrics["test/acc"].item() > 0.6  # 5 scenes: chance is 0.2
    assert any(isinstance(m, L2BN2d) for m in cli.model.modules())
    assert (Path(cli.trainer.log_dir) / "confusion_matrix.csv").is_file()


def test_checkpoint_with_other_front_end_is_refused(tmp_path):
    cli = _cli(tmp_path, "fit", "--config", QUICKSTART_DCASE, "--trainer.max_epochs", "1", "--test_after_fit", "false")
    ckpt = Path(cli.trainer.log_dir) / "checkpoints" / "last.ckpt"
    data = TAUScenesDataModule(str(tmp_path / "dcase"), sample_rate=16000, duration=1.0)
    other = AudioSceneClassifier(
        num_classes=5,
        input_shape=[16000],
        sample_rate=16000,
        frontend=LogMelSettings(n_fft=512, hop_length=256, n_mels=40),
    )
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    with pytest.raises(CheckpointMismatchError, match="n_mels: model=40 checkpoint=64"):
        trainer.test(other, datamodule=data, ckpt_path=str(ckpt))


def test_audio_model_needs_an_audio_datamodule():
    with pytest.raises(ValueError, match="needs the audio sample_rate"):
        AudioSceneClassifier(num_classes=5, input_shape=[16000])


def test_checkpoint_of_another_label_set_is_refused(tmp_path):
    cli = _cli(tmp_path, "fit", "--config", QUICKSTART_DCASE, "--trainer.max_epochs", "1", "--test_after_fit", "false")
    ckpt = Path(cli.trainer.log_dir) / "checkpoints" / "last.ckpt"
    renamed = ["airport", "bus", "metro", "park", "tram"]
    other = AudioSceneClassifier(
        num_classes=5,
        input_shape=[16000],
        sample_rate=16000,
        frontend={"n_fft": 512, "hop_length": 256, "n_mels": 64},
        class_names=renamed,
    )
    with pytest.raises(CheckpointMismatchError, match="class_names"):
        other.on_load_checkpoint(torch.load(ckpt, weights_only=True))


def test_a_checkpoint_with_the_front_end_settings_as_separate_keys_loads_and_is_checked(tmp_path):
    """Checkpoints written before ``frontend`` held ``n_fft``, ``n_mels``, ... as hyperparameters of their
    own: they load into the same model, and are refused by a model with other settings."""
    cli = _cli(tmp_path, "fit", "--config", QUICKSTART_DCASE, "--trainer.max_epochs", "1", "--test_after_fit", "false")
    checkpoint = torch.load(Path(cli.trainer.log_dir) / "checkpoints" / "last.ckpt", weights_only=True)
    hparams = checkpoint["hyper_parameters"]
    assert hparams["frontend"]["n_mels"] == 64 and "n_mels" not in hparams
    hparams.update(hparams.pop("frontend"))  # the layout of the older checkpoints
    old = tmp_path / "old.ckpt"
    torch.save(checkpoint, old)
    model = AudioSceneClassifier.load_from_checkpoint(old, weights_only=True)
    assert model.frontend.settings == LogMelSettings(n_fft=512, hop_length=256, n_mels=64)
    assert model.hparams.frontend == cli.model.hparams.frontend
    features = torch.randn(2, 16000)
    torch.testing.assert_close(model.eval()(features), cli.model.eval()(features))
    other = AudioSceneClassifier(
        num_classes=5, input_shape=[16000], sample_rate=16000, frontend={"n_fft": 512, "hop_length": 256}
    )
    with pytest.raises(CheckpointMismatchError, match=r"frontend\.n_mels: model=128 checkpoint=64"):
        other.on_load_checkpoint(torch.load(old, weights_only=True))


def test_cli_refuses_front_end_options_that_contradict_the_checkpoint(tmp_path):
    cli = _cli(tmp_path, "fit", "--config", QUICKSTART_DCASE, "--trainer.max_epochs", "1", "--test_after_fit", "false")
    ckpt = str(Path(cli.trainer.log_dir) / "checkpoints" / "last.ckpt")
    with pytest.raises(CheckpointMismatchError, match="n_mels: model=40 checkpoint=64"):
        _cli(
            tmp_path,
            "test",
            "--config",
            QUICKSTART_DCASE,
            "--model.init_args.frontend.n_mels",
            "40",
            "--ckpt_path",
            ckpt,
        )


def test_frequency_split_resnet_keeps_its_two_bands_apart():
    from models.audio import build_audio_model

    model = build_audio_model("fs_resnet", 10, "l2bn").eval()
    x = torch.randn(2, 1, 128, 64)
    y = x.clone()
    y[:, :, 64:] = torch.randn(2, 1, 64, 64)  # change only the high band
    torch.testing.assert_close(model.low(x[:, :, :64]), model.low(y[:, :, :64]))
    assert not torch.allclose(model(x), model(y))
    norms = [m for m in model.modules() if isinstance(m, L2BN2d)]
    assert len(norms) == 37 and sum(m.affine for m in norms) == 2  # learnable only at the two inputs
    model.train()
    model(x).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_mixup_and_cutmix_train_on_waveforms(tmp_path):
    cli = _cli(
        tmp_path,
        "fit",
        "--config",
        QUICKSTART_DCASE,
        "--trainer.fast_dev_run",
        "true",
        "--test_after_fit",
        "false",
        "--model.init_args.mixup_alpha",
        "0.4",
        "--model.init_args.cutmix_alpha",
        "1.0",
    )
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    wave, labels = torch.randn(8, 16000), torch.arange(8) % 5
    mixed, soft = cli.model.mix(wave.reshape(8, 1, 1, -1), labels)
    assert mixed.shape == (8, 1, 1, 16000) and soft.shape == (8, 5) and not torch.equal(mixed.flatten(1), wave)


@pytest.mark.parametrize("arch", ["dcase_baseline", "small_cnn", "fs_resnet", "fcnn", "fsfcnn"])
@pytest.mark.parametrize("norm", ["bn", "l2bn"])
def test_every_audio_architecture_takes_the_norm_switch(arch, norm):
    from torch import nn

    from models.audio import build_audio_model

    model = build_audio_model(arch, 10, norm)
    x = torch.randn(2, 1, 64, 40)
    assert model(x).shape == (2, 10)
    kinds = {type(m) for m in model.modules() if isinstance(m, (nn.BatchNorm2d, L2BN2d))}
    assert kinds == ({L2BN2d} if norm == "l2bn" else {nn.BatchNorm2d})


def test_channel_attention_by_hand():
    from models.audio import ChannelAttention

    attention = ChannelAttention(4, ratio=2)
    x = torch.randn(3, 4, 5, 6)
    mlp = attention.mlp
    expected = x * torch.sigmoid(mlp(x.mean((2, 3))) + mlp(x.flatten(2).max(2).values))[:, :, None, None]
    torch.testing.assert_close(attention(x), expected)


def test_time_roll_rotates_each_clip_in_training_only():
    from models.audio_augment import TimeRoll

    roll = TimeRoll()
    wave = torch.arange(20.0).repeat(3, 1)
    assert torch.equal(roll.eval()(wave), wave)
    torch.manual_seed(0)
    rolled = roll.train()(wave)
    for row in rolled:
        shift = int((20 - row[0]) % 20)
        assert torch.equal(row, torch.roll(wave[0], shift))
    logmel = torch.randn(3, 1, 4, 20)
    rolled = roll(logmel)
    for sample, out in zip(logmel, rolled):  # one shift per sample, along frames only
        shift = next(k for k in range(20) if torch.equal(out, torch.roll(sample, k, dims=-1)))
        assert torch.equal(out, torch.roll(sample, shift, dims=-1))


def test_freq_mixstyle_mixes_statistics_between_samples():
    from models.audio_augment import FreqMixStyle

    mix = FreqMixStyle(p=1.0, alpha=0.3)
    x = torch.randn(2, 1, 6, 50)
    assert torch.equal(mix.eval()(x), x)
    same = x[:1].repeat(2, 1, 1, 1)
    torch.testing.assert_close(mix.train()(same), same, atol=1e-4, rtol=1e-4)  # nothing to mix with
    y = torch.stack([torch.randn(1, 6, 50), 3 + 2 * torch.randn(1, 6, 50)])
    out = mix.train()(y)
    low, high = y.mean(dim=(1, 3)).min(0).values, y.mean(dim=(1, 3)).max(0).values
    out_means = out.mean(dim=(1, 3))
    assert ((out_means >= low - 1e-4) & (out_means <= high + 1e-4)).all()  # convex mixes of the two means
