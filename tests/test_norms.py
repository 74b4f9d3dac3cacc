"""Norm registry and whole-model conversion (torchvision models included)."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from reference import ReferenceL2BN
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from l2bn_lit import (
    NORM_KINDS,
    L2BN1d,
    L2BN2d,
    L2BN3d,
    SyncL2BN,
    convert_norm,
    create_norm,
    get_norm_layer,
)


def _norm_types(model: nn.Module) -> list[type]:
    return [type(m) for m in model.modules() if isinstance(m, (_BatchNorm, nn.GroupNorm))]


def _with_reference_norms(model: nn.Module) -> nn.Module:
    """Replaces each L2BN with the independent F.normalize + BatchNorm reference."""
    model = copy.deepcopy(model)
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, (L2BN1d, L2BN2d, L2BN3d)):
                ref = ReferenceL2BN(child.num_features, l2_eps=child.l2_eps, rescale=child.rescale)
                ref.load_state_dict(child.state_dict())
                setattr(module, child_name, ref.train(child.training))
    return model


@pytest.mark.parametrize(
    "builder,count",
    [
        (torchvision.models.resnet18, 20),
        (torchvision.models.mobilenet_v2, 52),
        (torchvision.models.shufflenet_v2_x0_5, 56),  # hard-codes nn.BatchNorm2d
    ],
)
def test_convert_torchvision_models_and_back(builder, count):
    torch.manual_seed(0)
    model = builder(num_classes=10)
    for m in model.modules():  # non-trivial statistics to carry over
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 1.5)
            m.num_batches_tracked.fill_(3)
    model.eval()
    original_state = copy.deepcopy(model.state_dict())
    x = torch.randn(2, 3, 64, 64)
    bn_out = model(x)
    params_before = [id(p) for p in model.parameters()]

    converted = convert_norm(model, "l2bn", rescale=True)
    assert converted is model
    assert _norm_types(model) == [L2BN2d] * count
    assert [id(p) for p in model.parameters()] == params_before
    assert all(not m.training and m.rescale for m in model.modules() if isinstance(m, L2BN2d))
    for key, value in original_state.items():
        assert torch.equal(model.state_dict()[key], value), key
    torch.testing.assert_close(model(x), _with_reference_norms(model)(x), rtol=1e-4, atol=1e-5)

    convert_norm(model, "bn")
    assert _norm_types(model) == [nn.BatchNorm2d] * count
    torch.testing.assert_close(model(x), bn_out)


def test_convert_keeps_ranks_sync_and_training_mode():
    model = nn.Sequential(nn.BatchNorm1d(3), nn.BatchNorm2d(4), nn.BatchNorm3d(5), nn.SyncBatchNorm(6)).train()
    model[1].eval()
    convert_norm(model, "l2bn", l2_eps=1e-6)
    assert [type(m) for m in model] == [L2BN1d, L2BN2d, L2BN3d, SyncL2BN]
    assert [m.training for m in model] == [True, False, True, True]
    assert all(m.l2_eps == 1e-6 for m in model)
    convert_norm(model, "bn")
    assert [type(m) for m in model] == [nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm]


def test_convert_root_norm_and_options_on_existing_l2bn():
    root = convert_norm(nn.BatchNorm2d(3), "l2bn")
    assert type(root) is L2BN2d and not root.rescale
    root = convert_norm(root, "l2bn", rescale=True)
    assert root.rescale


def test_convert_rejects_unknown_kind_and_options():
    with pytest.raises(ValueError, match="between 'bn' and 'l2bn'"):
        convert_norm(nn.BatchNorm2d(3), "gn")
    with pytest.raises(ValueError, match="rescal"):
        convert_norm(nn.BatchNorm2d(3), "l2bn", rescal=True)


def test_convert_refuses_batch_norm_subclasses_instead_of_dropping_their_behaviour():
    class BatchNormAct2d(nn.BatchNorm2d):  # the shape of timm's norm + activation layer
        def forward(self, x):
            return torch.relu(super().forward(x))

    class NoRank(_BatchNorm):
        pass

    for layer in (BatchNormAct2d(3), NoRank(3)):
        with pytest.raises(TypeError, match=f"cannot convert .*{type(layer).__name__}: only BatchNorm1d"):
            convert_norm(nn.Sequential(layer), "l2bn")


@pytest.mark.parametrize("kind", NORM_KINDS)
@pytest.mark.parametrize("dim,shape", [(1, (4, 8, 5)), (2, (4, 8, 5, 5)), (3, (4, 8, 3, 3, 3))])
def test_registry_builds_every_kind_and_rank(kind, dim, shape):
    layer = get_norm_layer(kind, dim=dim)(8)
    y = layer(torch.randn(shape))
    assert y.shape == shape
    expected = {
        "bn": (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)[dim - 1],
        "l2bn": (L2BN1d, L2BN2d, L2BN3d)[dim - 1],
        "gn": nn.GroupNorm,
        "ln": nn.GroupNorm,
        "none": nn.Identity,
    }[kind]
    assert type(layer) is expected


def test_registry_options_and_errors():
    assert create_norm("l2bn", 8, rescale=True).rescale
    assert create_norm("gn", 24, num_groups=32).num_groups == 24  # largest divisor <= 32
    assert create_norm("gn", 64).num_groups == 32
    assert create_norm("ln", 16).num_groups == 1
    with pytest.raises(ValueError, match="unknown norm 'batchnorm'; choose one of bn, l2bn, gn, ln, none"):
        get_norm_layer("batchnorm")
    with pytest.raises(ValueError, match="norm 'bn' does not take option\\(s\\) rescale"):
        get_norm_layer("bn", rescale=True)
    with pytest.raises(ValueError, match="dim must be 1, 2 or 3"):
        get_norm_layer("bn", dim=4)
