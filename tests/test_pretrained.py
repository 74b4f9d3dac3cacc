"""Pretrained torchvision/timm weights from a local state dict (nothing downloaded), and the
re-estimation of the running statistics when the norms become L2BN."""

from __future__ import annotations

import copy
import itertools

import pytest
import pytorch_lightning as pl
import torch
import torchvision
from test_image_data import _write_image_folder
from torch.optim.swa_utils import update_bn

from datamodules import ImageFolderDataModule
from l2bn_lit import L2BN2d
from models import ImageClassifier, build_model


@pytest.fixture
def resnet18_weights(tmp_path):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=1000)  # an ImageNet-shaped checkpoint
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(1, 4)
    path = tmp_path / "resnet18.pt"
    torch.save(model.state_dict(), path)
    return path, model.state_dict()


def test_torchvision_weights_load_except_the_new_head(resnet18_weights):
    path, state = resnet18_weights
    model = build_model("torchvision.resnet18", num_classes=10, norm="l2bn", pretrained=str(path))
    loaded = model.state_dict()
    for key, value in state.items():
        if key.startswith("fc."):
            assert loaded[key].shape != value.shape
        else:
            assert torch.equal(loaded[key], value), key
    assert any(isinstance(m, L2BN2d) for m in model.modules())


def test_weights_of_another_architecture_are_refused(resnet18_weights):
    path, _ = resnet18_weights
    with pytest.raises(ValueError, match="do not fit arch='torchvision.resnet34'"):
        build_model("torchvision.resnet34", num_classes=10, pretrained=str(path))
    with pytest.raises(ValueError, match="pretrained weights are for torchvision"):
        build_model("resnet20", num_classes=10, pretrained=str(path))
    with pytest.raises(FileNotFoundError, match="no such file"):
        build_model("torchvision.resnet18", num_classes=10, pretrained=str(path) + ".missing")


def test_timm_weights_from_a_local_file(tmp_path):
    timm = pytest.importorskip("timm")
    source = timm.create_model("mobilenetv3_small_050", pretrained=False)
    torch.save(source.state_dict(), tmp_path / "w.pt")
    model = build_model("timm.mobilenetv3_small_050", num_classes=5, norm="l2bn", pretrained=str(tmp_path / "w.pt"))
    assert torch.equal(model.state_dict()["conv_stem.weight"], source.state_dict()["conv_stem.weight"])
    assert model.state_dict()["classifier.weight"].shape[0] == 5


def test_l2bn_statistics_are_re_estimated_before_the_first_evaluation(resnet18_weights, tmp_path):
    path, state = resnet18_weights
    root = _write_image_folder(tmp_path / "data", per_class=(8, 3))
    # on_device: the augmentation is a function of (seed, epoch, index), so both passes see the same batches
    dm = ImageFolderDataModule(
        str(root), test_split="test", image_size=40, transforms="cifar", batch_size=4, on_device=True
    )
    pl.seed_everything(0)
    model = ImageClassifier(
        num_classes=3,
        input_shape=[3, 40, 40],
        arch="torchvision.resnet18",
        norm="l2bn",
        pretrained=str(path),
        recalibration_batches=3,
    )
    assert not model.norm_stats_ready
    dm.setup("fit")
    reference = copy.deepcopy(model.network)
    batches = itertools.islice(dm.train_dataloader(), 3)
    update_bn((dm.on_after_batch_transfer(batch, 0)[0] for batch in batches), reference)  # torch's own, by hand

    trainer = pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.test(model, datamodule=dm, verbose=False)
    assert model.norm_stats_ready
    first = next(m for m in model.network.modules() if isinstance(m, L2BN2d))
    ref_first = next(m for m in reference.modules() if isinstance(m, L2BN2d))
    torch.testing.assert_close(first.running_var, ref_first.running_var)
    torch.testing.assert_close(first.running_mean, ref_first.running_mean)
    # the pretrained statistics (variances 1-4) were off by the l2 step's scale
    assert first.running_var.max() < 0.1 * state["bn1.running_var"].min()

    trainer.save_checkpoint(tmp_path / "ready.ckpt")
    restored = ImageClassifier.load_from_checkpoint(tmp_path / "ready.ckpt")
    assert restored.norm_stats_ready  # a second evaluation does not re-estimate again


def test_bn_with_pretrained_weights_keeps_their_statistics(resnet18_weights):
    path, _ = resnet18_weights
    model = ImageClassifier(
        num_classes=3, input_shape=[3, 32, 32], arch="torchvision.resnet18", norm="bn", pretrained=str(path)
    )
    assert model.norm_stats_ready
