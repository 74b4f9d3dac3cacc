"""The fused-kernel training paths of :func:`l2bn_lit.nn.functional.l2_batch_norm` and their switch.

On CUDA, the training forward and backward are two custom operators, ``l2bn::train_forward`` and
``l2bn::train_backward`` (``torch.library``: fake implementations for FakeTensor, ``torch.export``
and FX; the autograd formula registered on the forward), each running four Triton kernels
(:mod:`l2bn_lit.nn.triton_kernels`): BatchNorm's passes over memory, and one launch per small
``(N, C)`` step where the ATen path makes about 25 small operations per direction. On the CPU,
one autograd function runs the same passes as numba kernels (:mod:`l2bn_lit.nn.cpu_kernels`): one
call into compiled code per direction.

The environment variable ``L2BN_KERNELS`` chooses, read at every call:

* ``auto`` (default): the Triton kernels for float32/float16/bfloat16 CUDA tensors when Triton
  imports, the numba kernels for float32/float64 CPU tensors when numba imports, the ATen path
  otherwise;
* ``triton``: the Triton kernels on any device (float64 keeps the ATen path, the float64 reference);
  on CPU tensors they run only under Triton's interpreter (``TRITON_INTERPRET=1``), which is how
  the CPU tests check them;
* ``numba``: the numba kernels for float32/float64 CPU tensors (other dtypes keep the ATen path);
* ``aten``: the ATen path everywhere.

``with use_kernels("aten"): ...`` overrides the variable within a block (benchmarks compare the two
paths in one process this way).

Under ``torch.compile`` the ATen path is traced, so Inductor keeps fusing it as before.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

__all__ = [
    "KERNEL_CHOICES",
    "fused_training_path",
    "kernel_choice",
    "l2_batch_norm_train",
    "l2_batch_norm_train_cpu",
    "update_running_stats",
    "use_cpu_kernels",
    "use_fused_kernels",
    "use_kernels",
]

KERNEL_CHOICES = ("auto", "triton", "numba", "aten")
#: the operators' namespace: ``l2bn``, or its own for a copy of this file carried in another package
#: (the DCASE inference package), so both can be imported in one process
_NAMESPACE = "l2bn" if __name__.startswith("l2bn_lit.") else f"l2bn_{__name__.split('.')[0].lower()}"
_FUSED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_CPU_KERNEL_DTYPES = (torch.float32, torch.float64)


_override: list[str] = []  # use_kernels' choices, innermost last


def kernel_choice() -> str:
    """The innermost :func:`use_kernels` choice, else the ``L2BN_KERNELS`` setting, checked."""
    if _override:
        return _override[-1]
    choice = os.environ.get("L2BN_KERNELS", "auto").strip().lower() or "auto"
    if choice not in KERNEL_CHOICES:
        raise ValueError(f"L2BN_KERNELS={choice!r}: choose one of {', '.join(KERNEL_CHOICES)}")
    return choice


@contextlib.contextmanager
def use_kernels(choice: str) -> Iterator[None]:
    """Within the block, the training path is ``choice`` (``auto``, ``triton``, ``numba`` or ``aten``) whatever
    ``L2BN_KERNELS`` says."""
    if choice not in KERNEL_CHOICES:
        raise ValueError(f"use_kernels({choice!r}): choose one of {', '.join(KERNEL_CHOICES)}")
    _override.append(choice)
    try:
        yield
    finally:
        _override.pop()


@functools.cache
def _triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


@functools.cache
def _numba_available() -> bool:
    return importlib.util.find_spec("numba") is not None


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def use_fused_kernels(x: Tensor) -> bool:
    """Whether the training step of ``x`` runs the Triton kernels (see the module docstring)."""
    choice = kernel_choice()
    return _any_kernels(x, choice) and _triton_kernels(x, choice)


def use_cpu_kernels(x: Tensor) -> bool:
    """Whether the training step of ``x`` runs the numba kernels (see the module docstring)."""
    choice = kernel_choice()
    return _any_kernels(x, choice) and _cpu_kernels(x, choice)


def _any_kernels(x: Tensor, choice: str) -> bool:
    """Whether any fused path may run: not ``aten``, not traced by ``torch.compile``, a non-empty ``x``."""
    return choice != "aten" and x.numel() > 0 and not torch.compiler.is_compiling()


def _triton_kernels(x: Tensor, choice: str) -> bool:
    if choice == "numba" or x.dtype not in _FUSED_DTYPES:
        return False
    if choice == "auto":
        return x.is_cuda and _triton_available()
    if not _triton_available():
        raise ImportError(
            "L2BN_KERNELS=triton needs Triton (it ships with torch's CUDA builds on Linux); "
            "set L2BN_KERNELS=aten or auto"
        )
    if x.device.type == "cpu" and not _interpreting():
        raise RuntimeError(
            "L2BN_KERNELS=triton on a CPU tensor runs only under Triton's interpreter: set "
            "TRITON_INTERPRET=1 before starting Python, or use L2BN_KERNELS=auto on the CPU"
        )
    return True


def _cpu_kernels(x: Tensor, choice: str) -> bool:
    if choice == "triton":
        return False
    if x.device.type != "cpu":
        if choice == "numba":
            raise RuntimeError(f"L2BN_KERNELS=numba runs on CPU tensors only, got one on {x.device}: use auto")
        return False
    if x.dtype not in _CPU_KERNEL_DTYPES:
        return False
    if _numba_available():
        return True
    if choice == "numba":
        raise ImportError("L2BN_KERNELS=numba needs numba (pip install numba); set L2BN_KERNELS=aten or auto")
    return False


@torch.library.custom_op(f"{_NAMESPACE}::train_forward", mutates_args=())
def train_forward(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float, l2_eps: float, rescale: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(y, m, v, s, sq_norm, mu, var, invstd)``: the output and, float32, the per-(sample, channel)
    mean and variance ``(N, C)``, the per-sample scale and squared norm ``(N,)``, and the channel mean,
    biased variance and inverse std of the l2-normalized input ``(C,)``."""
    from . import triton_kernels

    return triton_kernels.train_forward(x, weight, bias, eps, l2_eps, rescale)


