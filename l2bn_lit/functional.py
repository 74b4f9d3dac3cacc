"""Functional L2BN: per-sample l2 normalization followed by batch normalization.

For an input ``x`` of shape ``(N, C, *)`` with ``D = x[0].numel()`` and ``S = D / C``:

1. ``xh[n] = k * x[n] / max(||x[n]||_2, l2_eps)`` with ``k = sqrt(D)`` if ``rescale`` else ``1``;
2. ordinary batch normalization of ``xh`` over ``(N, *)`` per channel, exactly as
   :func:`torch.nn.functional.batch_norm` (biased batch variance to normalize, unbiased variance
   for the running estimate).

The training path never materializes ``xh``. Every statistic it needs follows from the
per-(sample, channel) mean ``m[n, c]`` and centred sum of squares ``q[n, c]`` of ``x``:

* ``||x[n]||^2 = sum_c (q[n, c] + S * m[n, c]^2)``;
* channel mean of ``xh``: ``mu[c] = mean_n(s[n] * m[n, c])``;
* channel variance of ``xh`` (Chan's parallel formula, no cancellation):
  ``var[c] = mean_n(s[n]^2 * q[n, c] / S + (s[n] * m[n, c] - mu[c])^2)``.

The training forward is a mean pass, a centring pass that writes ``x - m`` into the output
buffer, a sum-of-squares pass over it and an in-place affine; the analytic backward is one fused
reduction over ``(grad, x)`` (batch norm's own kernel) and an elementwise pass into one new buffer.
Only ``x`` is kept for backward, as batch norm keeps it. The small ``(N, C)`` algebra runs in float32
(float64 for float64 input) whatever the input dtype, so float16/bfloat16 inputs whose squared
norms exceed their range (e.g. 65504 for float16) still give finite, float32-accurate statistics.

The eval path (running statistics) is plain differentiable tensor algebra without a custom
``autograd.Function``, so :func:`torch.export.export` and ONNX export can trace it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

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


def _centre(x: Tensor, acc: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """Centres each (sample, channel) of ``x`` over its spatial dims, two-pass (no cancellation
    for large means).

    Returns ``(xc, m, v)``: ``xc = x - m`` (a new tensor in ``x``'s dtype and memory format, which
    the caller may overwrite), the mean ``m`` and biased variance ``v``, both ``(N, C)`` in ``acc``.
    """
    spatial = tuple(range(2, x.dim()))
    size = x[0, 0].numel()
    m = x.mean(spatial, dtype=acc) if spatial else x.to(acc)
    xc = torch.sub(x, _expand(m, x).to(x.dtype))
    if not spatial:
        return xc, m, torch.zeros_like(m)
    if x.is_contiguous() or x.dtype in (torch.float16, torch.bfloat16):
        # inner-dim reduction (fast), or a low-precision square that could overflow
        sq = torch.linalg.vector_norm(xc, 2, dim=spatial, dtype=acc).square()
    else:
        # other layouts (channels_last): vector_norm's strided reduction is 4-15x slower
        sq = (xc * xc).sum(spatial, dtype=acc)
    return xc, m, sq / size


def _grad_sums(grad: Tensor, x: Tensor, xc: Tensor, m: Tensor) -> tuple[Tensor, Tensor]:
    """Per-(sample, channel) ``sum(grad)`` and ``sum(grad * xc)`` with ``xc = x - m``, both
    ``(N, C)`` in ``m``'s dtype."""
    n, c = x.shape[:2]
    if x.dim() == 2:
        return grad.to(m.dtype), (grad * xc).to(m.dtype)
    x_rows = _as_rows(x)
    if x_rows is not None and m.dtype == torch.float32:
        # Batch norm's fused backward reduction on the (1, N*C, S) view: one pass over (grad, x).
        g_rows = grad.contiguous().view_as(x_rows)
        ones = torch.ones(n * c, dtype=m.dtype, device=x.device)
        _, g_xc, g_sum = torch.ops.aten.native_batch_norm_backward(
            g_rows, x_rows, None, None, None, m.reshape(-1), ones, True, 0.0, [False, True, True]
        )
        return g_sum.view(n, c), g_xc.view(n, c)
    spatial = tuple(range(2, x.dim()))
    return grad.sum(spatial, dtype=m.dtype), (grad * xc).sum(spatial, dtype=m.dtype)


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


