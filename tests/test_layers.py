"""Module API, precision modes, layouts, compilers and exporters."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from op_counter import OpCounter
from reference import ReferenceL2BN
from torch import nn

import l2bn_lit
from l2bn_lit import L2BN1d, L2BN2d, L2BN3d, l2_batch_norm
from l2bn_lit.nn.fused import use_kernels


@pytest.mark.parametrize(
    "cls,bad_shapes,bn_cls",
    [
        (L2BN1d, [(4,), (2, 3, 4, 5)], nn.BatchNorm1d),
        (L2BN2d, [(4, 3), (2, 3, 4), (1, 2, 3, 4, 5)], nn.BatchNorm2d),
        (L2BN3d, [(2, 3, 4, 5)], nn.BatchNorm3d),
    ],
)
def test_wrong_rank_raises_like_batch_norm(cls, bad_shapes, bn_cls):
    layer, bn = cls(3), bn_cls(3)
    for shape in bad_shapes:
        with pytest.raises(ValueError) as ours:
            layer(torch.randn(shape))
        with pytest.raises(ValueError) as theirs:
            bn(torch.randn(shape))
        assert str(ours.value) == str(theirs.value)
    assert layer.num_batches_tracked.item() == 0  # a rejected input does not count as a batch


@pytest.mark.parametrize("kernels", ["auto", "aten"])
def test_single_value_per_channel_raises_in_training(kernels):
    with use_kernels(kernels), pytest.raises(ValueError, match="more than 1 value per channel"):
        L2BN1d(3)(torch.randn(1, 3))


@pytest.mark.parametrize("kernels", ["auto", "aten"])
@pytest.mark.parametrize("name", ["weight", "bias", "running_mean", "running_var"])
def test_a_module_tensor_of_another_channel_count_is_refused_before_any_kernel_runs(kernels, name):
    """On every training path (the numba kernels index every ``(C,)`` tensor by the input's channels and do
    not bounds-check), a module tensor of another size is refused with an error that names it."""
    layer = L2BN2d(3)
    tensor = torch.ones(4)
    if name in ("weight", "bias"):
        setattr(layer, name, nn.Parameter(tensor))
    else:
        setattr(layer, name, tensor)
    with use_kernels(kernels), pytest.raises(ValueError, match=rf"{name} must have shape \(3,\), got \(4,\)"):
        layer(torch.randn(4, 3, 2, 2))


@pytest.mark.parametrize("cls,bn_cls", [(L2BN1d, nn.BatchNorm1d), (L2BN2d, nn.BatchNorm2d), (L2BN3d, nn.BatchNorm3d)])
def test_state_dict_is_batch_norms(cls, bn_cls):
    bn = bn_cls(5)
    with torch.no_grad():
        bn.weight.uniform_()
        bn.running_mean.uniform_()
        bn.num_batches_tracked.fill_(7)
    layer = cls(5)
    assert list(layer.state_dict()) == list(bn.state_dict())
    layer.load_state_dict(bn.state_dict())
    back = bn_cls(5)
    back.load_state_dict(layer.state_dict())
    for key, value in bn.state_dict().items():
        assert torch.equal(back.state_dict()[key], value)
    assert sum(p.numel() for p in layer.parameters()) == sum(p.numel() for p in bn.parameters())


def test_repr_names_l2bn_options_and_no_class_is_named_batch_norm():
    assert "rescale=True" in repr(L2BN2d(4, rescale=True))
    for name in l2bn_lit.__all__:
        assert "BatchNorm" not in name
    with pytest.raises(ValueError, match="l2_eps"):
        L2BN2d(4, l2_eps=0)


def test_eval_mode_keeps_the_l2_step():
    layer = L2BN2d(3).eval()
    x = torch.randn(4, 3, 5, 5)
    assert torch.allclose(layer(x), layer(x * 7.5), atol=1e-5)  # per-sample scale invariance
    assert torch.allclose(layer(x)[:1], layer(x[:1]), atol=1e-6)  # no batch dependence


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("training", [True, False])
def test_low_precision_inputs_with_sum_of_squares_beyond_range(dtype, training):
    """64x32x32 features of magnitude 10: the squared norm (6.5e6) overflows float16 (65504)."""
    gen = torch.Generator().manual_seed(0)
    x32 = 10 * torch.randn(4, 64, 32, 32, generator=gen) + 5
    layer = L2BN2d(64).train(training)
    if not training:
        layer.running_mean.fill_(5e-3)
        layer.running_var.fill_(1e-4)
    ref = ReferenceL2BN(64).double().train(training)
    ref.load_state_dict(layer.state_dict())
    probe = torch.randn(x32.shape, generator=gen)
    x = x32.to(dtype).requires_grad_()
    y = layer(x)
    (y.float() * probe).sum().backward()
    assert y.dtype == dtype
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    x64 = x.detach().double().requires_grad_()
    y64 = ref(x64)
    (y64 * probe.double()).sum().backward()
    tol = 2e-2 if dtype == torch.float16 else 8e-2
    torch.testing.assert_close(y.double(), y64, atol=tol, rtol=tol)
    torch.testing.assert_close(x.grad.double(), x64.grad, atol=tol * x64.grad.abs().max().item(), rtol=tol)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cpu_autocast_matches_float32(dtype):
    """CPU autocast promotes nothing to float32: the layer accumulates in float32 itself."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), L2BN2d(64), nn.ReLU())
    x = 10 * torch.randn(8, 3, 32, 32)
    reference = model(x)
    with torch.autocast("cpu", dtype=dtype):
        y = model(x)
        y.float().mean().backward()
    assert y.dtype == dtype
    assert torch.isfinite(y).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    torch.testing.assert_close(y.float(), reference, atol=0.1, rtol=0.05)


