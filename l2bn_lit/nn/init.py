"""Convolution weight initialization by name (the ``init`` option of the models).

from l2bn_lit.nn.init import initialize
initialize(model, "torch")  # PyTorch's default layer initialization for every convolution
"""

from __future__ import annotations

from torch import nn
from torch.nn.modules.conv import _ConvNd

__all__ = ["INIT_SCHEMES", "initialize"]

#: the schemes :func:`initialize` knows
INIT_SCHEMES = ("arch", "torch", "kaiming_fan_out", "kaiming_fan_in")


def initialize(module: nn.Module, scheme: str) -> nn.Module:
    """Re-initializes the weights (and biases) of every convolution in ``module``, in place.

    Schemes:
        ``arch``: leave the architecture's own initialization (a no-op).
        ``torch``: PyTorch's default, each convolution's ``reset_parameters()``: weights
            ``U(-b, b)`` with ``b = 1/sqrt(fan_in)`` (kaiming_uniform with ``a = sqrt(5)``).
        ``kaiming_fan_out``: He et al.'s normal initialization for ReLU networks, ``N(0, 2/fan_out)``
            (torchvision's ResNets); biases zero.
        ``kaiming_fan_in``: ``N(0, 2/fan_in)``; biases zero.

    Norm and linear layers keep their initialization. Returns ``module``.
    """
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"init={scheme!r}: choose one of {', '.join(INIT_SCHEMES)}")
    if scheme == "arch":
        return module
    for conv in module.modules():
        if not isinstance(conv, _ConvNd):
            continue
        if scheme == "torch":
            conv.reset_parameters()
            continue
        nn.init.kaiming_normal_(conv.weight, mode=scheme.removeprefix("kaiming_"), nonlinearity="relu")
        if conv.bias is not None:
            nn.init.zeros_(conv.bias)
    return module
