"""Numba kernels of the fused CPU training path (:mod:`l2bn_lit.nn.fused`): BatchNorm's passes over memory.

The CPU counterpart of :mod:`l2bn_lit.nn.triton_kernels`, with the same contract: forward = one
parallel pass over ``x`` for the per-(sample, channel) moments and each sample's norm, one small
serial step over ``(N, C)`` (the per-sample scales, the batch mean and variance of the
l2-normalized input) and one parallel pass that writes ``y``; backward = one parallel pass over
``(grad, x)`` for the per-(sample, channel) sums, one small serial step (``grad_weight``,
``grad_bias``) and one parallel pass that writes ``grad_x`` once. Each parallel pass that writes
works out its sample's ``(C,)`` coefficients (the affine ones; in the backward, also the radial term
of the l2 step) just before writing that sample, so no ``(N, C)`` coefficient array is built, cast
or read back. One call into compiled code per direction, where the ATen path makes about 25 operations.

``x`` is addressed as an ``(N, C, S)`` array (contiguous input) or an ``(N, S, C)`` array
(channels_last input), so the innermost loop always runs over adjacent values. Statistics
accumulate in float64 whatever the input dtype (float32 or float64); the coefficients are computed
in float64 and applied in the input's dtype. Each (sample, channel) sum runs in a fixed order within
one thread: deterministic. The moments are two-pass (mean, then the centred sum of squares): no
cancellation. Each thread of ``torch.get_num_threads()`` takes a run of consecutive samples. Kernels
compile on first use and are cached on disk (numba's ``cache=True``).
"""

from __future__ import annotations

import math
import os
import sys
import threading
from typing import NamedTuple

import torch


def _pool_settings() -> dict[str, str]:
    """The environment numba's thread pool starts with, where the user has not set it: as many threads
    as torch's operators use now (``NUMBA_NUM_THREADS``; read when numba is imported, so only if it is
    not yet), and threads that sleep between kernels instead of spinning (``OMP_WAIT_POLICY=PASSIVE``,
    read by numba's OpenMP runtime when the pool starts: a second runtime beside torch's, whose spinning
    threads would take the cores from torch's threads and from other processes: two training processes
    on a 2-core machine ran 2-4x slower, ``benchmarks/bench_processes.py``)."""
    settings = {"OMP_WAIT_POLICY": "PASSIVE"}
    if "numba" not in sys.modules:
        settings["NUMBA_NUM_THREADS"] = str(torch.get_num_threads())
    return {name: value for name, value in settings.items() if name not in os.environ}


def _start_numba_pool() -> None:
    """Imports numba and starts its thread pool (:func:`_pool_settings`), leaving the environment as it
    was (the settings are for numba's pool only: not for processes started later)."""
    settings = _pool_settings()
    os.environ.update(settings)
    try:
        import numba

        numba.get_num_threads()  # starts the pool (loads the OpenMP runtime, which reads the environment)
    finally:
        for name in settings:
            del os.environ[name]


_start_numba_pool()

import numba  # noqa: E402 (after the pool settings)
import numpy as np  # noqa: E402
from numba import prange  # noqa: E402
from torch import Tensor  # noqa: E402

__all__ = ["Saved", "train_backward", "train_forward"]

#: exact IEEE semantics (NaN and inf propagate) except that sums may be reordered, which vectorizes them
_FASTMATH = {"reassoc"}
_jit = numba.njit(cache=True, fastmath=_FASTMATH)
_parallel_jit = numba.njit(cache=True, fastmath=_FASTMATH, parallel=True)


@_jit
def _chunk_samples(chunk, chunks, samples):
    """The samples ``range(start, stop)`` of run ``chunk`` of ``chunks``: each parallel pass hands one run
    of consecutive samples to each thread (``chunks`` = the thread count), which reuses its scratch
    arrays over them."""
    return chunk * samples // chunks, (chunk + 1) * samples // chunks


@_parallel_jit
def _moments_ncs(x, m, v, sq_norm, chunks) -> None:
    """``x`` ``(N, C, S)``: per-(n, c) mean and biased variance (two passes) into ``m``, ``v`` ``(N, C)``,
    and each sample's squared norm ``sq_norm[n] = S * sum_c (v + m^2)`` ``(N,)``."""
    samples, channels, spatial = x.shape
    per_value = 1.0 / spatial
    for chunk in prange(chunks):
        start, stop = _chunk_samples(chunk, chunks, samples)
        for n in range(start, stop):
            norm = 0.0
            for c in range(channels):
                total = 0.0
                for s in range(spatial):
                    total += x[n, c, s]
                mean = total * per_value
                centred = 0.0
                for s in range(spatial):
                    d = x[n, c, s] - mean
                    centred += d * d
                m[n, c] = mean
                v[n, c] = centred * per_value
                norm += v[n, c] + mean * mean
            sq_norm[n] = norm * spatial


