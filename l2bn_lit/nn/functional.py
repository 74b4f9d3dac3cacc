"""Functional L2BN: per-sample l2 normalization followed by batch normalization.

For an input ``x`` of shape ``(N, C, *)`` with ``D = x[0].numel()`` and ``S = D / C``:

1. ``xh[n] = k * x[n] / max(||x[n]||_2, l2_eps)`` with ``k = sqrt(D)`` if ``rescale`` else ``1``;
2. ordinary batch normalization of ``xh`` over ``(N, *)`` per channel, exactly as
   :func:`torch.nn.functional.batch_norm` (biased batch variance to normalize, unbiased variance
   for the running estimate).

Training runs one of three paths (``L2BN_KERNELS``, :mod:`l2bn_lit.nn.fused`): the Triton kernels on
CUDA, the numba kernels on CPU float32/float64, or the ATen path of this module, which is the
reference, the path ``torch.compile`` traces, and the fallback where neither kernel set runs.

The ATen training path never materializes ``xh``. Every statistic it needs follows from the
per-(sample, channel) mean ``m[n, c]`` and centred sum of squares ``q[n, c]`` of ``x``:

* ``||x[n]||^2 = sum_c (q[n, c] + S * m[n, c]^2)``;
* channel mean of ``xh``: ``mu[c] = mean_n(s[n] * m[n, c])``;
* channel variance of ``xh`` (Chan's parallel formula, no cancellation):
  ``var[c] = mean_n(s[n]^2 * q[n, c] / S + (s[n] * m[n, c] - mu[c])^2)``.

The training forward makes batch norm's passes over ``x``: the per-(sample, channel) moments
(one Welford pass on an accelerator; on the CPU a mean and a sum-of-squares read, as batch norm's
CPU kernel also reads twice) and one centring affine pass that writes ``y``. The analytic backward is
one fused reduction over ``(grad, x)`` (batch norm's own kernel) and the elementwise input gradient
(a pass over ``x`` and one over ``(grad, grad_x)``; ``torch.compile`` fuses the two).
Only ``x`` is kept for backward, as batch norm keeps it. The small ``(N, C)`` algebra runs in float32
(float64 for float64 input) whatever the input dtype, so float16/bfloat16 inputs whose squared
norms exceed their range (e.g. 65504 for float16) still give finite, float32-accurate statistics.

On the CPU, contiguous float32/float64 maps of at most ``_PER_OP_BOUND_MAP`` values per (sample,
channel) train through the composite instead (the per-sample scale with a few-op backward, then
``F.batch_norm``): there every per-(sample, channel) operation of the analytic path loops over too few
values to run fast. ``torch.export`` traces
the composite too, so that an exported training graph runs forward and backward under autograd.

The eval path (running statistics) is plain differentiable tensor algebra without a custom
``autograd.Function``, so :func:`torch.export.export` and ONNX export can trace it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .fused import fused_training_path, update_running_stats

__all__ = ["l2_batch_norm"]


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _to_finite(t: Tensor, dtype: torch.dtype) -> Tensor:
    """Casts ``t`` to ``dtype``, clamping to its finite range (a zero sample's 1/l2_eps scale
    would become inf in float16 and turn ``inf * 0`` into NaN)."""
    if t.dtype == dtype:
        return t
    big = torch.finfo(dtype).max
    return t.clamp(-big, big).to(dtype)


def _as_rows(t: Tensor) -> Tensor | None:
    """Views a contiguous ``(N, C, *)`` tensor as ``(1, N*C, S)``, or returns None."""
    if not t.is_contiguous():
        return None
    return t.view(1, t.shape[0] * t.shape[1], -1)


#: where ``m^2 > _ILL_CONDITIONED * v`` the one-pass variance ``E[x^2] - m^2`` would lose more than
#: about 1e-6 of its value to float32 rounding: the centred two-pass variance is used instead
_ILL_CONDITIONED = 16.0


def _moments(x: Tensor, acc: torch.dtype, spatial: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per-(sample, channel) mean ``m``, biased variance ``v`` and sum of squares ``sq`` of ``x`` over
    its spatial dims, each ``(N, C)`` in ``acc``, reading ``x`` as few times as the device allows.

    * float32/float64 on an accelerator or under ``torch.compile``: one Welford pass
      (``torch.var_mean``, the algorithm of batch norm's CUDA statistics kernel);
    * float32/float64 on the CPU, where ``var_mean``'s Welford kernel is about 30x slower than a
      plain reduction: the mean and the sum of squares (two vectorized reads, nothing written), or the
      exact centred variance wherever that one-pass formula would cancel (``m^2 > 16 v``);
    * float16/bfloat16: mean and centred sum of squares accumulated in ``acc`` (their squares can
      exceed the input type's range).
    """
    dims = tuple(range(2, x.dim()))
    if not dims:
        m = x.to(acc)
        return m, torch.zeros_like(m), m * m
    if x.dtype == acc and (x.device.type != "cpu" or torch.compiler.is_compiling()):
        v, m = torch.var_mean(x, dims, correction=0)
        return m, v, torch.addcmul(v, m, m).mul_(spatial)
    if x.dtype == acc:
        m = x.mean(dims)
        # vector_norm is fast for an inner reduction; over the strided spatial dims of channels_last
        # it is ~20x slower than squaring and summing
        sq = torch.linalg.vector_norm(x, 2, dim=dims).square_() if x.is_contiguous() else (x * x).sum(dims)
        v = torch.addcmul(sq / spatial, m, m, value=-1.0)
        # well conditioned (v >= m^2 / 16, so v >= 0) everywhere: one pass was exact enough
        if torch.addcmul(v, m, m, value=-1.0 / _ILL_CONDITIONED).amin().item() >= 0:
            return m, v, sq
    else:
        m = x.mean(dims, dtype=acc)
    v = torch.linalg.vector_norm(_centred(x, m), 2, dim=dims, dtype=acc).square_().div_(spatial)
    return m, v, torch.addcmul(v, m, m).mul_(spatial)


