"""The fused paths (:mod:`l2bn_lit.nn.fused`): the Triton kernels (``L2BN_KERNELS=triton``; on the CPU
under Triton's interpreter, small shapes: the interpreter is slow) and the numba CPU kernels
(``L2BN_KERNELS=numba``), against the float64 reference; the operation count per training step (CUDA
path counted without a GPU, and the CPU path); the switch."""

from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass, field

import pytest
import torch
from op_counter import OpCounter
from processes import run_together
from reference import ReferenceL2BN
from torch._subclasses.fake_tensor import FakeTensorMode

from l2bn_lit import L2BN1d, L2BN2d, L2BN3d
from l2bn_lit.nn import fused

pytest.importorskip("triton")  # CPU runs: conftest sets TRITON_INTERPRET=1 before anything imports Triton

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
#: shape, memory format: 1d, 2d contiguous and channels_last, the 1x2 spatial case, 3d both ways
CASES = [
    ((6, 5), torch.contiguous_format),
    ((4, 3, 5, 6), torch.contiguous_format),
    ((4, 3, 5, 6), torch.channels_last),
    ((3, 4, 1, 2), torch.contiguous_format),
    ((3, 2, 3, 4, 2), torch.contiguous_format),
    ((3, 2, 3, 4, 2), torch.channels_last_3d),
]
LAYERS = {2: L2BN1d, 3: L2BN1d, 4: L2BN2d, 5: L2BN3d}


@dataclass
class FusedPath:
    """A fused path under test: its ``L2BN_KERNELS`` choice, the device its tensors live on, and the
    input shapes its forward was called with."""

    choice: str
    device: str
    calls: list[torch.Size] = field(default_factory=list)


@pytest.fixture(params=["triton", "numba"])
def fused_path(request, monkeypatch) -> FusedPath:
    """Each fused path in turn (``indirect`` parametrization picks one), its forward spied on."""
    path = FusedPath(request.param, DEVICE if request.param == "triton" else "cpu")
    pytest.importorskip(path.choice)
    monkeypatch.setenv("L2BN_KERNELS", path.choice)
    if path.choice == "triton":
        module = fused
    else:
        from l2bn_lit.nn import cpu_kernels as module
    real = module.train_forward

    def spy(*args):
        path.calls.append(args[0].shape)
        return real(*args)

    monkeypatch.setattr(module, "train_forward", spy)
    return path