@_parallel_jit
def _moments_nsc(x, m, v, sq_norm, chunks) -> None:
    """:func:`_moments_ncs` for ``x`` ``(N, S, C)`` (channels_last)."""
    samples, spatial, channels = x.shape
    per_value = 1.0 / spatial
    for chunk in prange(chunks):
        start, stop = _chunk_samples(chunk, chunks, samples)
        mean, centred = np.empty(channels), np.empty(channels)
        for n in range(start, stop):
            mean[:] = 0.0
            for s in range(spatial):
                for c in range(channels):
                    mean[c] += x[n, s, c]
            mean *= per_value
            centred[:] = 0.0
            for s in range(spatial):
                for c in range(channels):
                    d = x[n, s, c] - mean[c]
                    centred[c] += d * d
            norm = 0.0
            for c in range(channels):
                m[n, c] = mean[c]
                v[n, c] = centred[c] * per_value
                norm += v[n, c] + mean[c] * mean[c]
            sq_norm[n] = norm * spatial


@_jit
def _forward_step(m, v, sq_norm, weight, bias, eps, l2_eps, k):
    """The small forward step over the ``(N, C)`` moments, in float64: ``s[n] = k / max(||x[n]||, l2_eps)``,
    the channel mean ``mu`` and biased variance ``var`` of ``xh = s * x`` (Chan's combination of the
    per-(n, c) moments), ``invstd``, and the channel gain ``weight * invstd`` and offset ``bias``.
    ``weight``/``bias`` of length 0 stand for absent ones. Returns ``(s, mu, var, invstd, gain, offset)``."""
    samples, channels = m.shape
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
    return s, mu, var, invstd, gain, offset


@_jit
def _normalize_coefficients(n, m, s, gain, mu, offset, mean, a, shift) -> None:
    """Sample ``n``'s ``y = (x - m) * a + shift`` coefficients, computed in float64 and written into the
    ``(C,)`` arrays ``mean`` (``m[n]``), ``a`` and ``shift`` of ``x``'s dtype: ``a = s[n] * gain``,
    ``shift = gain * (s[n] * m[n] - mu) + offset``."""
    for c in range(m.shape[1]):
        mean[c] = m[n, c]
        a[c] = s[n] * gain[c]
        shift[c] = gain[c] * (s[n] * m[n, c] - mu[c]) + offset[c]


@_parallel_jit
def _normalize_ncs(x, m, s, gain, mu, offset, out, chunks) -> None:
    """``out = (x - m) * a + shift`` (:func:`_normalize_coefficients`), in ``x``'s dtype; ``x``, ``out``
    ``(N, C, S)``."""
    samples, channels, spatial = x.shape
    for chunk in prange(chunks):
        start, stop = _chunk_samples(chunk, chunks, samples)
        mean, a, shift = np.empty(channels, x.dtype), np.empty(channels, x.dtype), np.empty(channels, x.dtype)
        for n in range(start, stop):
            _normalize_coefficients(n, m, s, gain, mu, offset, mean, a, shift)
            for c in range(channels):
                for j in range(spatial):
                    out[n, c, j] = (x[n, c, j] - mean[c]) * a[c] + shift[c]


@_parallel_jit
def _normalize_nsc(x, m, s, gain, mu, offset, out, chunks) -> None:
    """:func:`_normalize_ncs` for ``(N, S, C)`` arrays (channels_last)."""
    samples, spatial, channels = x.shape
    for chunk in prange(chunks):
        start, stop = _chunk_samples(chunk, chunks, samples)
        mean, a, shift = np.empty(channels, x.dtype), np.empty(channels, x.dtype), np.empty(channels, x.dtype)
        for n in range(start, stop):
            _normalize_coefficients(n, m, s, gain, mu, offset, mean, a, shift)
            for j in range(spatial):
                for c in range(channels):
                    out[n, j, c] = (x[n, j, c] - mean[c]) * a[c] + shift[c]


@_parallel_jit
def _grad_sums_ncs(g, x, m, g_sum, g_xc, chunks) -> None:
    """Per-(n, c) ``sum(g)`` and ``sum(g * (x - m))`` (``m`` cast to ``x``'s dtype) into ``(N, C)`` arrays;
    ``g``, ``x`` ``(N, C, S)``."""
    samples, channels, spatial = x.shape
    for chunk in prange(chunks):
        start, stop = _chunk_samples(chunk, chunks, samples)
        mean = np.empty(channels, x.dtype)
        for n in range(start, stop):
            mean[:] = m[n]
            for c in range(channels):
                total = 0.0
                dot = 0.0
                for s in range(spatial):
                    total += g[n, c, s]
                    dot += g[n, c, s] * (x[n, c, s] - mean[c])
                g_sum[n, c] = total
                g_xc[n, c] = dot