@train_forward.register_fake
def _(x, weight, bias, eps, l2_eps, rescale):
    n, c = x.shape[:2]
    stat = functools.partial(x.new_empty, dtype=torch.float32)
    return torch.empty_like(x), stat(n, c), stat(n, c), stat(n), stat(n), stat(c), stat(c), stat(c)


@torch.library.custom_op(f"{_NAMESPACE}::train_backward", mutates_args=())
def train_backward(
    grad: Tensor,
    x: Tensor,
    weight: Tensor | None,
    m: Tensor,
    v: Tensor,
    s: Tensor,
    sq_norm: Tensor,
    mu: Tensor,
    invstd: Tensor,
    l2_eps: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(grad_x, grad_weight, grad_bias)`` from the forward's saved statistics (parameter gradients in float32)."""
    from . import triton_kernels

    return triton_kernels.train_backward(grad, x, weight, m, v, s, sq_norm, mu, invstd, l2_eps)


@train_backward.register_fake
def _(grad, x, weight, m, v, s, sq_norm, mu, invstd, l2_eps):
    c = x.shape[1]
    return torch.empty_like(x), x.new_empty(c, dtype=torch.float32), x.new_empty(c, dtype=torch.float32)


def _setup_context(ctx, inputs, output) -> None:
    x, weight, bias, _eps, l2_eps, _rescale = inputs
    _, m, v, s, sq_norm, mu, var, invstd = output
    ctx.mark_non_differentiable(m, v, s, sq_norm, mu, var, invstd)
    ctx.save_for_backward(x, weight, m, v, s, sq_norm, mu, invstd)
    ctx.l2_eps = l2_eps
    ctx.parameter_dtypes = (None if weight is None else weight.dtype, None if bias is None else bias.dtype)


def _backward(ctx, grad, *_):
    x, weight, m, v, s, sq_norm, mu, invstd = ctx.saved_tensors
    grad_x, grad_weight, grad_bias = train_backward(grad, x, weight, m, v, s, sq_norm, mu, invstd, ctx.l2_eps)
    weight_dtype, bias_dtype = ctx.parameter_dtypes
    grad_weight = grad_weight.to(weight_dtype) if weight_dtype is not None and ctx.needs_input_grad[1] else None
    grad_bias = grad_bias.to(bias_dtype) if bias_dtype is not None and ctx.needs_input_grad[2] else None
    return grad_x, grad_weight, grad_bias, None, None, None


train_forward.register_autograd(_backward, setup_context=_setup_context)


def update_running_stats(
    running_mean: Tensor | None,
    running_var: Tensor | None,
    mean: Tensor,
    var: Tensor,
    count: int,
    momentum: float,
) -> None:
    """In-place exponential update, exactly as F.batch_norm: unbiased variance in the estimate."""
    if running_mean is not None:
        running_mean.lerp_(mean.to(running_mean.dtype), momentum)
    if running_var is not None:
        unbiased = var * (count / max(count - 1, 1))
        running_var.lerp_(unbiased.to(running_var.dtype), momentum)


def l2_batch_norm_train(
    x: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    momentum: float,
    eps: float,
    l2_eps: float,
    rescale: bool,
) -> Tensor:
    """Training-mode L2BN through the Triton kernels, with :func:`l2bn_lit.l2_batch_norm`'s arguments:
    ``x`` ``(N, C, *)`` -> ``y`` of ``x``'s shape and dtype; the running statistics (if given) updated
    in place."""
    y, _, _, _, _, mu, var, _ = train_forward(x, weight, bias, eps, l2_eps, rescale)
    update_running_stats(running_mean, running_var, mu, var, x.numel() // x.shape[1], momentum)
    return y


class _CPUKernelsTrain(torch.autograd.Function):
    """Training-mode L2BN on the numba kernels (:mod:`l2bn_lit.nn.cpu_kernels`); the running statistics
    are updated in place by the forward kernel."""

    @staticmethod
    def forward(
        ctx,
        x: Tensor,
        running_mean: Tensor | None,
        running_var: Tensor | None,
        weight: Tensor | None,
        bias: Tensor | None,
        momentum: float,
        eps: float,
        l2_eps: float,
        rescale: bool,
    ) -> Tensor:
        y, ctx.saved = _cpu_kernels_module().train_forward(
            x, running_mean, running_var, weight, bias, momentum, eps, l2_eps, rescale
        )
        ctx.save_for_backward(x, weight)  # the saved arrays share their memory: autograd's in-place check
        ctx.l2_eps = l2_eps
        ctx.parameter_dtypes = (None if weight is None else weight.dtype, None if bias is None else bias.dtype)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable  # a second derivative raises instead of being silently 0
    def backward(ctx, grad: Tensor):
        x, _ = ctx.saved_tensors  # (raises if x or weight changed in place since the forward)
        grad_x, grad_weight, grad_bias = _cpu_kernels_module().train_backward(grad, x, ctx.saved, ctx.l2_eps)
        weight_dtype, bias_dtype = ctx.parameter_dtypes
        needs_weight, needs_bias = ctx.needs_input_grad[3:5]
        grad_weight = grad_weight.to(weight_dtype) if weight_dtype is not None and needs_weight else None
        grad_bias = grad_bias.to(bias_dtype) if bias_dtype is not None and needs_bias else None
        return grad_x, None, None, grad_weight, grad_bias, None, None, None, None


@functools.cache
def _cpu_kernels_module():
    """:mod:`l2bn_lit.nn.cpu_kernels`, imported on first use (it needs numba)."""
    from . import cpu_kernels

    return cpu_kernels


#: training-mode L2BN through the numba kernels, with :func:`l2_batch_norm_train`'s arguments (CPU ``x``)
l2_batch_norm_train_cpu = _CPUKernelsTrain.apply


def fused_training_path(x: Tensor) -> Callable[..., Tensor] | None:
    """The fused training path ``L2BN_KERNELS`` picks for ``x`` (:func:`l2_batch_norm_train`, Triton;
    :func:`l2_batch_norm_train_cpu`, numba), or None for the ATen path."""
    choice = kernel_choice()
    if not _any_kernels(x, choice):
        return None
    if _cpu_kernels(x, choice):
        return l2_batch_norm_train_cpu
    if _triton_kernels(x, choice):
        return l2_batch_norm_train
    return None