def _centred(x: Tensor, m: Tensor) -> Tensor:
    """``x - m`` in ``x``'s dtype, ``m`` ``(N, C)``."""
    return torch.sub(x, _expand(m, x).to(x.dtype))


def _affine(x: Tensor, m: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``(x - m) * a + b`` per (sample, channel): one pass over ``x`` into a new tensor of its dtype
    and memory format. ``m``, ``a``, ``b``: ``(N, C)`` in the accumulation dtype.

    A contiguous ``x`` goes through batch norm's eval-mode kernel on the ``(1, N*C, S)`` view (unit
    variance, ``eps = 0``), which centres before it scales, so a large mean cannot cancel. Other
    layouts (channels_last) compute ``a * x + (b - a * m)`` in one ``addcmul``; low-precision inputs
    there are centred explicitly first.
    """
    rows = _as_rows(x)
    if rows is not None:
        a, b, m = (t.reshape(-1) for t in (a, b, m))
        y = torch.ops.aten._native_batch_norm_legit_no_training(rows, a, b, m, torch.ones_like(m), 0.0, 0.0)[0]
        # _unsafe_view: autograd does not see a view (none may leave a custom Function: in-place ops after it)
        return torch.ops.aten._unsafe_view(y, x.shape)
    if x.dtype == a.dtype:
        return torch.addcmul(_expand(torch.addcmul(b, a, m, value=-1.0), x), x, _expand(a, x))
    return _centred(x, m).mul_(_expand(_to_finite(a, x.dtype), x)).add_(_expand(_to_finite(b, x.dtype), x))


def _grad_sums(grad: Tensor, x: Tensor, m: Tensor) -> tuple[Tensor, Tensor]:
    """Per-(sample, channel) ``sum(grad)`` and ``sum(grad * (x - m))`` over the spatial dims, both
    ``(N, C)`` in ``m``'s dtype."""
    n, c = x.shape[:2]
    if x.dim() == 2:
        return grad.to(m.dtype), grad.to(m.dtype) * (x.to(m.dtype) - m)
    x_rows = _as_rows(x)
    dims = tuple(range(2, x.dim()))
    compiling = torch.compiler.is_compiling()  # then the centred sums below: inductor fuses them into one reduction
    if x_rows is not None and not compiling:
        # Batch norm's fused backward reduction on the (1, N*C, S) view: one pass over (grad, x).
        g_rows = grad.contiguous().view_as(x_rows)
        ones = torch.ones(n * c, dtype=m.dtype, device=x.device)
        if x.is_cuda:  # SyncBatchNorm's reduction kernel (CUDA's native backward needs grad_input)
            g_sum, g_xc = torch.batch_norm_backward_reduce(
                g_rows, x_rows, m.reshape(-1), ones, None, True, False, False
            )[:2]
        else:
            _, g_xc, g_sum = torch.ops.aten.native_batch_norm_backward(
                g_rows, x_rows, None, None, None, m.reshape(-1), ones, True, 0.0, [False, True, True]
            )
        return g_sum.view(n, c), g_xc.view(n, c)
    g_sum = grad.sum(dims, dtype=m.dtype)
    if x.dtype == m.dtype and not compiling:  # channels_last: sum(grad * x) - m * sum(grad)
        return g_sum, (grad * x).sum(dims).sub_(m * g_sum)
    return g_sum, (grad * _centred(x, m)).sum(dims, dtype=m.dtype)