@_parallel_jit
def _grad_sums_nsc(g, x, m, g_sum, g_xc, chunks) -> None:
    """:func:`_grad_sums_ncs` for ``(N, S, C)`` arrays (channels_last)."""
    samples, spatial, channels = x.shape
    for chunk in prange(chunks):
        start, stop = _chunk_samples(chunk, chunks, samples)
        mean, total, dot = np.empty(channels, x.dtype), np.empty(channels), np.empty(channels)
        for n in range(start, stop):
            mean[:] = m[n]
            total[:] = 0.0
            dot[:] = 0.0
            for s in range(spatial):
                for c in range(channels):
                    total[c] += g[n, s, c]
                    dot[c] += g[n, s, c] * (x[n, s, c] - mean[c])
            g_sum[n] = total
            g_xc[n] = dot


@_jit
def _backward_step(g_sum, g_xc, m, s, mu, invstd, weight, count):
    """The channel part of the backward, in float64: ``grad_weight`` and ``grad_bias`` (sums over the
    samples), the channel gain ``weight * invstd``, and batch norm's backward terms ``u`` and
    ``w_bias`` (``w[n] = w_bias + (s[n] * m[n] - mu) * u``; the per-sample parts follow in
    :func:`_grad_input_coefficients`). Returns ``(grad_weight, grad_bias, gain, u, w_bias)``."""
    samples, channels = m.shape
    gain = invstd * weight.astype(np.float64) if weight.size else invstd.copy()
    grad_bias, grad_weight = np.zeros(channels), np.zeros(channels)
    for n in range(samples):  # rows of (N, C): the inner loops run over adjacent channels
        for c in range(channels):
            grad_bias[c] += g_sum[n, c]
            grad_weight[c] += s[n] * g_xc[n, c] + (s[n] * m[n, c] - mu[c]) * g_sum[n, c]
    grad_weight *= invstd
    return grad_weight, grad_bias, gain, gain * invstd * grad_weight / count, gain * grad_bias / count


@_jit
def _grad_input_coefficients(n, g_sum, g_xc, m, v, s, sq_norm, mu, gain, u, w_bias, spatial, l2_eps, w, coefficients):
    """Sample ``n``'s ``grad_x = (x - m) * coef_x + const + coef_g * grad`` coefficients, computed in float64
    (batch norm's backward term ``w`` into the float64 ``(C,)`` scratch ``w``, and the radial term of the
    l2 step, none where the norm was clamped to ``l2_eps``) and written into the rows of the ``(4, C)``
    array ``coefficients`` of ``x``'s dtype: ``m[n]``, ``coef_x``, ``const``, ``coef_g``."""
    s_n = s[n]
    dot = 0.0
    for c in range(m.shape[1]):
        w[c] = w_bias[c] + (s_n * m[n, c] - mu[c]) * u[c]
        dot += (
            gain[c] * g_xc[n, c] + m[n, c] * (gain[c] * g_sum[n, c] - spatial * w[c]) - spatial * u[c] * s_n * v[n, c]
        )
    radial = 0.0 if sq_norm[n] <= l2_eps * l2_eps else dot / sq_norm[n]
    for c in range(m.shape[1]):
        coefficients[0, c] = m[n, c]
        coefficients[1, c] = -(s_n * s_n * u[c] + s_n * radial)
        coefficients[2, c] = -s_n * (w[c] + radial * m[n, c])
        coefficients[3, c] = s_n * gain[c]


@_parallel_jit
def _grad_input_ncs(g, x, g_sum, g_xc, m, v, s, sq_norm, mu, gain, u, w_bias, l2_eps, out, chunks) -> None:
    """``out = grad_x`` (:func:`_grad_input_coefficients`), in ``x``'s dtype; ``g``, ``x``, ``out`` ``(N, C, S)``."""
    samples, channels, spatial = x.shape
    for chunk in prange(chunks):
        start, stop = _chunk_samples(chunk, chunks, samples)
        w, coefficients = np.empty(channels), np.empty((4, channels), x.dtype)
        mean, coef_x, const, coef_g = coefficients[0], coefficients[1], coefficients[2], coefficients[3]
        for n in range(start, stop):
            _grad_input_coefficients(
                n, g_sum, g_xc, m, v, s, sq_norm, mu, gain, u, w_bias, spatial, l2_eps, w, coefficients
            )
            for c in range(channels):
                for j in range(spatial):
                    out[n, c, j] = (x[n, c, j] - mean[c]) * coef_x[c] + const[c] + coef_g[c] * g[n, c, j]