def _update_running_stats(
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
        size = x[0].numel()
        spatial = size // c
        acc = _accumulation_dtype(x.dtype)

        y, m, v = _centre(x, acc)  # y = x - m for now; m, v: (N, C)
        sq_norm = torch.addcmul(v, m, m).sum(1).mul_(spatial)  # ||x[n]||^2, (N,)
        # s[n] = k / max(||x[n]||, l2_eps); rsqrt(0) = inf is clamped as max() would
        k = math.sqrt(size) if rescale else 1.0
        s = sq_norm.rsqrt().clamp_max_(1.0 / l2_eps).mul_(k)[:, None]  # (N, 1)
        d = s * m
        mu = d.mean(0)  # (C,) batch mean of xh
        d.sub_(mu)  # (N, C) per-sample mean of xh, centred
        var = torch.addcmul(d.square(), s.square(), v).mean(0)  # (C,) biased batch variance of xh
        invstd = (var + eps).rsqrt_()
        gain = invstd if weight is None else weight.to(acc) * invstd  # (C,)
        shift = gain * d if bias is None else torch.addcmul(bias.to(acc), gain, d)  # (N, C)
        # y = gain * s * (x - m) + gain * d + bias, written over the centred buffer
        y.mul_(_expand(_to_finite(s * gain, x.dtype), x)).add_(_expand(_to_finite(shift, x.dtype), x))

        _update_running_stats(running_mean, running_var, mu, var, n * spatial, momentum)
        ctx.save_for_backward(x, weight, m, v, s, sq_norm, d, invstd, gain)
        ctx.l2_eps = l2_eps
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight, m, v, s, sq_norm, d, invstd, gain = ctx.saved_tensors
        n = x.shape[0]
        spatial = x[0, 0].numel()
        count = n * spatial

        dtype = x.dtype
        grad_x = torch.sub(x, _expand(m.to(dtype), x))  # x - m; becomes grad_x below
        g_sum, g_xc = _grad_sums(grad, x, grad_x, m)  # (N, C)
        grad_bias = g_sum.sum(0)  # (C,)
        # sum over (n, *) of grad * xhat, where xhat = invstd * (s * (x - m) + d)
        grad_gain = torch.addcmul(s * g_xc, d, g_sum).sum(0).mul_(invstd)  # (C,)

        # Batch-norm backward, w.r.t. xh = s * x: dxh = gain * grad - u * s * (x - m) - w
        scaled = invstd * grad_gain / count  # (C,)
        u = gain * scaled  # (C,)
        w = torch.addcmul(grad_bias / count, d, scaled).mul_(gain)  # (N, C)
        # <dxh[n], x[n]> from the per-(n, c) sums alone, for the l2 step's radial projection
        sum_dxh = torch.sub(gain * g_sum, w, alpha=spatial)
        dot = torch.addcmul(gain * g_xc, m, sum_dxh).sub_(u * (s * v), alpha=spatial).sum(1)  # (N,)
        # no radial term where the norm was clamped to l2_eps
        radial = (dot / sq_norm).masked_fill_(sq_norm <= ctx.l2_eps**2, 0.0)[:, None]

        # grad_x = s * (dxh - radial * x) = coef_g * grad + coef_x * (x - m) + const, centred so
        # that a large mean cannot cancel
        coef_g = s * gain
        coef_x = torch.addcmul(s.square() * u, s, radial).neg_()
        const = torch.addcmul(w, radial, m).mul_(s).neg_()
        grad_x.mul_(_expand(_to_finite(coef_x, dtype), x)).add_(_expand(_to_finite(const, dtype), x))
        grad_x.addcmul_(grad, _expand(_to_finite(coef_g, dtype), x))

        grad_weight = grad_bias_out = None
        if weight is not None and ctx.needs_input_grad[1]:
            grad_weight = grad_gain.to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias_out = grad_bias.to(weight.dtype if weight is not None else x.dtype)
        return grad_x, grad_weight, grad_bias_out, None, None, None, None, None, None


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
        return _L2BatchNormTrain.apply(
            input, weight, bias, running_mean, running_var, momentum, eps, l2_eps, rescale
        )
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
