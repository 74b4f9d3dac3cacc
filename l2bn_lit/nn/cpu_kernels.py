"""Numba kernels of the fused CPU training path (:mod:`l2bn_lit.nn.fused`): BatchNorm's passes over memory.

The CPU counterpart of :mod:`l2bn_lit.nn.triton_kernels`, with the same contract: forward = one
parallel pass over ``x`` for the per-(sample, channel) moments, one small serial step over ``(N, C)``
(the per-sample norms and scales, the batch mean and variance of the l2-normalized input, the
per-(sample, channel) affine coefficients) and one parallel pass that writes ``y``; backward = one
parallel pass over ``(grad, x)`` for the per-(sample, channel) sums, one small step (``grad_weight``,
``grad_bias``, the radial term of the l2 step) and one parallel pass that writes ``grad_x`` once.
One call into compiled code per direction, where the ATen path makes about 25 operations.

``x`` is addressed as an ``(N, C, S)`` array (contiguous input) or an ``(N, S, C)`` array
(channels_last input), so the innermost loop always runs over adjacent values. Statistics
accumulate in float64 whatever the input dtype (float32 or float64); each (sample, channel) sum runs
in a fixed order within one thread: deterministic. The moments are two-pass (mean, then the centred
sum of squares): no cancellation. The samples are shared among ``torch.get_num_threads()`` threads.
Kernels compile on first use and are cached on disk (numba's ``cache=True``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numba
import numpy as np
import torch
from numba import prange
from torch import Tensor

__all__ = ["Saved", "train_backward", "train_forward"]

#: exact IEEE semantics (NaN and inf propagate) except that sums may be reordered, which vectorizes them
_FASTMATH = {"reassoc"}
_jit = numba.njit(cache=True, fastmath=_FASTMATH)
_parallel_jit = numba.njit(cache=True, fastmath=_FASTMATH, parallel=True)


@_parallel_jit
def _moments_ncs(x, m, v) -> None:
    """``x`` ``(N, C, S)``: per-(n, c) mean and biased variance (two passes) into ``m``, ``v`` ``(N, C)``."""
    spatial = x.shape[2]
    for n in prange(x.shape[0]):
        for c in range(x.shape[1]):
            total = 0.0
            for s in range(spatial):
                total += x[n, c, s]
            mean = total / spatial
            centred = 0.0
            for s in range(spatial):
                d = x[n, c, s] - mean
                centred += d * d
            m[n, c] = mean
            v[n, c] = centred / spatial


@_parallel_jit
def _moments_nsc(x, m, v) -> None:
    """``x`` ``(N, S, C)`` (channels_last): per-(n, c) mean and biased variance (two passes) into ``m``, ``v``."""
    spatial, channels = x.shape[1], x.shape[2]
    for n in prange(x.shape[0]):
        total = np.zeros(channels)
        for s in range(spatial):
            for c in range(channels):
                total[c] += x[n, s, c]
        mean = total / spatial
        centred = np.zeros(channels)
        for s in range(spatial):
            for c in range(channels):
                d = x[n, s, c] - mean[c]
                centred[c] += d * d
        for c in range(channels):
            m[n, c] = mean[c]
            v[n, c] = centred[c] / spatial


@_parallel_jit
def _affine_ncs(x, m, a, b, g, cg, out, with_grad) -> None:
    """``out = (x - m) * a + b`` (``+ cg * g`` if ``with_grad``) per (n, c); arrays ``(N, C, S)``, the
    coefficients ``(N, C)`` in ``x``'s dtype (float32 arithmetic for float32 input)."""
    for n in prange(x.shape[0]):
        for c in range(x.shape[1]):
            mean, scale, shift, coef = m[n, c], a[n, c], b[n, c], cg[n, c]
            if with_grad:
                for s in range(x.shape[2]):
                    out[n, c, s] = (x[n, c, s] - mean) * scale + shift + coef * g[n, c, s]
            else:
                for s in range(x.shape[2]):
                    out[n, c, s] = (x[n, c, s] - mean) * scale + shift


@_parallel_jit
def _affine_nsc(x, m, a, b, g, cg, out, with_grad) -> None:
    """:func:`_affine_ncs` for ``(N, S, C)`` arrays (channels_last)."""
    for n in prange(x.shape[0]):
        mean, scale, shift, coef = m[n], a[n], b[n], cg[n]
        for s in range(x.shape[1]):
            if with_grad:
                for c in range(x.shape[2]):
                    out[n, s, c] = (x[n, s, c] - mean[c]) * scale[c] + shift[c] + coef[c] * g[n, s, c]
            else:
                for c in range(x.shape[2]):
                    out[n, s, c] = (x[n, s, c] - mean[c]) * scale[c] + shift[c]


