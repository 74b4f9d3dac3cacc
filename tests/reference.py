"""Independent reference for L2BN: F.normalize over each sample, then F.batch_norm (float64)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def reference_l2bn(
    x: Tensor,
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
    xh = F.normalize(x.flatten(1), dim=1, eps=l2_eps).view_as(x)
    if rescale:
        xh = xh * math.sqrt(x[0].numel())
    return F.batch_norm(xh, running_mean, running_var, weight, bias, training, momentum, eps)


class ReferenceL2BN(torch.nn.BatchNorm1d):
    """Module form of the reference: BatchNorm's own buffer logic on top of F.normalize.

    BatchNorm1d's rank check is bypassed so one class serves every rank.
    """

    def __init__(self, *args, l2_eps: float = 1e-12, rescale: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.l2_eps = l2_eps
        self.rescale = rescale

    def _check_input_dim(self, input: Tensor) -> None:
        return None

    def forward(self, x: Tensor) -> Tensor:
        xh = F.normalize(x.flatten(1), dim=1, eps=self.l2_eps).view_as(x)
        if self.rescale:
            xh = xh * math.sqrt(x[0].numel())
        return super().forward(xh)
