"""L2BN against the independent float64 reference: outputs, gradients, running statistics."""

from __future__ import annotations

import math

import pytest
import torch
from reference import ReferenceL2BN, reference_l2bn

from l2bn_lit import L2BN1d, L2BN2d, L2BN3d, l2_batch_norm

SHAPES = {L2BN1d: [(6, 5), (4, 3, 7)], L2BN2d: [(4, 3, 5, 6)], L2BN3d: [(3, 2, 3, 4, 5)]}
CASES = [(cls, shape) for cls, shapes in SHAPES.items() for shape in shapes]


@pytest.fixture(autouse=True, params=["numba", "aten"])
def cpu_training_path(request, monkeypatch) -> str:
    """Every test here runs on both CPU training paths: the numba kernels and the ATen path."""
    if request.param == "numba":
        pytest.importorskip("numba")
    monkeypatch.setenv("L2BN_KERNELS", request.param)
    return request.param


def _pair(cls, channels, dtype=torch.float64, **kwargs):
    torch.manual_seed(1)
    ours = cls(channels, dtype=dtype, **kwargs)
    ref = ReferenceL2BN(channels, dtype=dtype, **kwargs)
    if ours.affine:
        with torch.no_grad():
            ours.weight.uniform_(0.5, 1.5)
            ours.bias.uniform_(-0.5, 0.5)
        ref.load_state_dict(ours.state_dict())
    return ours, ref


def _grads(module, x, grad):
    x = x.detach().clone().requires_grad_()
    y = module(x)
    y.backward(grad)
    params = [p.grad for p in module.parameters()]
    return y.detach(), x.grad, params


def _assert_same_step(ours, ref, x, grad):
    """Output, input gradient and parameter gradients of one step agree to float64 precision."""
    y1, gx1, gp1 = _grads(ours, x, grad)
    y2, gx2, gp2 = _grads(ref, x, grad)
    torch.testing.assert_close(y1, y2, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gx1, gx2, rtol=1e-9, atol=1e-10)
    for a, b in zip(gp1, gp2):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("cls,shape", CASES)
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"rescale": True},
        {"momentum": None},
        {"affine": False},
        {"track_running_stats": False},
    ],
    ids=["default", "rescale", "cumulative", "no_affine", "no_running_stats"],
)
def test_matches_reference_over_steps(cls, shape, options):
    """Outputs, input/weight/bias gradients and buffers after several steps, then eval mode."""
    ours, ref = _pair(cls, shape[1], **options)
    gen = torch.Generator().manual_seed(0)
    for step in range(4):
        x = torch.randn(shape, generator=gen, dtype=torch.float64) * (step + 1) + step
        grad = torch.randn(shape, generator=gen, dtype=torch.float64)
        _assert_same_step(ours, ref, x, grad)
        ours.zero_grad()
        ref.zero_grad()
    for name, buf in ref.named_buffers():
        torch.testing.assert_close(dict(ours.named_buffers())[name], buf, rtol=1e-12, atol=1e-12)
    ours.eval()
    ref.eval()
    x = torch.randn(shape, generator=gen, dtype=torch.float64) + 2
    grad = torch.randn(shape, generator=gen, dtype=torch.float64)
    _assert_same_step(ours, ref, x, grad)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("rescale", [False, True])
@pytest.mark.parametrize("shape", [(4, 3, 5, 6), (5, 4), (3, 2, 4)])
def test_gradcheck(shape, training, rescale):
    gen = torch.Generator().manual_seed(0)
    c = shape[1]
    x = torch.randn(shape, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.rand(c, generator=gen, dtype=torch.float64).add_(0.5).requires_grad_()
    b = torch.randn(c, generator=gen, dtype=torch.float64, requires_grad=True)
    rm = torch.randn(c, generator=gen, dtype=torch.float64) * 0.1
    rv = torch.rand(c, generator=gen, dtype=torch.float64) * 0.01 + 0.01

    def fn(x, w, b):
        return l2_batch_norm(x, rm.clone(), rv.clone(), w, b, training, 0.1, 1e-5, 1e-12, rescale)

    assert torch.autograd.gradcheck(fn, (x, w, b))
    assert torch.autograd.gradgradcheck(fn, (x, w, b)) if not training else True


def test_functional_updates_running_stats_like_batch_norm():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, 4, 3, 3, generator=gen, dtype=torch.float64) * 2 + 1
    rm1, rv1 = torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
    rm2, rv2 = rm1.clone(), rv1.clone()
    y1 = l2_batch_norm(x, rm1, rv1, training=True, momentum=0.3)
    y2 = reference_l2bn(x, rm2, rv2, training=True, momentum=0.3)
    torch.testing.assert_close(y1, y2)
    torch.testing.assert_close(rm1, rm2)
    torch.testing.assert_close(rv1, rv2)
    # Hand check of the unbiased running variance: var of xh over (N, H, W) with M - 1.
    xh = x / x.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    var = xh.transpose(0, 1).flatten(1).var(dim=1, unbiased=True)
    torch.testing.assert_close(rv1, 0.7 + 0.3 * var)