@_parallel_jit
def _grad_sums_ncs(g, x, m, g_sum, g_xc) -> None:
    """Per-(n, c) ``sum(g)`` and ``sum(g * (x - m))``; ``g``, ``x`` ``(N, C, S)``, ``m`` in ``x``'s dtype."""
    for n in prange(x.shape[0]):
        for c in range(x.shape[1]):
            mean = m[n, c]
            total = 0.0
            dot = 0.0
            for s in range(x.shape[2]):
                total += g[n, c, s]
                dot += g[n, c, s] * (x[n, c, s] - mean)
            g_sum[n, c] = total
            g_xc[n, c] = dot


@_parallel_jit
def _grad_sums_nsc(g, x, m, g_sum, g_xc) -> None:
    """:func:`_grad_sums_ncs` for ``(N, S, C)`` arrays (channels_last)."""
    channels = x.shape[2]
    for n in prange(x.shape[0]):
        mean = m[n]
        total = np.zeros(channels)
        dot = np.zeros(channels)
        for s in range(x.shape[1]):
            for c in range(channels):
                total[c] += g[n, s, c]
                dot[c] += g[n, s, c] * (x[n, s, c] - mean[c])
        for c in range(channels):
            g_sum[n, c] = total[c]
            g_xc[n, c] = dot[c]


@_jit
def _forward_step(m, v, weight, bias, spatial, eps, l2_eps, k):
    """The small forward step over the ``(N, C)`` moments, in float64: ``||x[n]||^2 = S * sum_c (v + m^2)``,
    ``s[n] = k / max(||x[n]||, l2_eps)``, the channel mean ``mu`` and biased variance ``var`` of
    ``xh = s * x`` (Chan's combination of the per-(n, c) moments), ``a = s * gain`` and
    ``shift = gain * (s * m - mu) + bias`` with ``gain = weight * invstd``. ``weight``/``bias`` of
    length 0 stand for absent ones. Returns ``(s, sq_norm, mu, var, invstd, a, shift)``."""
    samples, channels = m.shape
    sq_norm = np.empty(samples)
    for n in range(samples):  # (numba's sum(axis=1) is ~15x slower than this loop)
        total = 0.0
        for c in range(channels):
            total += v[n, c] + m[n, c] * m[n, c]
        sq_norm[n] = total * spatial
    s = k / np.maximum(np.sqrt(sq_norm), l2_eps)
    mu, var = np.zeros(channels), np.zeros(channels)
    for n in range(samples):  # rows of (N, C): the inner loops run over adjacent channels
        for c in range(channels):
            mu[c] += s[n] * m[n, c]
    mu /= samples
    for n in range(samples):
        for c in range(channels):
            d = s[n] * m[n, c] - mu[c]
            var[c] += s[n] * s[n] * v[n, c] + d * d
    var /= samples
    invstd = 1.0 / np.sqrt(var + eps)
    gain = invstd * weight.astype(np.float64) if weight.size else invstd
    offset = bias.astype(np.float64) if bias.size else np.zeros(channels)
    a, shift = np.empty((samples, channels)), np.empty((samples, channels))
    for n in range(samples):
        for c in range(channels):
            a[n, c] = s[n] * gain[c]
            shift[n, c] = gain[c] * (s[n] * m[n, c] - mu[c]) + offset[c]
    return s, sq_norm, mu, var, invstd, a, shift


