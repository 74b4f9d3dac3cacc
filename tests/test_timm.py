"""timm models: BatchNormAct2d <-> L2BNAct2d through convert_norm, against a hand computation of every
converted norm and its activation; state dicts load both ways; ``timm.<name>`` archs."""

from __future__ import annotations

import copy

import pytest
import torch
from reference import reference_l2bn

from l2bn_lit import L2BNAct2d, convert_norm
from models import build_model

timm = pytest.importorskip("timm", reason="timm is an optional extra (pip install -e '.[timm]')")
from timm.layers import BatchNormAct2d  # noqa: E402

MODELS = ["efficientnet_b0", "mobilenetv3_large_100", "regnety_002"]


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10)
    with torch.no_grad():  # non-trivial running statistics and affine parameters
        for m in model.modules():
            if isinstance(m, BatchNormAct2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("training", [False, True])
def test_every_converted_norm_is_l2bn_then_its_activation(name, training):
    model = _model(name)
    count = sum(type(m) is BatchNormAct2d for m in model.modules())
    keys = list(model.state_dict())
    converted = convert_norm(model, "l2bn").train(training)
    norms = [m for m in converted.modules() if isinstance(m, L2BNAct2d)]
    assert len(norms) == count > 0 and not any(type(m) is BatchNormAct2d for m in converted.modules())
    assert list(converted.state_dict()) == keys

    checked = []

    def check(module, inputs, output):
        x = inputs[0].detach().double()
        stats = (module.running_mean.detach().double().clone(), module.running_var.detach().double().clone())
        if training:  # the module has already moved its buffers: recompute from the batch alone
            stats = (torch.zeros_like(stats[0]), torch.ones_like(stats[1]))
        y = reference_l2bn(
            x,
            *stats,
            module.weight.detach().double(),
            module.bias.detach().double(),
            training,
            0.1,
            module.eps,
            module.l2_eps,
            module.rescale,
        )
        act = copy.deepcopy(module.act).double()
        expected = act(module.drop(y))
        torch.testing.assert_close(output.double(), expected, rtol=1e-4, atol=1e-4)
        checked.append(module)

    handles = [m.register_forward_hook(check) for m in norms]
    converted(torch.randn(4, 3, 64, 64))
    for h in handles:
        h.remove()
    assert len(checked) == count


@pytest.mark.parametrize("name", MODELS)
def test_back_to_batch_norm_act_and_state_dicts_load_both_ways(name):
    original = _model(name).eval()
    x = torch.randn(2, 3, 64, 64)
    expected = original(x)
    converted = convert_norm(copy.deepcopy(original), "l2bn")
    back = convert_norm(copy.deepcopy(converted), "bn")
    assert sum(type(m) is BatchNormAct2d for m in back.modules()) == sum(
        type(m) is BatchNormAct2d for m in original.modules()
    )
    assert not any(isinstance(m, L2BNAct2d) for m in back.modules())
    torch.testing.assert_close(back.eval()(x), expected)
    fresh_l2bn = convert_norm(timm.create_model(name, pretrained=False, num_classes=10), "l2bn")
    fresh_l2bn.load_state_dict(original.state_dict())  # BN checkpoint -> L2BN model
    for key, value in original.state_dict().items():
        assert torch.equal(fresh_l2bn.state_dict()[key], value), key
    timm.create_model(name, pretrained=False, num_classes=10).load_state_dict(converted.state_dict())  # and back


def test_timm_archs_by_name():
    model = build_model("timm.mobilenetv3_small_050", num_classes=7, norm="l2bn", norm_options={"rescale": True})
    norms = [m for m in model.modules() if isinstance(m, L2BNAct2d)]
    assert norms and all(m.rescale for m in norms)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    assert not any(isinstance(m, L2BNAct2d) for m in build_model("timm.mobilenetv3_small_050", 7, norm="bn").modules())
    with pytest.raises(ValueError, match="unknown timm model 'no_such_net'"):
        build_model("timm.no_such_net", 7)