HARD_INPUTS = {
    "large_mean": lambda g, s: 1000 + torch.randn(s, generator=g, dtype=torch.float64),
    "tiny": lambda g, s: 1e-20 * torch.randn(s, generator=g, dtype=torch.float64),
    "huge": lambda g, s: 1e15 * torch.randn(s, generator=g, dtype=torch.float64),
    "mixed_scales": lambda g, s: (
        torch.randn(s, generator=g, dtype=torch.float64)
        * torch.logspace(-6, 6, s[0], dtype=torch.float64).view(-1, *([1] * (len(s) - 1)))
    ),
}


HARD_SHAPES = [
    (shape, layout)
    # (8, 4, 7), (16, 8, 2, 2) and (32, 4, 1, 2): maps of at most 16 values (the CPU's gemv reductions)
    for shape in [(2, 3, 4, 5), (16, 8, 6, 6), (8, 4, 7), (16, 8, 2, 2), (32, 4, 1, 2), (2, 6)]
    for layout in (["contiguous", "channels_last"] if len(shape) == 4 else ["contiguous"])
]


@pytest.mark.parametrize("kind", list(HARD_INPUTS))
@pytest.mark.parametrize("shape,layout", HARD_SHAPES)
def test_float32_hard_inputs(kind, shape, layout):
    """float32 L2BN is at least as close to the float64 reference as the straightforward float32
    composite (F.normalize, then F.batch_norm) is, up to a small factor."""
    gen = torch.Generator().manual_seed(0)
    x64 = HARD_INPUTS[kind](gen, shape)
    grad64 = torch.randn(shape, generator=gen, dtype=torch.float64)
    c = shape[1]
    w64 = torch.rand(c, generator=gen, dtype=torch.float64) + 0.5
    b64 = torch.randn(c, generator=gen, dtype=torch.float64)

    def run(x, grad, w, b, fn):
        x = x.detach().clone().requires_grad_()
        w = w.detach().clone().requires_grad_()
        b = b.detach().clone().requires_grad_()
        rm, rv = torch.zeros(c, dtype=x.dtype), torch.ones(c, dtype=x.dtype)
        y = fn(x, rm, rv, w, b)
        y.backward(grad)
        return [y, x.grad, w.grad, b.grad, rm, rv]

    memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x32 = x64.float().contiguous(memory_format=memory_format)
    args32 = (x32, grad64.float(), w64.float(), b64.float())
    ours = run(*args32, lambda *a: l2_batch_norm(*a, training=True))
    composite = run(*args32, lambda *a: reference_l2bn(*a, training=True))
    exact = run(x32.double(), grad64, w64, b64, lambda *a: reference_l2bn(*a, training=True))
    names = ["output", "grad_input", "grad_weight", "grad_bias", "running_mean", "running_var"]
    # With two values per channel (a (2, C) batch) BN's output is +-1 whatever the input, so its
    # input gradient is what is left after cancelling terms var/eps (~1e4 here) times larger:
    # float32 rounding (6e-8) times that condition number is the floor there.
    floor = 1e-3 if x64.numel() // c == 2 else 2e-6
    for name, a, c, e in zip(names, ours, composite, exact):
        assert torch.isfinite(a).all(), name
        scale = e.abs().max().item() or 1.0
        err = (a.double() - e).abs().max().item() / scale
        composite_err = (c.double() - e).abs().max().item() / scale
        assert err <= max(4 * composite_err, floor), f"{name}: rel err {err:.2e}, float32 composite {composite_err:.2e}"


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("rescale", [False, True])
@pytest.mark.parametrize("shape", [(4, 3, 5, 5), (8, 3, 2, 2)], ids=["analytic", "tiny_maps"])
def test_all_zero_sample_is_finite(training, rescale, shape):
    x = torch.randn(shape)
    x[1] = 0
    module = L2BN2d(3, rescale=rescale).train(training)
    if not training:
        module.running_var.fill_(0.5)
    x.requires_grad_()
    y = module(x)
    y.square().sum().backward()
    assert torch.isfinite(y).all()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in module.parameters())
    ref = ReferenceL2BN(3, rescale=rescale).train(training)
    ref.load_state_dict(module.state_dict())
    if training:  # buffers already moved once; compare the outputs at the same state
        ref.running_mean.copy_(module.running_mean)
    x2 = x.detach().double().requires_grad_()
    y2 = ref.double()(x2)
    y2.square().sum().backward()
    torch.testing.assert_close(y.double(), y2, rtol=1e-4, atol=1e-4)


def test_eps_effect_and_rescale():
    """After the l2 step every element is about 1/sqrt(D): BN's eps (1e-5) then dominates the
    variance for large D and the output std drops below 1; rescale=True restores it."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, 64, 56, 56, generator=gen)
    std_plain = L2BN2d(64)(x).std().item()
    std_rescaled = L2BN2d(64, rescale=True)(x).std().item()
    d = 64 * 56 * 56
    expected = math.sqrt((1 / d) / (1 / d + 1e-5))  # xh has variance ~1/D per element
    assert std_plain == pytest.approx(expected, rel=0.02)
    assert std_plain < 0.6
    assert std_rescaled == pytest.approx(1.0, abs=1e-3)