def _relative(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()


def _steps(layer: torch.nn.Module, xs: list[torch.Tensor], grads: list[torch.Tensor], dtype: torch.dtype):
    """Training steps: per step the output and the input and parameter gradients (float64 copies)."""
    results = []
    for x, grad in zip(xs, grads):
        x = x.to(dtype).requires_grad_(True)
        y = layer(x)
        params = [p for p in layer.parameters()]
        grads_out = torch.autograd.grad(y, [x, *params], grad.to(y.dtype))
        results.append((y, *grads_out))
    return results


@pytest.mark.parametrize("shape, memory_format", CASES)
@pytest.mark.parametrize("options", [{}, {"affine": False, "rescale": True}, {"momentum": None}])
def test_fused_training_equals_the_float64_reference(fused_path, shape, memory_format, options):
    """Two training steps (outputs, input and parameter gradients, running statistics, then eval)
    of the fused path against F.normalize + F.batch_norm in float64: float32 relative error <= 2e-4."""
    torch.manual_seed(0)
    channels = shape[1]
    xs = [(torch.randn(shape) * 3 + 2).contiguous(memory_format=memory_format) for _ in range(2)]
    grads = [torch.randn(shape) for _ in range(2)]
    layer = LAYERS[len(shape)](channels, **options).to(fused_path.device)
    reference = ReferenceL2BN(
        channels,
        momentum=options.get("momentum", 0.1),
        affine=options.get("affine", True),
        rescale=options.get("rescale", False),
    ).double()
    if layer.affine:
        with torch.no_grad():
            for p in (layer.weight, layer.bias):
                p.normal_()
        reference.load_state_dict(layer.state_dict())
    got = _steps(layer, [x.to(fused_path.device) for x in xs], [g.to(fused_path.device) for g in grads], torch.float32)
    want = _steps(reference, [x.double() for x in xs], [g.double() for g in grads], torch.float64)
    assert len(fused_path.calls) == 2
    for step_got, step_want in zip(got, want):
        for a, b in zip(step_got, step_want):
            assert _relative(a.cpu(), b) <= 2e-4
        assert step_got[0].is_contiguous(memory_format=memory_format)  # the layout is kept
    for name in ("running_mean", "running_var"):
        assert _relative(getattr(layer, name).cpu(), getattr(reference, name)) <= 2e-4
    assert layer.num_batches_tracked.item() == reference.num_batches_tracked.item() == 2
    layer.eval()
    reference.eval()
    assert _relative(layer(xs[0].to(fused_path.device)).cpu(), reference(xs[0].double())) <= 2e-4


@pytest.mark.parametrize("fused_path", ["triton"], indirect=True)  # the numba kernels take float32/float64
@pytest.mark.parametrize("dtype, tolerance", [(torch.float16, 1e-2), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_half_precision_inputs_accumulate_in_float32(fused_path, dtype, tolerance, memory_format):
    """float16/bfloat16 inputs whose squared norms exceed float16's range: finite, float32-accurate
    statistics; the output and input gradient in the input's dtype."""
    torch.manual_seed(1)
    x = (torch.randn(4, 3, 6, 5) * 60 + 30).contiguous(memory_format=memory_format)  # ||x||^2 ~ 3e5 > 65504
    grad = torch.randn_like(x)
    layer = L2BN2d(3).to(fused_path.device)
    ((y, dx, dw, db),) = _steps(layer, [x.to(fused_path.device)], [grad.to(fused_path.device)], dtype)
    ((ry, rdx, rdw, rdb),) = _steps(
        ReferenceL2BN(3).double(), [x.to(dtype).double()], [grad.to(dtype).double()], torch.float64
    )
    assert y.dtype == dx.dtype == dtype and dw.dtype == torch.float32
    for a, b in ((y, ry), (dx, rdx), (dw, rdw), (db, rdb)):
        assert torch.isfinite(a).all() and _relative(a.cpu(), b) <= tolerance


def test_an_all_zero_sample_gives_what_the_reference_gives(fused_path):
    torch.manual_seed(2)
    x = torch.randn(4, 3, 4, 4) + 1
    x[1] = 0  # its norm is clamped to l2_eps: it normalizes to zero, with no radial gradient
    grad = torch.randn_like(x)
    got = _steps(
        L2BN2d(3).to(fused_path.device), [x.to(fused_path.device)], [grad.to(fused_path.device)], torch.float32
    )[0]
    want = _steps(ReferenceL2BN(3).double(), [x.double()], [grad.double()], torch.float64)[0]
    for a, b in zip(got, want):
        assert torch.isfinite(a).all() and _relative(a.cpu(), b) <= 2e-4


@pytest.mark.parametrize("fused_path", ["triton", "numba"], indirect=True)
def test_fused_and_aten_paths_leave_the_same_state_dict(fused_path, monkeypatch):
    torch.manual_seed(3)
    xs = [torch.randn(5, 4, 3, 3) * 2 - 1 for _ in range(3)]
    target = torch.randn(5, 4, 3, 3).to(fused_path.device)
    states = {}
    for choice in ("aten", fused_path.choice):
        monkeypatch.setenv("L2BN_KERNELS", choice)
        torch.manual_seed(4)
        layer = L2BN2d(4).to(fused_path.device)
        optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
        for x in xs:
            (layer(x.to(fused_path.device)) * target).sum().backward()
            optimizer.step()
            optimizer.zero_grad()
        states[choice] = layer.state_dict()
    assert len(fused_path.calls) == len(xs)
    for key, value in states["aten"].items():
        torch.testing.assert_close(states[fused_path.choice][key], value, rtol=1e-5, atol=1e-5)


def _backward_by_hand(output: torch.Tensor, grad: torch.Tensor) -> None:
    """Runs the backward nodes of ``output``'s graph (a chain) one after the other, as the engine would:
    the engine itself refuses fake CUDA tensors without a GPU."""
    stack = [(output.grad_fn, grad)]
    while stack:
        node, node_grad = stack.pop()
        if node is None or type(node).__name__ == "AccumulateGrad":
            continue
        grads = node(node_grad) if callable(node) else node.apply(node_grad)
        grads = grads if isinstance(grads, tuple) else (grads,)
        stack.extend(
            (child, g) for (child, _), g in zip(node.next_functions, grads) if child is not None and g is not None
        )


def _count_cuda_ops(layer_cls, shape, dtype, memory_format, choice, monkeypatch) -> tuple[list[str], list[str]]:
    """The operators of one training forward and of its backward, on fake CUDA tensors."""
    monkeypatch.setenv("L2BN_KERNELS", choice)
    with FakeTensorMode(allow_non_fake_inputs=False):
        layer = layer_cls(shape[1], device="cuda")
        x = torch.empty(shape, device="cuda", dtype=dtype).contiguous(memory_format=memory_format).requires_grad_(True)
        grad = torch.empty(shape, device="cuda", dtype=dtype)
        with OpCounter() as forward:
            y = layer(x)
        with OpCounter() as backward:
            if choice != "aten":  # the ATen path's CUDA backward initializes CUDA, which a machine without a GPU cannot
                _backward_by_hand(y, grad)
    return forward.ops, backward.ops


@pytest.mark.parametrize(
    "dtype, memory_format",
    [
        (torch.float32, torch.contiguous_format),
        (torch.float32, torch.channels_last),
        (torch.bfloat16, torch.contiguous_format),
    ],
)
def test_the_cuda_training_step_makes_at_most_12_operators(dtype, memory_format, monkeypatch):
    """Counted without a GPU (fake CUDA tensors): the fused path's training forward + backward of
    L2BN2d (BatchNorm2d: 4, 5 in channels_last; the ATen path's forward alone: 20 or more)."""
    shape = (8, 16, 7, 7)
    forward, backward = _count_cuda_ops(L2BN2d, shape, dtype, memory_format, "auto", monkeypatch)
    assert "l2bn.train_forward.default" in forward and "l2bn.train_backward.default" in backward
    assert len(forward + backward) <= 12, forward + backward
    bn_forward, bn_backward = _count_cuda_ops(torch.nn.BatchNorm2d, shape, dtype, memory_format, "auto", monkeypatch)
    assert 4 <= len(bn_forward + bn_backward) <= 5, bn_forward + bn_backward  # the counter sees what the issue counted
    aten_forward, _ = _count_cuda_ops(L2BN2d, shape, dtype, memory_format, "aten", monkeypatch)
    assert len(aten_forward) >= 20, aten_forward


def test_the_switch(monkeypatch):
    x = torch.randn(4, 3, 2, 2)
    monkeypatch.setenv("L2BN_KERNELS", "fast")
    with pytest.raises(ValueError, match="L2BN_KERNELS='fast': choose one of auto, triton, numba, aten"):
        L2BN2d(3)(x)
    monkeypatch.setenv("L2BN_KERNELS", "aten")
    assert not fused.use_fused_kernels(x) and not fused.use_cpu_kernels(x)
    monkeypatch.setenv("L2BN_KERNELS", "auto")
    assert fused.use_fused_kernels(x) == x.is_cuda
    numba_here = importlib.util.find_spec("numba") is not None
    assert fused.use_cpu_kernels(x) == fused.use_cpu_kernels(x.double()) == numba_here
    assert not fused.use_cpu_kernels(x.bfloat16())  # half precision on the CPU: the ATen path
    monkeypatch.setenv("L2BN_KERNELS", "triton")
    assert not fused.use_fused_kernels(x.double())  # float64: the ATen path, the float64 reference
    assert not fused.use_cpu_kernels(x)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="runs only under Triton's interpreter: set TRITON_INTERPRET=1"):
        fused.use_fused_kernels(x)
    monkeypatch.setenv("L2BN_KERNELS", "numba")
    assert not fused.use_fused_kernels(x) and fused.use_cpu_kernels(x) == numba_here
    with FakeTensorMode(), pytest.raises(RuntimeError, match="L2BN_KERNELS=numba runs on CPU tensors only"):
        fused.use_cpu_kernels(torch.empty(4, 3, 2, 2, device="cuda"))


def test_compile_keeps_working_with_the_fused_path(fused_path):
    """Under torch.compile the ATen path is traced (Inductor fuses it as before), eager runs the kernels."""
    torch.manual_seed(5)
    x = torch.randn(4, 3, 3, 3, device=fused_path.device)
    eager = L2BN2d(3).to(fused_path.device)
    compiled_layer = L2BN2d(3).to(fused_path.device)
    compiled = torch.compile(compiled_layer, fullgraph=True)
    torch.testing.assert_close(compiled(x), eager(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(compiled_layer.running_var, eager.running_var, rtol=1e-5, atol=1e-6)
    assert len(fused_path.calls) == 1  # the eager call


def test_use_kernels_overrides_the_variable_within_a_block(monkeypatch):
    monkeypatch.setenv("L2BN_KERNELS", "triton")
    x = torch.randn(4, 3, 2, 2)
    with fused.use_kernels("aten"):
        assert fused.kernel_choice() == "aten" and not fused.use_fused_kernels(x)
    assert fused.kernel_choice() == "triton"
    with pytest.raises(ValueError, match="use_kernels\\('cuda'\\): choose one of auto, triton, numba, aten"):
        with fused.use_kernels("cuda"):
            pass


@pytest.mark.parametrize("fused_path", ["numba"], indirect=True)
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_the_cpu_training_step_calls_no_full_size_aten_operator(fused_path, memory_format):
    """The numba path's training forward + backward of L2BN2d on the CPU calls no ATen operator on a
    full-size tensor (the ATen path: 20 or more operators per direction): what is left is the in-place
    ``num_batches_tracked`` count and the casts of the ``(C,)`` parameter gradients to float32."""
    x = torch.randn(8, 16, 7, 7).contiguous(memory_format=memory_format).requires_grad_(True)
    grad = torch.randn_like(x)
    layer = L2BN2d(16)
    with OpCounter() as counter:
        layer(x).backward(grad)
    assert len(fused_path.calls) == 1
    assert set(counter.ops) <= {"aten.add_.Tensor", "aten._to_copy.default"}, counter.ops
    assert len(counter.ops) <= 3, counter.ops
    with OpCounter() as aten, fused.use_kernels("aten"):
        layer(x).backward(grad)
    assert len(aten.ops) >= 40, aten.ops


@pytest.mark.parametrize("fused_path", ["numba"], indirect=True)
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_the_cpu_kernels_are_float64_exact_and_deterministic(fused_path, memory_format):
    """float64 inputs (a large mean: the two-pass moments do not cancel) equal the reference to float64
    rounding; the result does not depend on the number of threads (each (sample, channel) sum runs in
    a fixed order within one thread)."""
    torch.manual_seed(6)
    x = (torch.randn(6, 5, 4, 3, dtype=torch.float64) * 1e-3 + 1e3).contiguous(memory_format=memory_format)
    grad = torch.randn_like(x)
    import numba

    threads = torch.get_num_threads()
    if numba.config.NUMBA_NUM_THREADS < 2:  # the pool took torch's thread count when it started
        pytest.skip("numba's thread pool has one thread here: nothing to compare")
    results, used = [], []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append(_steps(L2BN2d(5).double(), [x], [grad], torch.float64)[0])
            used.append(numba.get_num_threads())
    finally:
        torch.set_num_threads(threads)
    assert used == [1, 2]
    want = _steps(ReferenceL2BN(5).double(), [x], [grad], torch.float64)[0]
    for one, many, reference in zip(*results, want):
        assert torch.equal(one, many)
        torch.testing.assert_close(one, reference, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("fused_path", ["numba"], indirect=True)
@pytest.mark.parametrize("channels_last", [False, True])
def test_the_moments_keep_float64_precision_far_from_zero(fused_path, channels_last):
    """The per-(sample, channel) moments of a group with a mean of 1e8, a spread of 1 and one value 1e3
    off equal numpy's two-pass float64 ones to 1e-12 (the plain sums of x and x^2 would lose about 1e-4
    of the variance; a pass shifting by a poorly chosen value loses precision too)."""
    import numpy as np

    from l2bn_lit.nn import cpu_kernels

    x = 1e8 + np.random.default_rng(0).standard_normal((4, 3, 50))  # (N, C, S)
    x[:, :, 0] += 1e3
    m, v, sq_norm = np.empty((4, 3)), np.empty((4, 3)), np.empty(4)
    if channels_last:
        cpu_kernels._moments_nsc(np.ascontiguousarray(x.transpose(0, 2, 1)), m, v, sq_norm, 2)
    else:
        cpu_kernels._moments_ncs(x, m, v, sq_norm, 2)
    np.testing.assert_allclose(m, x.mean(-1), rtol=1e-15)
    np.testing.assert_allclose(v, x.var(-1), rtol=1e-12)
    np.testing.assert_allclose(sq_norm, (x * x).sum((1, 2)), rtol=1e-13)


@pytest.mark.parametrize("fused_path", ["numba"], indirect=True)
def test_a_second_derivative_through_the_cpu_kernels_raises(fused_path):
    """The kernels' backward is not itself differentiable: asking for a second derivative is an error,
    not a silent zero."""
    x = torch.randn(4, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    (grad_x,) = torch.autograd.grad(L2BN2d(3).double()(x).pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        grad_x.sum().backward()


_POOL_PROBE = """
import ctypes, os, sys
os.environ.update(arg.split("=", 1) for arg in sys.argv[1:])  # a user's own settings
import torch
torch.set_num_threads(1)
from l2bn_lit.nn import cpu_kernels  # starts numba's pool
import numba
runtime = [line.split()[-1] for line in open("/proc/self/maps") if "libgomp" in line and "torch" not in line]
if runtime:
    ctypes.CDLL(runtime[0]).omp_display_env(0)  # numba's OpenMP runtime: its settings, to stderr
print(numba.threading_layer(), numba.config.NUMBA_NUM_THREADS, os.environ.get("OMP_WAIT_POLICY"),
      os.environ.get("NUMBA_NUM_THREADS"), flush=True)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
@pytest.mark.parametrize("fused_path", ["numba"], indirect=True)
def test_numbas_pool_takes_torchs_thread_count_and_sleeps_between_kernels(fused_path):
    """numba's thread pool starts with as many threads as torch's operators use (``torch.set_num_threads``
    before the first call) and its OpenMP runtime (a second one beside torch's) with
    ``OMP_WAIT_POLICY=PASSIVE``, without leaving either setting in the environment; a user's own
    settings win."""
    environment = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "NUMBA_NUM_THREADS")}
    ours, users = run_together(
        [sys.executable, "-c", _POOL_PROBE],
        [sys.executable, "-c", _POOL_PROBE, "OMP_WAIT_POLICY=ACTIVE", "NUMBA_NUM_THREADS=2"],
        timeout=120,
        env=environment,
    )
    assert ours.returncode == 0 and users.returncode == 0, ours.stderr[-2000:] + users.stderr[-2000:]
    layer, threads, *left = ours.stdout.split()
    if layer != "omp" or "OMP_WAIT_POLICY" not in ours.stderr:
        pytest.skip(f"numba runs its {layer} threading layer here, not OpenMP")
    assert threads == "1" and left == ["None", "None"]  # torch's count; the environment as it was
    assert "OMP_WAIT_POLICY = 'PASSIVE'" in ours.stderr
    assert users.stdout.split()[1:] == ["2", "ACTIVE", "2"] and "OMP_WAIT_POLICY = 'ACTIVE'" in users.stderr