@_parallel_jit
def _grad_input_nsc(g, x, g_sum, g_xc, m, v, s, sq_norm, mu, gain, u, w_bias, l2_eps, out, chunks) -> None:
    """:func:`_grad_input_ncs` for ``(N, S, C)`` arrays (channels_last)."""
    samples, spatial, channels = x.shape
    for chunk in prange(chunks):
        start, stop = _chunk_samples(chunk, chunks, samples)
        w, coefficients = np.empty(channels), np.empty((4, channels), x.dtype)
        mean, coef_x, const, coef_g = coefficients[0], coefficients[1], coefficients[2], coefficients[3]
        for n in range(start, stop):
            _grad_input_coefficients(
                n, g_sum, g_xc, m, v, s, sq_norm, mu, gain, u, w_bias, spatial, l2_eps, w, coefficients
            )
            for j in range(spatial):
                for c in range(channels):
                    out[n, j, c] = (x[n, j, c] - mean[c]) * coef_x[c] + const[c] + coef_g[c] * g[n, j, c]


@_jit
def _update_running(running, value, momentum) -> None:
    """``running += momentum * (value - running)`` in place (``torch.lerp_``); an empty ``running`` is absent."""
    for c in range(running.size):
        running[c] += momentum * (value[c] - running[c])


@_jit
def _forward(x, channels_last, weight, bias, eps, l2_eps, k, out, running_mean, running_var, momentum, threads):
    """The training forward: ``x`` and ``out`` ``(N, C, S)``, or ``(N, S, C)`` if ``channels_last``;
    the running statistics (empty arrays: absent) updated in place as ``F.batch_norm`` updates them
    (the unbiased variance); the parallel passes run on ``threads`` threads. Returns the float64
    statistics ``(m, v, s, sq_norm, mu, invstd)``."""
    samples = x.shape[0]
    chunks = max(1, min(samples, threads))
    channels, spatial = (x.shape[2], x.shape[1]) if channels_last else (x.shape[1], x.shape[2])
    m, v, sq_norm = np.empty((samples, channels)), np.empty((samples, channels)), np.empty(samples)
    if channels_last:
        _moments_nsc(x, m, v, sq_norm, chunks)
    else:
        _moments_ncs(x, m, v, sq_norm, chunks)
    s, mu, var, invstd, gain, offset = _forward_step(m, v, sq_norm, weight, bias, eps, l2_eps, k)
    if channels_last:
        _normalize_nsc(x, m, s, gain, mu, offset, out, chunks)
    else:
        _normalize_ncs(x, m, s, gain, mu, offset, out, chunks)
    count = samples * spatial
    _update_running(running_mean, mu, momentum)
    _update_running(running_var, var * (count / max(count - 1, 1)), momentum)
    return m, v, s, sq_norm, mu, invstd


@_jit
def _backward(g, x, channels_last, m, v, s, sq_norm, mu, invstd, weight, l2_eps, out, threads):
    """The training backward: ``g``, ``x``, ``out`` (``grad_x``) laid out as in :func:`_forward`, the
    forward's statistics, ``threads`` as in :func:`_forward`. Returns ``(grad_weight, grad_bias)`` in ``x``'s dtype."""
    samples = x.shape[0]
    chunks = max(1, min(samples, threads))
    channels, spatial = (x.shape[2], x.shape[1]) if channels_last else (x.shape[1], x.shape[2])
    g_sum, g_xc = np.empty((samples, channels)), np.empty((samples, channels))
    if channels_last:
        _grad_sums_nsc(g, x, m, g_sum, g_xc, chunks)
    else:
        _grad_sums_ncs(g, x, m, g_sum, g_xc, chunks)
    grad_weight, grad_bias, gain, u, w_bias = _backward_step(g_sum, g_xc, m, s, mu, invstd, weight, samples * spatial)
    if channels_last:
        _grad_input_nsc(g, x, g_sum, g_xc, m, v, s, sq_norm, mu, gain, u, w_bias, l2_eps, out, chunks)
    else:
        _grad_input_ncs(g, x, g_sum, g_xc, m, v, s, sq_norm, mu, gain, u, w_bias, l2_eps, out, chunks)
    return grad_weight.astype(x.dtype), grad_bias.astype(x.dtype)