@_jit
def _backward_step(g_sum, g_xc, m, v, s, sq_norm, mu, invstd, weight, spatial, l2_eps):
    """The small backward step over ``(N, C)``, in float64: ``grad_bias``, ``grad_weight``, batch
    norm's backward terms ``u`` (C,) and ``w`` (N, C), the per-sample radial term of the l2 step (none
    where the norm was clamped to ``l2_eps``), and the coefficients of
    ``grad_x = coef_x * (x - m) + const + coef_g * grad``. Returns
    ``(grad_weight, grad_bias, coef_x, const, coef_g)``."""
    samples, channels = m.shape
    count = samples * spatial
    gain = invstd * weight.astype(np.float64) if weight.size else invstd.copy()
    grad_bias, grad_weight = np.zeros(channels), np.zeros(channels)
    for n in range(samples):  # rows of (N, C): the inner loops run over adjacent channels
        for c in range(channels):
            grad_bias[c] += g_sum[n, c]
            grad_weight[c] += s[n] * g_xc[n, c] + (s[n] * m[n, c] - mu[c]) * g_sum[n, c]
    grad_weight *= invstd
    scaled = invstd * grad_weight / count
    u = gain * scaled
    coef_x, const, coef_g = np.empty((samples, channels)), np.empty((samples, channels)), np.empty((samples, channels))
    w = np.empty(channels)
    for n in range(samples):
        dot = 0.0
        for c in range(channels):
            w[c] = gain[c] * (grad_bias[c] / count + (s[n] * m[n, c] - mu[c]) * scaled[c])
            dot += gain[c] * g_xc[n, c] + m[n, c] * (gain[c] * g_sum[n, c] - spatial * w[c])
            dot -= spatial * u[c] * s[n] * v[n, c]
        radial = 0.0 if sq_norm[n] <= l2_eps * l2_eps else dot / sq_norm[n]
        for c in range(channels):
            coef_x[n, c] = -(s[n] * s[n] * u[c] + s[n] * radial)
            const[n, c] = -s[n] * (w[c] + radial * m[n, c])
            coef_g[n, c] = s[n] * gain[c]
    return grad_weight, grad_bias, coef_x, const, coef_g


@_jit
def _update_running(running, value, momentum) -> None:
    """``running += momentum * (value - running)`` in place (``torch.lerp_``); an empty ``running`` is absent."""
    for c in range(running.size):
        running[c] += momentum * (value[c] - running[c])


@_jit
def _forward(x, channels_last, weight, bias, eps, l2_eps, k, out, running_mean, running_var, momentum):
    """The training forward: ``x`` and ``out`` ``(N, C, S)``, or ``(N, S, C)`` if ``channels_last``;
    the running statistics (empty arrays: absent) updated in place as ``F.batch_norm`` updates them
    (the unbiased variance). Returns the float64 statistics ``(m, v, s, sq_norm, mu, invstd)``."""
    samples = x.shape[0]
    channels, spatial = (x.shape[2], x.shape[1]) if channels_last else (x.shape[1], x.shape[2])
    m, v = np.empty((samples, channels)), np.empty((samples, channels))
    if channels_last:
        _moments_nsc(x, m, v)
    else:
        _moments_ncs(x, m, v)
    s, sq_norm, mu, var, invstd, a, shift = _forward_step(m, v, weight, bias, spatial, eps, l2_eps, k)
    m_x, a_x, shift_x = m.astype(x.dtype), a.astype(x.dtype), shift.astype(x.dtype)
    if channels_last:
        _affine_nsc(x, m_x, a_x, shift_x, x, a_x, out, False)
    else:
        _affine_ncs(x, m_x, a_x, shift_x, x, a_x, out, False)
    count = samples * spatial
    _update_running(running_mean, mu, momentum)
    _update_running(running_var, var * (count / max(count - 1, 1)), momentum)
    return m, v, s, sq_norm, mu, invstd


@_jit
def _backward(g, x, channels_last, m, v, s, sq_norm, mu, invstd, weight, l2_eps, out):
    """The training backward: ``g``, ``x``, ``out`` (``grad_x``) laid out as in :func:`_forward`, the
    forward's statistics. Returns ``(grad_weight, grad_bias)`` in ``x``'s dtype."""
    samples = x.shape[0]
    channels, spatial = (x.shape[2], x.shape[1]) if channels_last else (x.shape[1], x.shape[2])
    g_sum, g_xc = np.empty((samples, channels)), np.empty((samples, channels))
    m_x = m.astype(x.dtype)
    if channels_last:
        _grad_sums_nsc(g, x, m_x, g_sum, g_xc)
    else:
        _grad_sums_ncs(g, x, m_x, g_sum, g_xc)
    grad_weight, grad_bias, coef_x, const, coef_g = _backward_step(
        g_sum, g_xc, m, v, s, sq_norm, mu, invstd, weight, spatial, l2_eps
    )
    coef_x, const, coef_g = coef_x.astype(x.dtype), const.astype(x.dtype), coef_g.astype(x.dtype)
    if channels_last:
        _affine_nsc(x, m_x, coef_x, const, g, coef_g, out, True)
    else:
        _affine_ncs(x, m_x, coef_x, const, g, coef_g, out, True)
    return grad_weight.astype(x.dtype), grad_bias.astype(x.dtype)


def _channels_last(x: Tensor) -> bool:
    """Whether ``x`` ``(N, C, *)`` lies in memory as ``(N, *, C)`` (and not also as ``(N, C, *)``)."""
    return x.dim() > 2 and not x.is_contiguous() and x.movedim(1, -1).is_contiguous()


