"""The training-recipe options of the CIFAR ablation (docs/results.md): conv ``init``, norm/bias weight
decay, option-A shortcuts, training without a validation set, one crop offset per batch."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2

from datamodules import DeviceImages, DigitsDataModule, ImageFolderDataModule
from datamodules.device_images import crop_flip_params
from l2bn_lit.lit.classification_module import CheckpointMismatchError
from l2bn_lit.lit.cli import main
from l2bn_lit.nn.init import initialize
from models import ImageClassifier, build_model
from models.cifar_resnet import PaddedIdentity

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


# --- init ----------------------------------------------------------------------------------------


def _conv(bias: bool = True) -> nn.Conv2d:
    conv = nn.Conv2d(64, 128, 3, bias=bias)  # fan_in 576, fan_out 1152; 73,728 weights
    nn.init.constant_(conv.weight, 7.0)
    return conv


@pytest.mark.parametrize(
    "scheme,std",
    [
        ("torch", 1 / math.sqrt(3 * 576)),
        ("kaiming_fan_out", math.sqrt(2 / 1152)),
        ("kaiming_fan_in", math.sqrt(2 / 576)),
    ],
)
def test_init_schemes_draw_weights_of_the_documented_scale(scheme, std):
    torch.manual_seed(0)
    conv = initialize(nn.Sequential(_conv()), scheme)[0]
    w = conv.weight.detach().double()
    assert abs(w.mean().item()) < 0.02 * std
    assert w.std().item() == pytest.approx(std, rel=0.02)
    if scheme == "torch":  # U(-1/sqrt(fan_in), 1/sqrt(fan_in)), bias likewise
        bound = 1 / math.sqrt(576)
        assert w.abs().max().item() <= bound and w.abs().max().item() > 0.99 * bound
        assert conv.bias.abs().max().item() <= bound and conv.bias.abs().max().item() > 0
    else:
        assert torch.equal(conv.bias, torch.zeros(128))


def test_init_arch_keeps_the_architectures_own_and_unknown_names_are_refused():
    conv = initialize(nn.Sequential(_conv()), "arch")[0]
    assert torch.equal(conv.weight, torch.full_like(conv.weight, 7.0))
    with pytest.raises(ValueError, match="init='xavier'.*torch"):
        initialize(conv, "xavier")


def test_model_init_option_replaces_the_resnets_kaiming_fan_out():
    torch.manual_seed(0)
    default = ImageClassifier(num_classes=10, input_shape=[3, 32, 32], arch="resnet20")
    torch.manual_seed(0)
    reset = ImageClassifier(num_classes=10, input_shape=[3, 32, 32], arch="resnet20", init="torch")
    conv = "network.layers.8.conv2.weight"  # 64 -> 64, 3x3: fan_in = fan_out = 576
    assert default.state_dict()[conv].std().item() == pytest.approx(math.sqrt(2 / 576), rel=0.05)
    assert reset.state_dict()[conv].std().item() == pytest.approx(1 / math.sqrt(3 * 576), rel=0.05)
    with pytest.raises(ValueError, match="pretrained"):
        ImageClassifier(num_classes=10, arch="torchvision.resnet18", pretrained="default", init="torch")


# --- weight decay groups ---------------------------------------------------------------------------


@pytest.mark.parametrize("norm_wd,bias_wd", [(0.0, 0.0), (None, None), (1e-3, 0.0), (0.0, None)])
def test_norm_and_bias_weight_decay(norm_wd, bias_wd):
    model = ImageClassifier(
        num_classes=10,
        input_shape=[1, 8, 8],
        arch="small_cnn",
        norm="l2bn",
        weight_decay=5e-4,
        norm_weight_decay=norm_wd,
        bias_weight_decay=bias_wd,
    )
    decay_of = {id(p): g["weight_decay"] for g in model.parameter_groups() for p in g["params"]}
    expected_norm = 5e-4 if norm_wd is None else norm_wd
    expected_bias = 5e-4 if bias_wd is None else bias_wd
    kinds = set()
    for name, module in model.network.named_modules():
        for pname, param in module.named_parameters(recurse=False):
            is_norm = isinstance(module, nn.modules.batchnorm._BatchNorm)
            kind = "norm" if is_norm else "bias" if param.ndim == 1 else "weight"
            kinds.add(kind)
            expected = {"norm": expected_norm, "bias": expected_bias, "weight": 5e-4}[kind]
            assert decay_of.pop(id(param)) == expected, f"{name}.{pname}"
    assert kinds == {"norm", "bias", "weight"} and not decay_of  # every parameter in exactly one group
    assert len(model.parameter_groups()) == len({5e-4, expected_norm, expected_bias})


# --- shortcut A ------------------------------------------------------------------------------------


def test_padded_identity_subsamples_and_appends_zero_channels():
    x = torch.randn(2, 16, 8, 8, dtype=torch.float64)
    out = PaddedIdentity(2, 16)(x)
    assert out.shape == (2, 32, 4, 4)
    for i in range(4):
        for j in range(4):
            assert torch.equal(out[:, :16, i, j], x[:, :, 2 * i, 2 * j])
    assert torch.equal(out[:, 16:], torch.zeros(2, 16, 4, 4, dtype=torch.float64))


def test_resnet20_option_a_has_no_projection_and_trains():
    b = build_model("resnet20", 10, norm="l2bn")
    a = build_model("resnet20", 10, norm="l2bn", arch_options={"shortcut": "A"})
    # option B's two projections: 1x1 conv 16->32 + norm(32), 1x1 conv 32->64 + norm(64)
    projections = (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)
    assert sum(p.numel() for p in b.parameters()) - sum(p.numel() for p in a.parameters()) == projections
    assert not any(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) for m in a.modules())
    x = torch.randn(4, 3, 32, 32)
    loss = F.cross_entropy(a(x), torch.arange(4))
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in a.parameters())
    with pytest.raises(ValueError, match="shortcut must be 'A'"):
        build_model("resnet20", 10, arch_options={"shortcut": "C"})
    with pytest.raises(ValueError, match=r"does not take arch_options \['width'\]"):
        build_model("resnet20", 10, arch_options={"width": 2})


def test_checkpoint_with_other_shortcut_is_refused(tmp_path):
    a = ImageClassifier(num_classes=10, input_shape=[3, 32, 32], arch="resnet20", arch_options={"shortcut": "A"})
    path = tmp_path / "a.ckpt"
    torch.save({"state_dict": a.state_dict(), "hyper_parameters": dict(a.hparams)}, path)
    b = ImageClassifier(num_classes=10, input_shape=[3, 32, 32], arch="resnet20")
    with pytest.raises(CheckpointMismatchError, match="arch_options"):
        b.on_load_checkpoint(torch.load(path, weights_only=False))


# --- training on the whole set (no validation) -----------------------------------------------------


def test_val_fraction_zero_trains_on_every_sample():
    data, split = DigitsDataModule(val_fraction=0), DigitsDataModule(val_fraction=0.1)
    data.setup("fit")
    split.setup("fit")
    assert len(data.train_set) == 1797 - 359 == len(split.train_set) + len(split.val_set)  # 359 test images
    assert sorted(data.train_set.indices) == list(range(1438))
    assert data.val_set is None and data.val_dataloader() == []
    with pytest.raises(ValueError, match=r"val_fraction must be in \[0, 1\)"):
        DigitsDataModule(val_fraction=1.0)


FIT = [
    "fit",
    "--model",
    "models.ImageClassifier",
    "--model.arch",
    "small_cnn",
    "--data",
    "datamodules.DigitsDataModule",
    "--trainer.accelerator",
    "cpu",
    "--trainer.max_epochs",
    "2",
    "--trainer.enable_progress_bar",
    "false",
    "--seed_everything",
    "0",
    "--test_after_fit",
    "true",
]


def _test_acc_of(ckpt, tmp_path) -> float:
    cli = main(
        [
            "test",
            "--model",
            "models.ImageClassifier",
            "--data",
            "datamodules.DigitsDataModule",
            "--trainer.accelerator",
            "cpu",
            "--trainer.logger",
            "false",
            "--trainer.enable_progress_bar",
            "false",
            "--ckpt_path",
            str(ckpt),
            "--trainer.default_root_dir",
            str(tmp_path),
        ]
    )
    return float(cli.trainer.callback_metrics["test/acc"])


def test_without_validation_the_last_weights_are_tested(tmp_path, caplog):
    cli = main([*FIT, "--data.val_fraction", "0", "--trainer.default_root_dir", str(tmp_path / "fit")])
    assert "testing the last epoch's weights" in caplog.text
    run = tmp_path / "fit" / "csv" / "version_0"
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["last.ckpt"]
    assert float(cli.trainer.callback_metrics["test/acc"]) == _test_acc_of(run / "checkpoints" / "last.ckpt", tmp_path)


def test_test_ckpt_last_tests_the_last_epoch_not_the_best(tmp_path):
    best = main([*FIT, "--trainer.default_root_dir", str(tmp_path / "best")])
    assert best.trainer.ckpt_path is not None and "best-epoch=" in best.trainer.ckpt_path  # the default
    cli = main([*FIT, "--test_ckpt", "last", "--trainer.default_root_dir", str(tmp_path / "fit")])
    assert cli.trainer.ckpt_path is None  # the weights in memory at the end of fit
    checkpoints = tmp_path / "fit" / "csv" / "version_0" / "checkpoints"
    assert float(cli.trainer.callback_metrics["test/acc"]) == _test_acc_of(checkpoints / "last.ckpt", tmp_path)


# --- one crop offset per batch ---------------------------------------------------------------------


def test_crop_per_batch_gives_every_sample_the_first_ones_offset_and_its_own_flip():
    images = torch.randint(0, 256, (64, 3, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    data = DeviceImages(images, torch.zeros(64), MEAN, STD)
    indices = torch.arange(64).flip(0)
    x, _ = data.batch(indices, augment=True, epoch=2, seed=5, padding=4, crop_per_batch=True)
    top, left, flip = crop_flip_params(indices, epoch=2, seed=5, padding=4)
    assert flip.any() and not flip.all()
    normalize = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])
    for b, index in enumerate(indices.tolist()):
        crop = v2.functional.pad(images[index], [4])[:, top[0] : top[0] + 8, left[0] : left[0] + 8]
        crop = crop.flip(-1) if flip[b] else crop
        torch.testing.assert_close(x[b], normalize(crop), rtol=0, atol=1e-6)
    per_sample, _ = data.batch(indices, augment=True, epoch=2, seed=5, padding=4)
    assert not torch.equal(per_sample, x)  # the default draws an offset per sample


def test_crop_per_batch_needs_device_mode(tmp_path):
    with pytest.raises(ValueError, match="crop_per_batch is a device-mode option"):
        ImageFolderDataModule(root=str(tmp_path), crop_per_batch=True)