def _expand(t: Tensor, like: Tensor) -> Tensor:
    """Reshapes an ``(N, C)`` or ``(C,)`` tensor to broadcast against ``(N, C, *)``."""
    trailing = (1,) * (like.dim() - 2)
    if t.dim() == 1:
        return t.view(1, -1, *trailing)
    return t.view(*t.shape, *trailing)


def _sample_scale(norm: Tensor, size: int, l2_eps: float, rescale: bool) -> Tensor:
    """``s[n] = k / max(||x[n]||, l2_eps)``, with ``k = sqrt(D)`` when ``rescale``."""
    scale = norm.clamp_min(l2_eps).reciprocal()
    return scale * math.sqrt(size) if rescale else scale


def _as_acc(t: Tensor, acc: torch.dtype) -> Tensor:
    return t if t.dtype == acc else t.to(acc)


class _L2BatchNormTrain(torch.autograd.Function):
    """Training-mode L2BN with batch statistics: fused forward, analytic backward."""

    @staticmethod
    def forward(
        ctx,
        x: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        running_mean: Tensor | None,
        running_var: Tensor | None,
        momentum: float,
        eps: float,
        l2_eps: float,
        rescale: bool,
    ) -> Tensor:
        n, c = x.shape[:2]
        spatial = math.prod(x.shape[2:])
        acc = _accumulation_dtype(x.dtype)

        m, v, sq = _moments(x, acc, spatial)  # (N, C)
        sq_norm = sq.sum(1)  # ||x[n]||^2, (N,)
        # s[n] = k / max(||x[n]||, l2_eps); rsqrt(0) = inf is clamped as max() would
        s = sq_norm.rsqrt().clamp_max_(1.0 / l2_eps)[:, None]  # (N, 1)
        if rescale:
            s.mul_(math.sqrt(c * spatial))
        d = s * m
        mu = d.mean(0)  # (C,) batch mean of xh
        d.sub_(mu)  # (N, C) per-sample mean of xh, centred
        var = torch.addcmul(d * d, s * s, v).mean(0)  # (C,) biased batch variance of xh
        invstd = torch.rsqrt(var + eps)
        gain = invstd if weight is None else _as_acc(weight, acc) * invstd  # (C,)
        shift = gain * d if bias is None else torch.addcmul(_as_acc(bias, acc), gain, d)  # (N, C)
        a = s * gain  # (N, C)
        y = _affine(x, m, a, shift)  # gain * s * (x - m) + gain * d + bias

        update_running_stats(running_mean, running_var, mu, var, n * spatial, momentum)
        ctx.save_for_backward(x, weight, m, v, s, sq_norm, d, invstd, gain, a)
        ctx.l2_eps = l2_eps
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight, m, v, s, sq_norm, d, invstd, gain, a = ctx.saved_tensors
        spatial = math.prod(x.shape[2:])
        gain_per_value = gain / (x.shape[0] * spatial)  # (C,)

        g_sum, g_xc = _grad_sums(grad, x, m)  # (N, C)
        grad_bias = g_sum.sum(0)  # (C,)
        # sum over (n, *) of grad * xhat, where xhat = invstd * (s * (x - m) + d)
        grad_gain = torch.addcmul(s * g_xc, d, g_sum).sum(0).mul_(invstd)  # (C,)

        # Batch-norm backward, w.r.t. xh = s * x: dxh = gain * grad - u * s * (x - m) - w, with
        # u = gain * invstd * grad_gain / count and w = gain * (grad_bias + d * invstd * grad_gain) / count
        h = grad_gain * invstd  # (C,)
        u = gain_per_value * h  # (C,)
        w = torch.addcmul(grad_bias, d, h).mul_(gain_per_value)  # (N, C)
        su = s * u  # (N, C)
        # <dxh[n], x[n]> from the per-(n, c) sums alone, for the l2 step's radial projection:
        # sum_c gain * (g_xc + m * g_sum) - spatial * (m * w + s * u * v)
        dot = torch.addcmul(g_xc, m, g_sum).mul_(gain)
        dot = dot.addcmul_(m, w, value=-spatial).addcmul_(su, v, value=-spatial).sum(1)  # (N,)
        # no radial term where the norm was clamped to l2_eps
        radial = (dot / sq_norm).masked_fill_(sq_norm <= ctx.l2_eps**2, 0.0)[:, None]

        # grad_x = s * (dxh - radial * x) = coef_x * (x - m) + const + a * grad, centred so that a
        # large mean cannot cancel: one pass over x, one over (grad, grad_x)
        neg_s = -s
        coef_x = su.add_(radial).mul_(neg_s)  # (N, C)
        const = torch.addcmul(w, radial, m).mul_(neg_s)  # (N, C)
        grad_x = _affine(x, m, coef_x, const)
        grad_x.addcmul_(grad, _expand(_to_finite(a, x.dtype), x))

        grad_weight = grad_bias_out = None
        if weight is not None and ctx.needs_input_grad[1]:
            grad_weight = grad_gain.to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias_out = grad_bias.to(weight.dtype if weight is not None else x.dtype)
        return grad_x, grad_weight, grad_bias_out, None, None, None, None, None, None