def _as_array(t: Tensor, channels_last: bool) -> np.ndarray:
    """``t`` ``(N, C, *)`` as an ``(N, C, S)`` array, or ``(N, S, C)`` if ``channels_last``, sharing
    memory (copied first where ``t`` does not lie that way, e.g. an expanded gradient)."""
    n, c = t.shape[:2]
    t = t.detach()
    if channels_last:
        return t.movedim(1, -1).contiguous().view(n, -1, c).numpy()
    return t.contiguous().view(n, c, -1).numpy()


def _empty_like(x: Tensor, channels_last: bool) -> tuple[Tensor, np.ndarray]:
    """A new tensor of ``x``'s shape and dtype, laid out as :func:`_as_array` reads ``x``, and that array
    view of it. The tensor owns its memory (it is no view, which a custom Function may not return)."""
    n, c = x.shape[:2]
    dtype = _NUMPY_DTYPES[x.dtype]
    if channels_last:
        memory = np.empty((n, *x.shape[2:], c), dtype)
        return torch.from_numpy(np.moveaxis(memory, -1, 1)), memory.reshape(n, -1, c)
    memory = np.empty(x.shape, dtype)
    return torch.from_numpy(memory), memory.reshape(n, c, -1)


_NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}
_ABSENT = {torch.float32: np.empty(0, np.float32), torch.float64: np.empty(0, np.float64)}


def _parameter(t: Tensor | None, dtype: torch.dtype) -> np.ndarray:
    """A ``(C,)`` parameter or running statistic as an array of ``dtype`` (the input's), sharing the
    tensor's memory where it has that dtype; an absent one as an empty array."""
    if t is None:
        return _ABSENT[dtype]
    return t.detach().numpy() if t.dtype == dtype else t.detach().to(dtype).numpy()


def _use_torch_threads() -> None:
    """Runs the kernels on as many threads as torch's operators (``torch.set_num_threads``)."""
    threads = min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)
    if numba.get_num_threads() != threads:
        numba.set_num_threads(threads)


class Saved(NamedTuple):
    """What :func:`train_backward` needs from the forward besides ``x`` and ``weight``: float64 arrays,
    the per-(sample, channel) mean and variance ``(N, C)``, the per-sample scale and squared norm
    ``(N,)``, and the channel mean and inverse std of the l2-normalized input ``(C,)``."""

    m: np.ndarray
    v: np.ndarray
    s: np.ndarray
    sq_norm: np.ndarray
    mu: np.ndarray
    invstd: np.ndarray


def train_forward(
    x: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    momentum: float,
    eps: float,
    l2_eps: float,
    rescale: bool,
) -> tuple[Tensor, Saved]:
    """``(y, saved)`` for a float32/float64 CPU ``x`` ``(N, C, *)``: the output (``x``'s shape, dtype
    and layout, contiguous or channels_last) and the statistics the backward needs; the running
    statistics ``(C,)`` (if given) updated in place, as :func:`torch.nn.functional.batch_norm` does."""
    _use_torch_threads()
    channels_last = _channels_last(x)
    x3 = _as_array(x, channels_last)
    y, out = _empty_like(x, channels_last)
    k = math.sqrt(x3.shape[1] * x3.shape[2]) if rescale else 1.0
    running = [_parameter(t, x.dtype) for t in (running_mean, running_var)]
    statistics = _forward(
        x3,
        channels_last,
        _parameter(weight, x.dtype),
        _parameter(bias, x.dtype),
        eps,
        l2_eps,
        k,
        out,
        *running,
        momentum,
    )
    for t, updated in zip((running_mean, running_var), running):
        if t is not None and t.dtype != x.dtype:  # updated a converted copy
            t.copy_(torch.from_numpy(updated))
    return y, Saved(*statistics)


def train_backward(
    grad: Tensor, x: Tensor, weight: Tensor | None, saved: Saved, l2_eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """``(grad_x, grad_weight, grad_bias)``: ``grad_x`` in ``x``'s shape, dtype and layout, the
    parameter gradients ``(C,)`` in ``x``'s dtype."""
    _use_torch_threads()
    channels_last = _channels_last(x)
    x3 = _as_array(x, channels_last)
    grad_x, out = _empty_like(x, channels_last)
    grad_weight, grad_bias = _backward(
        _as_array(grad.to(x.dtype), channels_last), x3, channels_last, *saved, _parameter(weight, x.dtype), l2_eps, out
    )
    return grad_x, torch.from_numpy(grad_weight), torch.from_numpy(grad_bias)
