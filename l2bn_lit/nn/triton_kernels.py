"""Triton kernels of the fused training path (:mod:`l2bn_lit.nn.fused`): BatchNorm's passes over memory.

Forward: one read pass over ``x`` for the per-(sample, channel) moments (Chan's combination of
per-tile moments: no cancellation), a per-sample step (the squared norms and scales), a per-channel
step (batch mean and variance of the l2-normalized input, the per-(sample, channel) affine
coefficients) and one pass that writes ``y``. Backward: one read pass over
``(grad, x)`` for the per-(sample, channel) sums, a per-channel step (``grad_weight``, ``grad_bias``),
a per-sample step (the radial term of the l2 step) and one pass that writes ``grad_x`` once.

``x``, ``grad`` and the outputs are addressed as ``(N, C, S)`` through their strides, so one kernel
serves contiguous and channels_last tensors; element offsets are int64. Statistics accumulate in
float32 whatever the input dtype; reductions run in a fixed order (no atomics): deterministic.
On CPU tensors the kernels run under Triton's interpreter (``TRITON_INTERPRET=1``, set before this
module is imported).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = [
    "affine",
    "grad_sums",
    "input_grad_coefficients",
    "moments",
    "sample_scale",
    "train_backward",
    "train_forward",
]


@triton.jit
def _moments_kernel(x_ptr, m_ptr, v_ptr, C, S, sxn, sxc, sxs, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr):
    """Per-(n, c) mean and biased variance over S: one program per (n, block of channels)."""
    pid = tl.program_id(0)
    blocks = tl.cdiv(C, BLOCK_C)
    n = pid // blocks
    c = (pid % blocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    rows = x_ptr + n.to(tl.int64) * sxn + c.to(tl.int64)[:, None] * sxc
    count = 0.0
    mean = tl.zeros((BLOCK_C,), tl.float32)
    m2 = tl.zeros((BLOCK_C,), tl.float32)
    for start in range(0, S, BLOCK_S):
        s = start + tl.arange(0, BLOCK_S)
        ok = c_ok[:, None] & (s < S)[None, :]
        tile = tl.load(rows + s.to(tl.int64)[None, :] * sxs, mask=ok, other=0.0).to(tl.float32)
        size = tl.minimum(S - start, BLOCK_S).to(tl.float32)
        tile_mean = tl.sum(tile, 1) / size
        centred = tl.where(ok, tile - tile_mean[:, None], 0.0)
        total = count + size
        delta = tile_mean - mean
        mean += delta * (size / total)
        m2 += tl.sum(centred * centred, 1) + delta * delta * (count * size / total)
        count = total
    tl.store(m_ptr + n * C + c, mean, mask=c_ok)
    tl.store(v_ptr + n * C + c, m2 / S, mask=c_ok)


@triton.jit
def _sample_scale_kernel(m_ptr, v_ptr, sq_ptr, s_ptr, C, S, k, max_scale, l2_eps_sq, BLOCK_C: tl.constexpr):
    """``||x[n]||^2 = S * sum_c (v + m^2)`` and ``s[n] = k * min(1 / ||x[n]||, 1 / l2_eps)``."""
    n = tl.program_id(0)
    acc = tl.zeros((BLOCK_C,), tl.float32)
    for start in range(0, C, BLOCK_C):
        c = start + tl.arange(0, BLOCK_C)
        ok = c < C
        m = tl.load(m_ptr + n * C + c, mask=ok, other=0.0)
        acc += tl.load(v_ptr + n * C + c, mask=ok, other=0.0) + m * m
    sq = tl.sum(acc, 0) * S
    tl.store(sq_ptr + n, sq)
    tl.store(s_ptr + n, tl.minimum(1.0 / tl.sqrt(tl.maximum(sq, l2_eps_sq)), max_scale) * k)  # no 1/0


@triton.jit
def _channel_forward_kernel(
    m_ptr,
    v_ptr,
    s_ptr,
    w_ptr,
    b_ptr,
    a_ptr,
    shift_ptr,
    mu_ptr,
    var_ptr,
    invstd_ptr,
    N,
    C,
    eps,
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Batch mean and biased variance of ``xh = s * x`` per channel (two passes over the (N, C)
    moments), and ``a = s * gain``, ``shift = gain * (s * m - mu) + bias``."""
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    total = tl.zeros((BLOCK_C,), tl.float32)
    for start in range(0, N, BLOCK_N):
        n = start + tl.arange(0, BLOCK_N)
        ok = (n < N)[:, None] & c_ok[None, :]
        m = tl.load(m_ptr + n[:, None] * C + c[None, :], mask=ok, other=0.0)
        s = tl.load(s_ptr + n, mask=n < N, other=0.0)
        total += tl.sum(s[:, None] * m, 0)
    mu = total / N
    total = tl.zeros((BLOCK_C,), tl.float32)
    for start in range(0, N, BLOCK_N):
        n = start + tl.arange(0, BLOCK_N)
        ok = (n < N)[:, None] & c_ok[None, :]
        m = tl.load(m_ptr + n[:, None] * C + c[None, :], mask=ok, other=0.0)
        v = tl.load(v_ptr + n[:, None] * C + c[None, :], mask=ok, other=0.0)
        s = tl.load(s_ptr + n, mask=n < N, other=0.0)[:, None]
        d = s * m - mu[None, :]
        total += tl.sum(tl.where(ok, s * s * v + d * d, 0.0), 0)
    var = total / N
    invstd = 1.0 / tl.sqrt(var + eps)
    gain = invstd
    if HAS_WEIGHT:
        gain = gain * tl.load(w_ptr + c, mask=c_ok, other=0.0).to(tl.float32)
    bias = tl.zeros((BLOCK_C,), tl.float32)
    if HAS_BIAS:
        bias = tl.load(b_ptr + c, mask=c_ok, other=0.0).to(tl.float32)
    tl.store(mu_ptr + c, mu, mask=c_ok)
    tl.store(var_ptr + c, var, mask=c_ok)
    tl.store(invstd_ptr + c, invstd, mask=c_ok)
    for start in range(0, N, BLOCK_N):
        n = start + tl.arange(0, BLOCK_N)
        ok = (n < N)[:, None] & c_ok[None, :]
        offsets = n[:, None] * C + c[None, :]
        m = tl.load(m_ptr + offsets, mask=ok, other=0.0)
        s = tl.load(s_ptr + n, mask=n < N, other=0.0)[:, None]
        tl.store(a_ptr + offsets, s * gain[None, :], mask=ok)
        tl.store(shift_ptr + offsets, gain[None, :] * (s * m - mu[None, :]) + bias[None, :], mask=ok)