#: on the CPU, training maps of at most this many values per (sample, channel) run as the composite
#: (the per-sample scale, then ``F.batch_norm``): there every per-(sample, channel) op of the analytic path
#: loops over too few values to be fast (benchmarks/bench_norm.py, docs/performance.md)
_PER_OP_BOUND_MAP = 16


def _per_op_bound(x: Tensor) -> bool:
    """Whether ``x`` (contiguous float32/float64 on the CPU, eager) has maps small enough for the composite."""
    return (
        math.prod(x.shape[2:]) <= _PER_OP_BOUND_MAP
        and x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.float64)
        and x.is_contiguous()
        and not torch.compiler.is_compiling()
    )


class _L2Normalize(torch.autograd.Function):
    """``xh[n] = s[n] * x[n]``, ``s[n] = k / max(||x[n]||, l2_eps)``, with its backward in a few per-sample
    ops: ``dx[n] = s[n] * (dxh[n] - <dxh[n], x[n]> x[n] / ||x[n]||^2)`` (no radial term where clamped)."""

    @staticmethod
    def forward(ctx, x: Tensor, l2_eps: float, rescale: bool) -> Tensor:
        sq_norm = torch.linalg.vector_norm(x, 2, dim=tuple(range(1, x.dim()))).square_()  # (N,)
        s = sq_norm.rsqrt().clamp_max_(1.0 / l2_eps)  # rsqrt(0) = inf is clamped as max() would
        if rescale:
            s.mul_(math.sqrt(math.prod(x.shape[1:])))
        ctx.save_for_backward(x, s, sq_norm)
        ctx.l2_eps = l2_eps
        return x * _expand_sample(s, x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, s, sq_norm = ctx.saved_tensors
        dot = torch.linalg.vecdot(grad.flatten(1), x.flatten(1))  # (N,)
        radial = (dot / sq_norm).masked_fill_(sq_norm <= ctx.l2_eps**2, 0.0).mul_(s)
        return torch.addcmul(grad * _expand_sample(s, x), x, _expand_sample(radial, x), value=-1.0), None, None


def _expand_sample(t: Tensor, like: Tensor) -> Tensor:
    """Reshapes an ``(N,)`` tensor to broadcast against ``(N, *)``."""
    return t.view(-1, *((1,) * (like.dim() - 1)))


def _l2_normalize_eval(x: Tensor, l2_eps: float, rescale: bool) -> Tensor:
    """Per-sample scale ``s`` as an ``(N, 1, ...)`` tensor in float32 (float64 for float64)."""
    acc = _accumulation_dtype(x.dtype)
    dims = tuple(range(1, x.dim()))
    norm = torch.linalg.vector_norm(x, 2, dim=dims, dtype=acc)
    s = _sample_scale(norm, x[0].numel(), l2_eps, rescale)
    return s.view(-1, *([1] * (x.dim() - 1)))


def l2_batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    l2_eps: float = 1e-12,
    rescale: bool = False,
) -> Tensor:
    """L2BN, the functional counterpart of :class:`l2bn_lit.L2BN2d`; mirrors ``F.batch_norm``.

    Args:
        input: ``(N, C, *)`` tensor.
        running_mean, running_var: ``(C,)`` running statistics, updated in place when
            ``training`` (with ``momentum``); used to normalize when not ``training``.
        weight, bias: optional ``(C,)`` affine parameters.
        training: normalize with batch statistics (and update the running ones) if True.
        momentum: weight of the new batch statistics in the running estimates.
        eps: added to the variance, as in batch norm.
        l2_eps: lower bound on each sample's l2 norm (as ``F.normalize``'s ``eps``).
        rescale: multiply the l2-normalized sample by ``sqrt(D)`` (unit RMS instead of unit norm),
            which keeps ``eps`` from dominating the variance of large feature maps.

    Returns:
        A tensor of ``input``'s shape and dtype.

    Examples::

        >>> import torch
        >>> import torch.nn.functional as F
        >>> from l2bn_lit import l2_batch_norm
        >>> x = torch.randn(8, 4, 5, 5)
        >>> mean, var = torch.zeros(4), torch.ones(4)
        >>> y = l2_batch_norm(x, mean, var, training=True)  # updates mean and var in place
        >>> reference = F.batch_norm(F.normalize(x.flatten(1)).view_as(x), None, None, training=True)
        >>> torch.allclose(y, reference, atol=1e-5)
        True
    """
    if input.dim() < 2:
        raise ValueError(f"l2_batch_norm expects an input of shape (N, C, *), got shape {tuple(input.shape)}")
    channels = input.shape[1]
    for name, t in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight), ("bias", bias)):
        if t is not None and t.shape != (channels,):
            raise ValueError(f"l2_batch_norm: {name} must have shape ({channels},), got {tuple(t.shape)}")
    if training:
        if input.numel() // channels <= 1:
            raise ValueError(
                f"Expected more than 1 value per channel when training, got input size {list(input.shape)}"
            )
        # L2BN_KERNELS: the fused Triton kernels on CUDA, the numba kernels on the CPU (l2bn_lit.nn.fused)
        train = fused_training_path(input)
        if train is not None:
            return train(input, running_mean, running_var, weight, bias, momentum, eps, l2_eps, rescale)
        # under torch.export: a training graph of standard ops that autograd differentiates when the
        # exported program runs
        if torch.compiler.is_exporting():
            s = _l2_normalize_eval(input, l2_eps, rescale)
            return F.batch_norm(input * s, running_mean, running_var, weight, bias, True, momentum, eps)
        # tiny maps on the CPU: the composite's ops run over long rows, the analytic path's would not
        if _per_op_bound(input):
            normalized = _L2Normalize.apply(input, l2_eps, rescale)
            return F.batch_norm(normalized, running_mean, running_var, weight, bias, True, momentum, eps)
        return _L2BatchNormTrain.apply(input, weight, bias, running_mean, running_var, momentum, eps, l2_eps, rescale)
    if running_mean is None or running_var is None:
        raise ValueError("l2_batch_norm: running_mean and running_var are required when training=False")
    s = _l2_normalize_eval(input, l2_eps, rescale)
    scale = (running_var.to(s.dtype) + eps).rsqrt()
    if weight is not None:
        scale = scale * weight.to(s.dtype)
    shift = -running_mean.to(s.dtype) * scale
    if bias is not None:
        shift = shift + bias.to(s.dtype)
    a = _to_finite(s * _expand(scale, input), input.dtype)
    return torch.addcmul(_to_finite(_expand(shift, input), input.dtype), input, a)
