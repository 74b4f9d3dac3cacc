"""L2BN modules with torch BatchNorm's API, arguments and state_dict keys.

The classes derive from ``torch.nn.modules.batchnorm._BatchNorm`` so that code that treats
batch-norm layers generically (weight-decay exclusion, ``reset_running_stats``, loading old
checkpoints without ``num_batches_tracked``) keeps working, and a BatchNorm checkpoint loads into an
L2BN model and back. No class is named ``BatchNorm*d``: timm's norm-act mapping goes by class name
and would swap such a layer for plain batch norm.

Hazards of that base class, documented here because they fail silently:

* ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` (and Lightning's ``sync_batchnorm=True``) turns
  every ``_BatchNorm`` into a plain ``SyncBatchNorm``, dropping the l2 step. Use
  :meth:`l2bn_lit.SyncL2BN.convert_sync_batchnorm` or :class:`l2bn_lit.L2BNLayerSync`.
* ``torch.nn.utils.fusion.fuse_conv_bn_eval`` folds whatever running statistics it is handed into
  the convolution and so silently drops the per-sample l2 step (the folded model is wrong). The
  matchers of ``torch.ao.quantization.fuse_modules`` and of torch.fx fusion compare exact types and
  leave L2BN alone; do not fold L2BN into a convolution by hand either.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.fx._symbolic_trace import is_fx_symbolic_tracing
from torch.nn.modules.batchnorm import _BatchNorm

from .functional import l2_batch_norm

__all__ = ["L2BN1d", "L2BN2d", "L2BN3d", "L2BNAct2d"]


def _check_rank(input: Tensor, ranks: tuple[int, ...] | None) -> None:
    if ranks is None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")
    elif input.dim() not in ranks:
        expected = " or ".join(f"{r}D" for r in ranks)
        raise ValueError(f"expected {expected} input (got {input.dim()}D input)")


@torch.fx.wrap
def _l2bn_module_forward(
    input: Tensor,
    ranks: tuple[int, ...] | None,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    training: bool,
    momentum: float,
    eps: float,
    l2_eps: float,
    rescale: bool,
) -> Tensor:
    """Rank check plus :func:`l2_batch_norm`, one leaf call for torch.fx symbolic tracing (used by
    torchvision's feature extraction and fx fusion), which cannot trace data-dependent checks."""
    _check_rank(input, ranks)
    return l2_batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps, l2_eps, rescale)


class _L2BNBase(_BatchNorm):
    """Shared L2BN module logic; subclasses fix the accepted input rank."""

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        l2_eps: float = 1e-12,
        rescale: bool = False,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype)
        if l2_eps <= 0:
            raise ValueError(f"l2_eps must be positive, got {l2_eps}")
        self.l2_eps = l2_eps
        self.rescale = rescale

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, l2_eps={self.l2_eps}, rescale={self.rescale}"

    def _batch_norm_arguments(self) -> tuple[Tensor | None, Tensor | None, bool, float]:
        """Running buffers to pass, whether to use batch statistics, and the averaging factor,
        decided exactly as ``torch.nn.modules.batchnorm._BatchNorm.forward`` decides them."""
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        pass_buffers = not self.training or self.track_running_stats
        running_mean = self.running_mean if pass_buffers else None
        running_var = self.running_var if pass_buffers else None
        return running_mean, running_var, use_batch_stats, factor

    #: accepted input ranks (None: any rank >= 2)
    _ranks: tuple[int, ...] | None = None

    def _check_input_dim(self, input: Tensor) -> None:
        _check_rank(input, self._ranks)

    def forward(self, input: Tensor) -> Tensor:
        if not is_fx_symbolic_tracing():  # check before num_batches_tracked moves, as BatchNorm does
            self._check_input_dim(input)
        running_mean, running_var, use_batch_stats, factor = self._batch_norm_arguments()
        return _l2bn_module_forward(
            input,
            self._ranks,
            running_mean,
            running_var,
            self.weight,
            self.bias,
            use_batch_stats,
            factor,
            self.eps,
            self.l2_eps,
            self.rescale,
        )


