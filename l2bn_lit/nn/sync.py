"""SyncL2BN: L2BN whose batch statistics are reduced across a process group.

The per-sample l2 step needs no communication and stays local. The channel statistics of the
l2-normalized tensor are reduced with two differentiable all-reduces of ``(C,)`` vectors (sums,
then squared deviations from the global mean, so no cancellation), which works on gloo/CPU as well
as NCCL/GPU. torch's own ``SyncBatchNorm`` refuses CPU tensors, so nothing here depends on it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from .functional import _accumulation_dtype, _expand, _sample_scale, _to_finite
from .fused import update_running_stats, use_fused_kernels
from .layers import _L2BNBase

__all__ = ["SyncL2BN", "replace_modules", "transfer_norm_state"]


def replace_modules(model: nn.Module, swap: Callable[[nn.Module], nn.Module | None]) -> nn.Module:
    """Replaces, depth first and in place, every module for which ``swap`` returns a new module.

    Returns the new root (``model`` itself unless ``swap`` replaced the root).
    """
    replacement = swap(model)
    if replacement is not None:
        return replacement
    for name, child in model.named_children():
        new_child = replace_modules(child, swap)
        if new_child is not child:
            setattr(model, name, new_child)
    return model


def transfer_norm_state(source: _BatchNorm, target_cls: type[_BatchNorm], **options: Any) -> _BatchNorm:
    """Builds ``target_cls`` with ``source``'s configuration and takes over its parameters (the
    same Parameter objects), running statistics, train/eval mode and ``qconfig``."""
    weight = source.weight
    reference = weight if weight is not None else source.running_mean
    factory = {} if reference is None else {"device": reference.device, "dtype": reference.dtype}
    target = target_cls(
        source.num_features,
        eps=source.eps,
        momentum=source.momentum,
        affine=source.affine,
        track_running_stats=source.track_running_stats,
        **(factory | options),
    )
    if source.affine:
        target.weight = source.weight
        target.bias = source.bias
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        setattr(target, name, getattr(source, name))
    target.train(source.training)
    if hasattr(source, "qconfig"):
        target.qconfig = source.qconfig
    return target


class _AllReduceSum(torch.autograd.Function):
    """Differentiable sum over the process group: the gradient of a sum is the summed gradient."""

    @staticmethod
    def forward(ctx, tensor: Tensor, group: Any) -> Tensor:
        ctx.group = group
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class _FusedSyncTrain(torch.autograd.Function):
    """SyncL2BN's training step on the fused kernels (:mod:`l2bn_lit.nn.triton_kernels`): the passes
    over ``x`` and ``(grad, x)`` are the kernels' (moments, affine write; gradient sums, one write of
    ``grad_x``), the per-channel sums are all-reduced: twice forward (the mean, then the centred
    variance: no cancellation), once backward. Returns ``(y, mu, var, count)``: the output and the
    batch statistics over all processes for the running ones."""

    @staticmethod
    def forward(
        ctx, x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float, l2_eps: float, rescale: bool, group: Any
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        from . import triton_kernels as kernels

        n, channels = x.shape[:2]
        spatial = x[0, 0].numel()
        m, v = kernels.moments(x)
        sq_norm, s = kernels.sample_scale(m, v, spatial, l2_eps, rescale)
        s = s[:, None]
        sm = s * m  # (N, C) per-sample means of xh
        local = torch.cat([sm.sum(0) * spatial, sm.new_full((1,), float(n * spatial))])
        dist.all_reduce(local, group=group)
        count = local[-1]
        mu = local[:-1] / count
        d = sm - mu
        var = (s.square() * v + d.square()).sum(0) * spatial
        dist.all_reduce(var, group=group)
        var = var / count
        invstd = (var + eps).rsqrt()
        gain = invstd if weight is None else weight.float() * invstd
        shift = gain * d if bias is None else gain * d + bias.float()
        y = kernels.affine(x, m, s * gain, shift)
        ctx.save_for_backward(x, weight, m, v, s, sq_norm, mu, invstd, count)
        ctx.l2_eps, ctx.group = l2_eps, group
        ctx.parameter_dtypes = (None if weight is None else weight.dtype, None if bias is None else bias.dtype)
        total = count.clone()
        ctx.mark_non_differentiable(mu, var, total)
        return y, mu, var, total

    @staticmethod
    def backward(ctx, grad: Tensor, *_):
        from . import triton_kernels as kernels

        x, weight, m, v, s, sq_norm, mu, invstd, count = ctx.saved_tensors
        channels, spatial = x.shape[1], x[0, 0].numel()
        g_sum, g_xc = kernels.grad_sums(grad, x, m)
        d = s * m - mu
        local = torch.cat(
            [g_sum.sum(0), (s * g_xc + d * g_sum).sum(0)]
        )  # this process's grad_bias, grad_weight / invstd
        total = local.clone()
        dist.all_reduce(total, group=ctx.group)
        grad_gain = total[channels:] * invstd
        gain = invstd if weight is None else weight.float() * invstd
        scaled = invstd * grad_gain / count
        u = gain * scaled
        wn = gain * (total[:channels] / count + d * scaled)
        coefficients = kernels.input_grad_coefficients(
            g_sum, g_xc, m, v, s.squeeze(1), sq_norm, invstd, weight, u, wn, spatial, ctx.l2_eps
        )
        grad_x = kernels.affine(x, m, coefficients[0], coefficients[1], grad, coefficients[2])
        # the parameters' gradients of this process's samples, as SyncBatchNorm's: DDP reduces them
        weight_dtype, bias_dtype = ctx.parameter_dtypes
        grad_weight = (
            (local[channels:] * invstd).to(weight_dtype)
            if weight_dtype is not None and ctx.needs_input_grad[1]
            else None
        )
        grad_bias = local[:channels].to(bias_dtype) if bias_dtype is not None and ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias, None, None, None, None


class SyncL2BN(_L2BNBase):
    """L2BN for distributed data parallel training: the batch statistics of the l2-normalized input
    over all processes of ``process_group``, as :class:`torch.nn.SyncBatchNorm` for batch norm.

    Each process l2-normalizes its own samples (the norm is per sample), then the channel mean and
    variance are reduced over the group (the mean first, then the centred variance). Outside
    training, without an initialized process group, or with a world of one process it behaves
    exactly as :class:`l2bn_lit.L2BN2d` (of matching rank). On CUDA its passes over the input run
    the fused kernels (``L2BN_KERNELS``, :mod:`l2bn_lit.nn.fused`). The parameters' gradients are each
    process's own, as SyncBatchNorm's: DDP reduces them.

    Args:
        num_features, eps, momentum, affine, track_running_stats, l2_eps, rescale, device, dtype:
            as :class:`l2bn_lit.L2BN2d`.
        process_group: the group to reduce over. Default: ``None`` (the whole world)

    Shape:
        - Input: :math:`(N, C, *)`
        - Output: same shape

    Examples::

        >>> import torch
        >>> from l2bn_lit import L2BN2d, SyncL2BN
        >>> sync = SyncL2BN(8)  # no process group here: L2BN2d's result
        >>> x = torch.randn(4, 8, 3, 3)
        >>> torch.allclose(sync(x), L2BN2d(8)(x), atol=1e-6)
        True
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), L2BN2d(8))
        >>> type(SyncL2BN.convert_sync_batchnorm(model)[1]).__name__  # for DDP, as SyncBatchNorm's
        'SyncL2BN'
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        l2_eps: float = 1e-12,
        rescale: bool = False,
        process_group: Any = None,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, l2_eps, rescale, device, dtype)
        self.process_group = process_group

    def _world_size(self) -> int:
        if not (dist.is_available() and dist.is_initialized()):
            return 1
        return dist.get_world_size(self.process_group)

    def forward(self, input: Tensor) -> Tensor:
        if not self.training or self._world_size() == 1:
            return super().forward(input)
        self._check_input_dim(input)
        running_mean, running_var, _, factor = self._batch_norm_arguments()
        return self._synced_forward(input, running_mean, running_var, factor)

    def _all_reduce(self, t: Tensor) -> Tensor:
        return _AllReduceSum.apply(t, self.process_group)

    def _synced_forward(
        self, x: Tensor, running_mean: Tensor | None, running_var: Tensor | None, factor: float
    ) -> Tensor:
        """Differentiable L2BN with statistics all-reduced over the process group (the fused kernels
        where :func:`~l2bn_lit.nn.fused.use_fused_kernels` says so)."""
        if use_fused_kernels(x):
            y, mu, var, count = _FusedSyncTrain.apply(
                x, self.weight, self.bias, self.eps, self.l2_eps, self.rescale, self.process_group
            )
            update_running_stats(running_mean, running_var, mu, var, int(count.item()), factor)
            return y
        acc = _accumulation_dtype(x.dtype)
        spatial = math.prod(x.shape[2:])
        dims = tuple(range(2, x.dim()))
        xa = x.to(acc)
        v, m = torch.var_mean(xa, dim=dims, correction=0) if dims else (torch.zeros_like(xa), xa)
        norm = torch.linalg.vector_norm(xa.flatten(1), 2, dim=1)  # differentiable at 0, unlike sqrt
        s = _sample_scale(norm, x[0].numel(), self.l2_eps, self.rescale)[:, None]
        sm = s * m  # (N, C) per-sample means of xh

        local_count = torch.full((1,), float(x.shape[0] * spatial), dtype=acc, device=x.device)
        totals = self._all_reduce(torch.cat([sm.sum(0) * spatial, local_count]))
        count = totals[-1]
        mu = totals[:-1] / count
        d = sm - mu
        var = self._all_reduce((s.square() * v + d.square()).sum(0) * spatial) / count
        invstd = (var + self.eps).rsqrt()
        gain = invstd if self.weight is None else self.weight.to(acc) * invstd
        shift = gain * d if self.bias is None else gain * d + self.bias.to(acc)
        scale = s * gain
        y = x * _expand(_to_finite(scale, x.dtype), x) + _expand(_to_finite(shift - scale * m, x.dtype), x)
        with torch.no_grad():
            update_running_stats(running_mean, running_var, mu, var, int(count.item()), factor)
        return y

    @classmethod
    def convert_sync_batchnorm(cls, module: nn.Module, process_group: Any = None) -> nn.Module:
        """Replaces every L2BN layer of ``module`` with SyncL2BN, in place (plain BatchNorm is left
        alone; convert it with ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` on GPU)."""

        def swap(child: nn.Module) -> nn.Module | None:
            if isinstance(child, _L2BNBase) and not isinstance(child, SyncL2BN):
                synced = transfer_norm_state(
                    child, cls, l2_eps=child.l2_eps, rescale=child.rescale, process_group=process_group
                )
                synced._original_type = type(child)
                return synced
            return None

        return replace_modules(module, swap)