def _channels_last(x: Tensor) -> bool:
    """Whether ``x`` ``(N, C, *)`` lies in memory as ``(N, *, C)`` (and not also as ``(N, C, *)``)."""
    return x.dim() > 2 and not x.is_contiguous() and x.movedim(1, -1).is_contiguous()


def _as_array(t: Tensor, channels_last: bool) -> np.ndarray:
    """``t`` ``(N, C, *)`` as a C-contiguous ``(N, C, S)`` array, or ``(N, S, C)`` if ``channels_last``,
    sharing memory where ``t`` lies that way (else a copy, e.g. of an expanded gradient)."""
    a = t.detach().numpy()
    n, c = a.shape[:2]
    if channels_last:
        return np.ascontiguousarray(a.transpose(0, *range(2, a.ndim), 1).reshape(n, -1, c))
    return np.ascontiguousarray(a.reshape(n, c, -1))


def _empty_like(x: Tensor, channels_last: bool) -> tuple[Tensor, np.ndarray]:
    """A new tensor of ``x``'s shape and dtype, laid out as :func:`_as_array` reads ``x``, and that array
    view of it. The tensor owns its memory (it is no view, which a custom Function may not return)."""
    n, c = x.shape[:2]
    dtype = _NUMPY_DTYPES[x.dtype]
    if channels_last:
        memory = np.empty((n, *x.shape[2:], c), dtype)
        return torch.from_numpy(memory.transpose(0, memory.ndim - 1, *range(1, memory.ndim - 1))), memory.reshape(
            n, -1, c
        )
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


#: the torch thread count the kernels were last set to run on, per Python thread (numba's count is per thread)
_thread_setting = threading.local()


def _use_torch_threads() -> int:
    """Runs the kernels on as many threads as torch's operators (``torch.set_num_threads``); returns that number."""
    threads = torch.get_num_threads()
    if getattr(_thread_setting, "torch_threads", None) != threads:
        _thread_setting.threads = min(threads, numba.config.NUMBA_NUM_THREADS)
        numba.set_num_threads(_thread_setting.threads)
        _thread_setting.torch_threads = threads
    return _thread_setting.threads


class Saved(NamedTuple):
    """What :func:`train_backward` needs from the forward: ``x`` as the kernels read it (an ``(N, C, S)``
    or, if ``channels_last``, ``(N, S, C)`` array sharing its memory), ``weight`` as an array (empty:
    absent) and the float64 statistics ``(m, v, s, sq_norm, mu, invstd)``: the per-(sample, channel)
    mean and variance ``(N, C)``, the per-sample scale and squared norm ``(N,)``, and the channel mean
    and inverse std of the l2-normalized input ``(C,)``."""

    x: np.ndarray
    channels_last: bool
    weight: np.ndarray
    statistics: tuple[np.ndarray, ...]


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
    and layout, contiguous or channels_last) and what the backward needs (the arrays share the memory
    of ``x`` and ``weight``: keep those unchanged until the backward); the running statistics ``(C,)``
    (if given) updated in place, as :func:`torch.nn.functional.batch_norm` does."""
    threads = _use_torch_threads()
    channels_last = _channels_last(x)
    x3 = _as_array(x, channels_last)
    y, out = _empty_like(x, channels_last)
    k = math.sqrt(x3.shape[1] * x3.shape[2]) if rescale else 1.0
    weight3 = _parameter(weight, x.dtype)
    running = [_parameter(t, x.dtype) for t in (running_mean, running_var)]
    statistics = _forward(
        x3, channels_last, weight3, _parameter(bias, x.dtype), eps, l2_eps, k, out, *running, momentum, threads
    )
    for t, updated in zip((running_mean, running_var), running):
        if t is not None and t.dtype != x.dtype:  # updated a converted copy
            t.copy_(torch.from_numpy(updated))
    return y, Saved(x3, channels_last, weight3, statistics)


def train_backward(grad: Tensor, x: Tensor, saved: Saved, l2_eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """``(grad_x, grad_weight, grad_bias)`` for the forward of ``x`` that returned ``saved``: ``grad_x``
    in ``x``'s shape, dtype and layout, the parameter gradients ``(C,)`` in ``x``'s dtype."""
    threads = _use_torch_threads()
    grad_x, out = _empty_like(x, saved.channels_last)
    g3 = _as_array(grad.to(x.dtype), saved.channels_last)
    grad_weight, grad_bias = _backward(
        g3, saved.x, saved.channels_last, *saved.statistics, saved.weight, l2_eps, out, threads
    )
    return grad_x, torch.from_numpy(grad_weight), torch.from_numpy(grad_bias)