_LAYER_DOC = r"""L2BN over a {rank}D input {shape}: each sample's whole feature vector (every dimension but
the batch one) is l2-normalized, then batch normalization is applied per channel, as described in
"L2BN: Enhancing Batch Normalization by Equalizing the L2 Norms of Features" (Wang et al.,
arXiv 2207.02625).

.. math::

    \hat{{x}}_n = k \frac{{x_n}}{{\max(\lVert x_n \rVert_2, \epsilon_{{l2}})}}, \qquad
    y = \frac{{\hat{{x}} - \mathrm{{E}}[\hat{{x}}]}}{{\sqrt{{\mathrm{{Var}}[\hat{{x}}] + \epsilon}}}} * \gamma + \beta

with :math:`k = \sqrt{{D}}` (``rescale=True``, :math:`D` the number of values per sample) or 1. The
mean and biased variance of :math:`\hat{{x}}` are taken per channel over {over}; :math:`\gamma`
and :math:`\beta` are learnable ``(C,)`` vectors (``affine``). Running estimates (the unbiased
variance) are kept as :class:`torch.nn.{bn}` keeps them and used in eval mode; the per-sample norm is
computed in eval mode too, so the layer cannot be folded into a neighbouring convolution. Adds no
parameters or buffers to {bn}'s: its state dict is {bn}'s. Statistics accumulate in float32 (float64 for
float64 inputs).

Args:
    num_features: :math:`C`, the number of channels.
    eps: added to the variance for numerical stability. Default: 1e-5
    momentum: weight of the batch statistics in the running estimates; ``None``: a cumulative
        average. Default: 0.1
    affine: learnable :math:`\gamma` and :math:`\beta`. Default: ``True``
    track_running_stats: keep running estimates (else batch statistics in eval mode too). Default: ``True``
    l2_eps: lower bound on each sample's l2 norm (as :func:`torch.nn.functional.normalize`'s ``eps``).
        Default: 1e-12
    rescale: multiply the l2-normalized sample by :math:`\sqrt{{D}}` (unit RMS instead of unit norm),
        which keeps ``eps`` from dominating the variance of large feature maps. Default: ``False``
    device, dtype: of the parameters and buffers.

Shape:
    - Input: {shape}
    - Output: {shape} (same shape, dtype and memory format as the input)

Examples::

    >>> import torch
    >>> from l2bn_lit import {name}
    >>> m = {name}({channels})
    >>> x = torch.randn({example})
    >>> y = m(x)
    >>> y.shape
    torch.Size([{example}])
    >>> bool(y.mean(dim={dims}).abs().max() < 1e-5)  # every channel centred over the batch
    True
    >>> m.eval()(x).shape  # running statistics, per-sample norm still applied
    torch.Size([{example}])
"""


class L2BN1d(_L2BNBase):
    __doc__ = _LAYER_DOC.format(
        rank="2D or 3",
        shape=":math:`(N, C)` or :math:`(N, C, L)`",
        over=":math:`(N)` or :math:`(N, L)`",
        bn="BatchNorm1d",
        name="L2BN1d",
        channels=4,
        example="8, 4, 5",
        dims="(0, 2)",
    )

    _ranks = (2, 3)


class L2BN2d(_L2BNBase):
    __doc__ = _LAYER_DOC.format(
        rank="4",
        shape=":math:`(N, C, H, W)`",
        over=":math:`(N, H, W)`",
        bn="BatchNorm2d",
        name="L2BN2d",
        channels=16,
        example="8, 16, 4, 4",
        dims="(0, 2, 3)",
    )

    _ranks = (4,)


class L2BN3d(_L2BNBase):
    __doc__ = _LAYER_DOC.format(
        rank="5",
        shape=":math:`(N, C, D, H, W)`",
        over=":math:`(N, D, H, W)`",
        bn="BatchNorm3d",
        name="L2BN3d",
        channels=3,
        example="4, 3, 2, 3, 3",
        dims="(0, 2, 3, 4)",
    )

    _ranks = (5,)


class L2BNAct2d(L2BN2d):
    """L2BN2d, then ``drop``, then ``act``: the L2BN counterpart of timm's ``BatchNormAct2d`` (norm +
    dropout/drop-block + activation in one module, as EfficientNet, MobileNetV3 and RegNet are built).

    The state-dict keys are ``BatchNormAct2d``'s (the norm's own, plus whatever ``drop`` and ``act``
    hold), so timm checkpoints load into the converted model and back. Input and output
    ``(N, C, H, W)``.

    Args:
        num_features, **kwargs: :class:`L2BN2d`'s arguments.
        act: the activation module (default: identity).
        drop: the module between norm and activation (default: identity).

    Shape:
        - Input: :math:`(N, C, H, W)`
        - Output: same shape

    Examples::

        >>> import torch
        >>> from l2bn_lit import L2BNAct2d
        >>> m = L2BNAct2d(16, act=torch.nn.ReLU())
        >>> y = m(torch.randn(8, 16, 4, 4))
        >>> bool((y >= 0).all())
        True
    """

    def __init__(
        self, num_features: int, act: torch.nn.Module | None = None, drop: torch.nn.Module | None = None, **kwargs: Any
    ) -> None:
        super().__init__(num_features, **kwargs)
        self.drop = drop if drop is not None else torch.nn.Identity()
        self.act = act if act is not None else torch.nn.Identity()

    def forward(self, input: Tensor) -> Tensor:
        return self.act(self.drop(super().forward(input)))