def test_channels_last_matches_contiguous_and_keeps_layout():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 8, 6, 5, generator=gen)
    grad = torch.randn(4, 8, 6, 5, generator=gen)
    results = []
    for memory_format in (torch.contiguous_format, torch.channels_last):
        layer = L2BN2d(8)
        xi = x.clone(memory_format=memory_format).requires_grad_()
        y = layer(xi)
        y.backward(grad.contiguous(memory_format=memory_format))
        assert y.is_contiguous(memory_format=memory_format)
        results.append((y, xi.grad, layer.weight.grad, layer.running_var))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_torch_compile_matches_eager():
    torch.manual_seed(0)
    eager = nn.Sequential(nn.Conv2d(3, 8, 3), L2BN2d(8, rescale=True), nn.ReLU(), nn.Flatten(), nn.LazyLinear(4))
    eager(torch.randn(2, 3, 10, 10))
    compiled_model = copy.deepcopy(eager)
    compiled = torch.compile(compiled_model)
    x = torch.randn(6, 3, 10, 10)
    for mode in ("train", "eval"):
        eager.train(mode == "train")
        compiled_model.train(mode == "train")
        y1 = eager(x)
        y2 = compiled(x)
        torch.testing.assert_close(y2, y1, rtol=1e-4, atol=1e-5)
        if mode == "train":
            y1.square().sum().backward()
            y2.square().sum().backward()
            for p1, p2 in zip(eager.parameters(), compiled_model.parameters()):
                torch.testing.assert_close(p2.grad, p1.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(compiled_model[1].running_var, eager[1].running_var)


def test_torch_export_of_eval_model_matches_eager():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), L2BN2d(8), nn.ReLU())
    model.eval()
    with torch.no_grad():
        model[1].running_var.uniform_(0.5, 1.5)
    x = torch.randn(2, 3, 9, 9)
    exported = torch.export.export(model, (x,))
    torch.testing.assert_close(exported.module()(x), model(x))
    # the traced program holds no custom autograd.Function
    assert "L2BatchNormTrain" not in str(exported.graph)


def test_fx_tracing_and_fusion_leave_l2bn_alone():
    """fx fusion and fuse_modules match exact types: they must not fold L2BN into the conv."""
    import torch.fx.experimental.optimization as fx_opt
    from torchvision.models.feature_extraction import create_feature_extractor

    model = nn.Sequential(nn.Conv2d(3, 4, 3), L2BN2d(4), nn.ReLU()).eval()
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
    x = torch.randn(2, 3, 8, 8)
    fused = fx_opt.fuse(model)
    torch.testing.assert_close(fused(x), model(x))
    with pytest.raises(AssertionError, match="did not find fuser method"):
        torch.ao.quantization.fuse_modules(model, [["0", "1"]])
    features = create_feature_extractor(model, {"1": "normed"})
    torch.testing.assert_close(features(x)["normed"], model[:2](x))