@triton.jit
def _affine_kernel(
    x_ptr,
    g_ptr,
    out_ptr,
    m_ptr,
    a_ptr,
    b_ptr,
    cg_ptr,
    C,
    S,
    sxn,
    sxc,
    sxs,
    sgn,
    sgc,
    sgs,
    son,
    soc,
    sos,
    HAS_GRAD: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    """``out = (x - m) * a + b`` (``+ cg * g`` with ``HAS_GRAD``) per (n, c), one tile per program."""
    pid = tl.program_id(0)
    blocks = tl.cdiv(C, BLOCK_C)
    n = pid // blocks
    c = (pid % blocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    s = tl.program_id(1) * BLOCK_S + tl.arange(0, BLOCK_S)
    c_ok = c < C
    ok = c_ok[:, None] & (s < S)[None, :]
    n64, c64, s64 = n.to(tl.int64), c.to(tl.int64)[:, None], s.to(tl.int64)[None, :]
    x = tl.load(x_ptr + n64 * sxn + c64 * sxc + s64 * sxs, mask=ok, other=0.0).to(tl.float32)
    stat = n * C + c
    m = tl.load(m_ptr + stat, mask=c_ok, other=0.0)[:, None]
    a = tl.load(a_ptr + stat, mask=c_ok, other=0.0)[:, None]
    b = tl.load(b_ptr + stat, mask=c_ok, other=0.0)[:, None]
    out = (x - m) * a + b
    if HAS_GRAD:
        g = tl.load(g_ptr + n64 * sgn + c64 * sgc + s64 * sgs, mask=ok, other=0.0).to(tl.float32)
        out += tl.load(cg_ptr + stat, mask=c_ok, other=0.0)[:, None] * g
    tl.store(out_ptr + n64 * son + c64 * soc + s64 * sos, out.to(out_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _grad_sums_kernel(
    g_ptr,
    x_ptr,
    m_ptr,
    gsum_ptr,
    gxc_ptr,
    C,
    S,
    sgn,
    sgc,
    sgs,
    sxn,
    sxc,
    sxs,
    BLOCK_C: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    """Per-(n, c) ``sum(g)`` and ``sum(g * (x - m))`` over S: one read pass over ``(g, x)``."""
    pid = tl.program_id(0)
    blocks = tl.cdiv(C, BLOCK_C)
    n = pid // blocks
    c = (pid % blocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    m = tl.load(m_ptr + n * C + c, mask=c_ok, other=0.0)
    x_rows = x_ptr + n.to(tl.int64) * sxn + c.to(tl.int64)[:, None] * sxc
    g_rows = g_ptr + n.to(tl.int64) * sgn + c.to(tl.int64)[:, None] * sgc
    g_sum = tl.zeros((BLOCK_C,), tl.float32)
    g_xc = tl.zeros((BLOCK_C,), tl.float32)
    for start in range(0, S, BLOCK_S):
        s = (start + tl.arange(0, BLOCK_S)).to(tl.int64)
        ok = c_ok[:, None] & (s < S)[None, :]
        g = tl.load(g_rows + s[None, :] * sgs, mask=ok, other=0.0).to(tl.float32)
        x = tl.load(x_rows + s[None, :] * sxs, mask=ok, other=0.0).to(tl.float32)
        g_sum += tl.sum(g, 1)
        g_xc += tl.sum(tl.where(ok, g * (x - m[:, None]), 0.0), 1)
    tl.store(gsum_ptr + n * C + c, g_sum, mask=c_ok)
    tl.store(gxc_ptr + n * C + c, g_xc, mask=c_ok)


@triton.jit
def _channel_backward_kernel(
    gsum_ptr,
    gxc_ptr,
    m_ptr,
    s_ptr,
    mu_ptr,
    invstd_ptr,
    w_ptr,
    gw_ptr,
    gb_ptr,
    u_ptr,
    wn_ptr,
    N,
    C,
    count,
    HAS_WEIGHT: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """``grad_bias = sum_n gsum``, ``grad_weight = invstd * sum_n (s * gxc + d * gsum)``, and batch
    norm's backward terms ``u = gain * invstd * grad_weight / count`` (C,) and
    ``w = gain * (grad_bias + d * invstd * grad_weight) / count`` (N, C), with ``d = s * m - mu``."""
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    mu = tl.load(mu_ptr + c, mask=c_ok, other=0.0)
    invstd = tl.load(invstd_ptr + c, mask=c_ok, other=0.0)
    gain = invstd
    if HAS_WEIGHT:
        gain = gain * tl.load(w_ptr + c, mask=c_ok, other=0.0).to(tl.float32)
    grad_bias = tl.zeros((BLOCK_C,), tl.float32)
    grad_gain = tl.zeros((BLOCK_C,), tl.float32)
    for start in range(0, N, BLOCK_N):
        n = start + tl.arange(0, BLOCK_N)
        ok = (n < N)[:, None] & c_ok[None, :]
        offsets = n[:, None] * C + c[None, :]
        g_sum = tl.load(gsum_ptr + offsets, mask=ok, other=0.0)
        s = tl.load(s_ptr + n, mask=n < N, other=0.0)[:, None]
        d = s * tl.load(m_ptr + offsets, mask=ok, other=0.0) - mu[None, :]
        grad_bias += tl.sum(g_sum, 0)
        grad_gain += tl.sum(s * tl.load(gxc_ptr + offsets, mask=ok, other=0.0) + d * g_sum, 0)
    grad_gain = grad_gain * invstd
    tl.store(gw_ptr + c, grad_gain, mask=c_ok)
    tl.store(gb_ptr + c, grad_bias, mask=c_ok)
    scaled = invstd * grad_gain / count
    tl.store(u_ptr + c, gain * scaled, mask=c_ok)
    for start in range(0, N, BLOCK_N):
        n = start + tl.arange(0, BLOCK_N)
        ok = (n < N)[:, None] & c_ok[None, :]
        offsets = n[:, None] * C + c[None, :]
        s = tl.load(s_ptr + n, mask=n < N, other=0.0)[:, None]
        d = s * tl.load(m_ptr + offsets, mask=ok, other=0.0) - mu[None, :]
        tl.store(wn_ptr + offsets, gain[None, :] * (grad_bias[None, :] / count + d * scaled[None, :]), mask=ok)


@triton.jit
def _sample_backward_kernel(
    gsum_ptr,
    gxc_ptr,
    m_ptr,
    v_ptr,
    s_ptr,
    sq_ptr,
    invstd_ptr,
    w_ptr,
    u_ptr,
    wn_ptr,
    cx_ptr,
    k_ptr,
    cg_ptr,
    C,
    S,
    l2_eps_sq,
    HAS_WEIGHT: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Per sample: ``<dxh[n], x[n]>`` from the (n, c) sums, the radial term of the l2 step (none
    where the norm was clamped), and ``grad_x = cx * (x - m) + k + cg * grad``'s coefficients."""
    n = tl.program_id(0)
    s = tl.load(s_ptr + n)
    sq = tl.load(sq_ptr + n)
    acc = tl.zeros((BLOCK_C,), tl.float32)
    for start in range(0, C, BLOCK_C):
        c = start + tl.arange(0, BLOCK_C)
        ok = c < C
        gain = tl.load(invstd_ptr + c, mask=ok, other=0.0)
        if HAS_WEIGHT:
            gain = gain * tl.load(w_ptr + c, mask=ok, other=0.0).to(tl.float32)
        g_sum = tl.load(gsum_ptr + n * C + c, mask=ok, other=0.0)
        wn = tl.load(wn_ptr + n * C + c, mask=ok, other=0.0)
        m = tl.load(m_ptr + n * C + c, mask=ok, other=0.0)
        v = tl.load(v_ptr + n * C + c, mask=ok, other=0.0)
        u = tl.load(u_ptr + c, mask=ok, other=0.0)
        acc += gain * tl.load(gxc_ptr + n * C + c, mask=ok, other=0.0) + m * (gain * g_sum - S * wn) - S * u * s * v
    radial = tl.where(sq <= l2_eps_sq, 0.0, tl.sum(acc, 0) / tl.maximum(sq, l2_eps_sq))
    for start in range(0, C, BLOCK_C):
        c = start + tl.arange(0, BLOCK_C)
        ok = c < C
        gain = tl.load(invstd_ptr + c, mask=ok, other=0.0)
        if HAS_WEIGHT:
            gain = gain * tl.load(w_ptr + c, mask=ok, other=0.0).to(tl.float32)
        u = tl.load(u_ptr + c, mask=ok, other=0.0)
        wn = tl.load(wn_ptr + n * C + c, mask=ok, other=0.0)
        m = tl.load(m_ptr + n * C + c, mask=ok, other=0.0)
        tl.store(cx_ptr + n * C + c, -(s * s * u + s * radial), mask=ok)
        tl.store(k_ptr + n * C + c, -s * (wn + radial * m), mask=ok)
        tl.store(cg_ptr + n * C + c, s * gain, mask=ok)


def _as_ncs(t: Tensor) -> Tensor:
    """``(N, C, *)`` as an ``(N, C, S)`` view (contiguous and channels_last tensors flatten without a
    copy; other layouts are copied contiguous first)."""
    shape = (t.shape[0], t.shape[1], -1)
    try:
        return t.view(shape)
    except RuntimeError:
        return t.contiguous().view(shape)


def _output_like(x: Tensor) -> tuple[Tensor, Tensor]:
    """A new tensor of ``x``'s shape, dtype and (where it flattens) memory format, and its ``(N, C, S)`` view."""
    out = torch.empty_like(x)
    try:
        return out, out.view(x.shape[0], x.shape[1], -1)
    except RuntimeError:
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        return out, out.view(x.shape[0], x.shape[1], -1)


def _f32(*shape: int, device: torch.device) -> Tensor:
    return torch.empty(shape, dtype=torch.float32, device=device)


def _tiles(x3: Tensor) -> tuple[int, int]:
    """``(BLOCK_C, BLOCK_S)``: tiles along the contiguous axis (S for contiguous, C for channels_last)."""
    channels, spatial = x3.shape[1], x3.shape[2]
    if x3.stride(1) == 1 and spatial > 1:  # channels_last: channels are adjacent in memory
        block_c = min(64, triton.next_power_of_2(channels))
        return block_c, max(1, min(triton.next_power_of_2(spatial), 1024 // block_c))
    block_s = min(1024, triton.next_power_of_2(spatial))
    return max(1, min(triton.next_power_of_2(channels), 1024 // block_s)), block_s


def _small_blocks(n: int, c: int) -> tuple[int, int]:
    return min(64, triton.next_power_of_2(n)), min(64, triton.next_power_of_2(c))


def _row_block(c: int) -> int:
    return min(1024, triton.next_power_of_2(c))


def moments(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-(sample, channel) mean and biased variance of ``x`` ``(N, C, *)`` over its spatial dims:
    two float32 ``(N, C)`` tensors, one read pass."""
    n, c = x.shape[:2]
    x3 = _as_ncs(x)
    m, v = _f32(n, c, device=x.device), _f32(n, c, device=x.device)
    block_c, block_s = _tiles(x3)
    _moments_kernel[(n * triton.cdiv(c, block_c),)](
        x3, m, v, c, x3.shape[2], *x3.stride(), BLOCK_C=block_c, BLOCK_S=block_s
    )
    return m, v


def sample_scale(m: Tensor, v: Tensor, spatial: int, l2_eps: float, rescale: bool) -> tuple[Tensor, Tensor]:
    """``(sq_norm, s)``, ``(N,)`` float32: each sample's squared l2 norm from its moments and its scale
    ``k / max(norm, l2_eps)`` (``k = sqrt(C * S)`` with ``rescale``, else 1)."""
    n, c = m.shape
    sq_norm, s = _f32(n, device=m.device), _f32(n, device=m.device)
    k = math.sqrt(c * spatial) if rescale else 1.0
    _sample_scale_kernel[(n,)](m, v, sq_norm, s, c, spatial, k, 1.0 / l2_eps, l2_eps * l2_eps, BLOCK_C=_row_block(c))
    return sq_norm, s


def affine(
    x: Tensor, m: Tensor, a: Tensor, b: Tensor, grad: Tensor | None = None, coef_grad: Tensor | None = None
) -> Tensor:
    """``(x - m) * a + b`` (``+ coef_grad * grad``) with ``(N, C)`` float32 coefficients: one pass
    writing a new tensor of ``x``'s shape, dtype and memory format."""
    n, c = x.shape[:2]
    x3 = _as_ncs(x)
    out, out3 = _output_like(x)
    g3 = _as_ncs(grad) if grad is not None else x3
    block_c, block_s = _tiles(x3)
    _affine_kernel[(n * triton.cdiv(c, block_c), triton.cdiv(x3.shape[2], block_s))](
        x3,
        g3,
        out3,
        m,
        a,
        b,
        coef_grad if coef_grad is not None else a,
        c,
        x3.shape[2],
        *x3.stride(),
        *g3.stride(),
        *out3.stride(),
        HAS_GRAD=grad is not None,
        BLOCK_C=block_c,
        BLOCK_S=block_s,
    )
    return out


def grad_sums(grad: Tensor, x: Tensor, m: Tensor) -> tuple[Tensor, Tensor]:
    """Per-(sample, channel) ``sum(grad)`` and ``sum(grad * (x - m))``: float32 ``(N, C)``, one read pass."""
    n, c = x.shape[:2]
    x3, g3 = _as_ncs(x), _as_ncs(grad)
    g_sum, g_xc = _f32(n, c, device=x.device), _f32(n, c, device=x.device)
    block_c, block_s = _tiles(x3)
    _grad_sums_kernel[(n * triton.cdiv(c, block_c),)](
        g3, x3, m, g_sum, g_xc, c, x3.shape[2], *g3.stride(), *x3.stride(), BLOCK_C=block_c, BLOCK_S=block_s
    )
    return g_sum, g_xc


def input_grad_coefficients(
    g_sum: Tensor,
    g_xc: Tensor,
    m: Tensor,
    v: Tensor,
    s: Tensor,
    sq_norm: Tensor,
    invstd: Tensor,
    weight: Tensor | None,
    u: Tensor,
    wn: Tensor,
    spatial: int,
    l2_eps: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(coef_x, const, coef_grad)``, float32 ``(N, C)``: ``grad_x = coef_x * (x - m) + const +
    coef_grad * grad``, from batch norm's backward terms ``u`` ``(C,)`` and ``wn`` ``(N, C)`` and the
    per-sample radial term of the l2 step."""
    n, c = m.shape
    coef_x, const, coef_grad = (_f32(n, c, device=m.device) for _ in range(3))
    _sample_backward_kernel[(n,)](
        g_sum,
        g_xc,
        m,
        v,
        s,
        sq_norm,
        invstd,
        weight if weight is not None else u,
        u,
        wn,
        coef_x,
        const,
        coef_grad,
        c,
        spatial,
        l2_eps * l2_eps,
        HAS_WEIGHT=weight is not None,
        BLOCK_C=_row_block(c),
    )
    return coef_x, const, coef_grad


def train_forward(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float, l2_eps: float, rescale: bool
) -> tuple[Tensor, ...]:
    """``(y, m, v, s, sq_norm, mu, var, invstd)``: the output, the batch statistics and what the
    backward needs (float32)."""
    n, c = x.shape[:2]
    spatial = x[0, 0].numel()
    m, v = moments(x)
    sq_norm, s = sample_scale(m, v, spatial, l2_eps, rescale)
    a, shift = _f32(n, c, device=x.device), _f32(n, c, device=x.device)
    mu, var, invstd = (_f32(c, device=x.device) for _ in range(3))
    block_n, block_c = _small_blocks(n, c)
    _channel_forward_kernel[(triton.cdiv(c, block_c),)](
        m,
        v,
        s,
        weight if weight is not None else m,
        bias if bias is not None else m,  # m: an absent tensor's stand-in
        a,
        shift,
        mu,
        var,
        invstd,
        n,
        c,
        eps,
        HAS_WEIGHT=weight is not None,
        HAS_BIAS=bias is not None,
        BLOCK_N=block_n,
        BLOCK_C=block_c,
    )
    return affine(x, m, a, shift), m, v, s, sq_norm, mu, var, invstd


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
    """``(grad_x, grad_weight, grad_bias)``; the parameter gradients in float32, ``(C,)``."""
    n, c = x.shape[:2]
    spatial = x[0, 0].numel()
    g_sum, g_xc = grad_sums(grad, x, m)
    grad_weight, grad_bias, u = (_f32(c, device=x.device) for _ in range(3))
    wn = _f32(n, c, device=x.device)
    block_n, block_c = _small_blocks(n, c)
    _channel_backward_kernel[(triton.cdiv(c, block_c),)](
        g_sum,
        g_xc,
        m,
        s,
        mu,
        invstd,
        weight if weight is not None else u,
        grad_weight,
        grad_bias,
        u,
        wn,
        n,
        c,
        float(n * spatial),
        HAS_WEIGHT=weight is not None,
        BLOCK_N=block_n,
        BLOCK_C=block_c,
    )
    coef_x, const, coef_grad = input_grad_coefficients(
        g_sum, g_xc, m, v, s, sq_norm, invstd, weight, u, wn, spatial, l2_eps
    )
    return affine(x, m, coef_x, const, grad, coef_grad), grad_weight, grad_bias
