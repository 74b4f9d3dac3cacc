"""Every architecture builds with the norm switch and maps a batch to logits."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from l2bn_lit import L2BN2d
from models import ARCHITECTURES, build_model

ARCHS = [*ARCHITECTURES, "shufflenet_v2", "torchvision.resnet18", "torchvision.mobilenet_v2"]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("norm", ["bn", "l2bn"])
def test_norm_switch_reaches_every_norm_layer(arch, norm):
    channels = 1 if arch == "small_cnn" else 3
    model = build_model(arch, num_classes=7, in_channels=channels, norm=norm)
    x = torch.randn(2, channels, 32, 32)
    assert model.eval()(x).shape == (2, 7)
    kinds = {type(m) for m in model.modules() if isinstance(m, (nn.BatchNorm2d, L2BN2d))}
    assert kinds == ({L2BN2d} if norm == "l2bn" else {nn.BatchNorm2d})


def test_registry_errors_name_the_options():
    with pytest.raises(ValueError, match="unknown arch 'resnet21'"):
        build_model("resnet21", 10)
    with pytest.raises(ValueError, match="norm must be 'bn' or 'l2bn'"):
        build_model("shufflenet_v2", 10, norm="gn")
    with pytest.raises(ValueError, match="3-channel input"):
        build_model("torchvision.resnet18", 10, in_channels=1)
    with pytest.raises(ValueError, match="unknown torchvision classification model 'resnet19'"):
        build_model("torchvision.resnet19", 10)
    assert isinstance(build_model("resnet20", 10, norm="gn").stem[1], nn.GroupNorm)