def test_fuse_conv_bn_eval_is_wrong_on_l2bn():
    """Documented hazard: torch's conv-BN folding ignores the l2 step."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    conv, norm = nn.Conv2d(3, 4, 3).eval(), L2BN2d(4).eval()
    x = 5 * torch.randn(2, 3, 8, 8)
    folded = fuse_conv_bn_eval(conv, norm)
    assert (folded(x) - norm(conv(x))).abs().max() > 1.0


def test_functional_validates_shapes_and_eval_buffers():
    x = torch.randn(4, 3, 2, 2)
    with pytest.raises(ValueError, match="weight must have shape"):
        l2_batch_norm(x, None, None, torch.ones(4), training=True)
    with pytest.raises(ValueError, match="running_mean and running_var are required"):
        l2_batch_norm(x, None, None, training=False)
    torch.testing.assert_close(
        l2_batch_norm(x, None, None, training=True),
        F.batch_norm(F.normalize(x.flatten(1)).view_as(x), None, None, training=True),
    )


@pytest.mark.parametrize("norm_cls", [nn.BatchNorm2d, L2BN2d])
def test_a_common_input_scale_changes_neither_output_nor_weight_gradient_of_conv_then_norm(norm_cls):
    """docs/results.md (normalization constants): dividing the images by another std scales the first
    convolution's input, i.e. its weights, to which the norm after it is blind; so the forward pass and
    the weight gradient are the same (float64, a negligible eps so that the statement is exact)."""
    torch.manual_seed(0)
    x, probe = torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.randn(4, 5, 8, 8, dtype=torch.float64)
    results = []
    for scale in (1.0, 1.22):
        conv = nn.Conv2d(3, 5, 3, padding=1, bias=False).double()
        torch.manual_seed(1)
        conv.reset_parameters()
        out = norm_cls(5, eps=1e-30).double()(conv(x * scale))
        (out * probe).sum().backward()
        results.append((out.detach(), conv.weight.grad))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shape, budget", [((8, 16, 7, 7), 60), ((8, 16, 2, 2), 17)], ids=["analytic", "tiny_maps"])
def test_the_cpu_training_step_op_count(shape, budget, monkeypatch):
    """The ATen path's eager cost on the CPU is per operator: one training forward + backward of L2BN2d
    makes at most 60 operators on the analytic path (76 before they were folded) and 17 on tiny maps'
    composite (22 with autograd's own l2 step). (The numba kernels: tests/test_fused.py.)"""
    monkeypatch.setenv("L2BN_KERNELS", "aten")
    layer = L2BN2d(shape[1])
    x = torch.randn(shape, requires_grad=True)
    grad = torch.randn(shape)
    with OpCounter() as forward:
        y = layer(x)
    with OpCounter() as backward:
        y.backward(grad)
    assert len(forward.ops + backward.ops) <= budget, forward.ops + backward.ops
    analytic = "aten._native_batch_norm_legit_no_training.default" in forward.ops  # its affine pass
    assert analytic == (shape[-1] > 2)


@pytest.mark.parametrize(
    "shape,composite", [((8, 4, 7), True), ((16, 8, 4, 4), True), ((5, 4), True), ((4, 3, 5, 6), False)]
)
def test_tiny_cpu_maps_train_through_the_composite(shape, composite, monkeypatch):
    """Maps of at most 16 values per channel (contiguous, CPU) take the composite (the per-sample scale with
    its own few-op backward, then F.batch_norm); larger ones the analytic path. Both equal the float64
    reference (tests/test_numerics.py: the hard inputs and gradcheck include such maps)."""
    monkeypatch.setenv("L2BN_KERNELS", "aten")
    x = torch.randn(shape, requires_grad=True)
    y = l2_batch_norm(x, torch.zeros(shape[1]), torch.ones(shape[1]), training=True)
    assert ("_L2BatchNormTrain" not in type(y.grad_fn).__name__) == composite
    channels_last = x.detach().unsqueeze(-1).contiguous(memory_format=torch.channels_last) if len(shape) == 3 else None
    if channels_last is not None and channels_last.dim() == 4:
        y = l2_batch_norm(channels_last.requires_grad_(), None, None, training=True)
        assert "_L2BatchNormTrain" in type(y.grad_fn).__name__  # the composite is for contiguous maps only
