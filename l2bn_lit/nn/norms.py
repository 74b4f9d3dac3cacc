"""Normalization layers by name, and in-place conversion of whole models between BN and L2BN.

The registry follows timm's norm factories: models take a ``norm`` name and its options, and call
:func:`get_norm_layer` for a constructor ``num_features -> nn.Module``::

    norm_layer = get_norm_layer("l2bn", dim=2, rescale=True)
    block = nn.Sequential(nn.Conv2d(3, 16, 3), norm_layer(16), nn.ReLU())

:func:`convert_norm` swaps the batch-norm layers of any existing model (torchvision, timm, your
own) for L2BN and back, keeping their parameters and running statistics.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm, _NormBase

from .layers import L2BN1d, L2BN2d, L2BN3d, L2BNAct2d, _L2BNBase
from .sync import SyncL2BN, replace_modules, transfer_norm_state

__all__ = ["NORM_KINDS", "NORM_TYPES", "get_norm_layer", "create_norm", "convert_norm"]

#: the module types that count as normalization layers (the norm weight decay's and the feature-norm
#: monitor's): BN, L2BN and their Sync variants, InstanceNorm, GroupNorm and LayerNorm
NORM_TYPES: tuple[type[nn.Module], ...] = (_NormBase, nn.GroupNorm, nn.LayerNorm)

_BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_L2BN = {1: L2BN1d, 2: L2BN2d, 3: L2BN3d}
_BN_OPTIONS = {"eps", "momentum", "affine", "track_running_stats", "device", "dtype"}
_L2BN_OPTIONS = _BN_OPTIONS | {"l2_eps", "rescale"}


def _group_norm(
    num_features: int, num_groups: int = 32, eps: float = 1e-5, affine: bool = True, **kwargs
) -> nn.GroupNorm:
    groups = min(num_groups, num_features)
    while num_features % groups:
        groups -= 1
    return nn.GroupNorm(groups, num_features, eps=eps, affine=affine, **kwargs)


def _layer_norm(num_features: int, eps: float = 1e-5, affine: bool = True, **kwargs) -> nn.GroupNorm:
    """Layer norm over each sample's ``(C, *)`` features (GroupNorm with one group): works for
    any rank, unlike ``nn.LayerNorm`` which needs the trailing shape."""
    return nn.GroupNorm(1, num_features, eps=eps, affine=affine, **kwargs)


def _identity(num_features: int) -> nn.Identity:
    return nn.Identity()


# name -> (constructor by rank, accepted options)
_REGISTRY: dict[str, tuple[Callable[[int], Callable[..., nn.Module]], set[str]]] = {
    "bn": (lambda dim: _BN[dim], _BN_OPTIONS),
    "l2bn": (lambda dim: _L2BN[dim], _L2BN_OPTIONS),
    "gn": (lambda dim: _group_norm, {"num_groups", "eps", "affine", "device", "dtype"}),
    "ln": (lambda dim: _layer_norm, {"eps", "affine", "device", "dtype"}),
    "none": (lambda dim: _identity, set()),
}
NORM_KINDS: tuple[str, ...] = tuple(_REGISTRY)


def get_norm_layer(kind: str, dim: int = 2, **options) -> Callable[[int], nn.Module]:
    """Returns a constructor ``num_features -> nn.Module`` for the norm ``kind``.

    Args:
        kind: one of :data:`NORM_KINDS` (``"bn"``, ``"l2bn"``, ``"gn"``, ``"ln"``, ``"none"``).
        dim: spatial rank of the inputs: 1 for ``(N, C)``/``(N, C, L)``, 2 for ``(N, C, H, W)``,
            3 for ``(N, C, D, H, W)``.
        options: the layer's own options (for example ``rescale=True`` for ``"l2bn"``,
            ``num_groups=16`` for ``"gn"``).
    """
    if kind not in _REGISTRY:
        raise ValueError(f"unknown norm {kind!r}; choose one of {', '.join(NORM_KINDS)}")
    if dim not in (1, 2, 3):
        raise ValueError(f"norm dim must be 1, 2 or 3, got {dim}")
    constructor, accepted = _REGISTRY[kind]
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ValueError(
            f"norm {kind!r} does not take option(s) {', '.join(unknown)}; "
            f"it accepts: {', '.join(sorted(accepted)) or 'no options'}"
        )
    return partial(constructor(dim), **options)


def create_norm(kind: str, num_features: int, dim: int = 2, **options) -> nn.Module:
    """Builds one norm layer by name; see :func:`get_norm_layer`."""
    return get_norm_layer(kind, dim, **options)(num_features)


def _rank_of(module: _BatchNorm) -> int | None:
    """Input rank of an exact BatchNorm1d/2d/3d or L2BN1d/2d/3d (subclasses excluded)."""
    for rank, (bn, l2bn) in enumerate(zip(_BN.values(), _L2BN.values()), start=1):
        if type(module) in (bn, l2bn):
            return rank
    return None


def convert_norm(model: nn.Module, kind: str, **options) -> nn.Module:
    """Swaps every batch-norm layer of ``model`` for ``kind`` ("l2bn" or "bn"), in place.

    BatchNorm1d/2d/3d become L2BN1d/2d/3d (and back), SyncBatchNorm becomes SyncL2BN (and back), and
    timm's ``BatchNormAct2d`` (norm + drop + activation, in EfficientNet, MobileNetV3, RegNet, ...)
    becomes :class:`L2BNAct2d` with the same ``drop`` and ``act`` modules (and back; timm is needed
    only for that way back).
    Parameters, running statistics, ``num_batches_tracked``, ``eps``, ``momentum``, ``affine``,
    ``track_running_stats``, device, dtype and train/eval mode are kept; the parameters are the same
    ``nn.Parameter`` objects. ``options`` set L2BN's own options (``l2_eps``, ``rescale``).

    Reaches models that hard-code ``nn.BatchNorm2d`` (torchvision's shufflenet_v2, vgg*_bn).

    Args:
        model: any module (a torchvision or timm model, or a single norm layer).
        kind: ``"l2bn"`` (batch norms -> L2BN) or ``"bn"`` (L2BN -> batch norms).
        **options: L2BN's own options for the converted layers (``l2_eps``, ``rescale``).

    Returns:
        The converted model (the same object unless ``model`` itself is a norm layer).

    Examples::

        >>> import torchvision
        >>> from l2bn_lit import convert_norm
        >>> model = convert_norm(torchvision.models.resnet18(), "l2bn")
        >>> type(model.bn1).__name__, type(model.layer1[0].bn2).__name__
        ('L2BN2d', 'L2BN2d')
        >>> type(convert_norm(model, "bn").bn1).__name__  # and back, the same parameters
        'BatchNorm2d'
    """
    if kind not in ("l2bn", "bn"):
        raise ValueError(f"convert_norm converts between 'bn' and 'l2bn', got {kind!r}")
    accepted = _L2BN_OPTIONS if kind == "l2bn" else set()
    unknown = sorted(set(options) - accepted - {"device", "dtype"})
    if unknown:
        raise ValueError(f"convert_norm(kind={kind!r}) does not take option(s) {', '.join(unknown)}")

    def swap(module: nn.Module) -> nn.Module | None:
        if not isinstance(module, _BatchNorm):
            return None
        is_l2bn = isinstance(module, (_L2BNBase, SyncL2BN))
        if is_l2bn == (kind == "l2bn") and not options:
            return None
        if type(module) in (nn.SyncBatchNorm, SyncL2BN):
            target = SyncL2BN if kind == "l2bn" else nn.SyncBatchNorm
            extra = {"process_group": module.process_group}
        elif type(module) is L2BNAct2d or _is_timm_batch_norm_act(module):
            target = L2BNAct2d if kind == "l2bn" else _timm_batch_norm_act()
            extra = {"act": module.act, "drop": module.drop} if kind == "l2bn" else {"apply_act": False}
        else:
            rank = _rank_of(module)
            if rank is None:
                raise TypeError(
                    f"convert_norm cannot convert {type(module).__qualname__}: only BatchNorm1d/2d/3d, "
                    "SyncBatchNorm and the L2BN classes themselves are converted, since a subclass may "
                    "add behaviour that the swap would silently drop (Lightning's _BatchNormXd has no "
                    "fixed rank); timm's BatchNormAct2d is converted, its subclasses are not; replace such layers "
                    "explicitly, e.g. with get_norm_layer('l2bn')"
                )
            target = (_L2BN if kind == "l2bn" else _BN)[rank]
            extra = {}
        if kind == "l2bn":
            keep = {"l2_eps": module.l2_eps, "rescale": module.rescale} if is_l2bn else {}
            extra.update(keep | options)
        converted = transfer_norm_state(module, target, **extra)
        if kind == "bn" and type(module) is L2BNAct2d:
            converted.act, converted.drop = module.act, module.drop
        return converted

    return replace_modules(model, swap)


def _is_timm_batch_norm_act(module: nn.Module) -> bool:
    """timm's ``BatchNormAct2d`` itself (not its subclasses), recognized without importing timm."""
    cls = type(module)
    return cls.__name__ == "BatchNormAct2d" and cls.__module__.startswith("timm.")


def _timm_batch_norm_act() -> type[_BatchNorm]:
    try:
        from timm.layers import BatchNormAct2d
    except ImportError as error:
        raise ImportError("converting L2BNAct2d back to BatchNormAct2d needs timm: pip install timm") from error
    return BatchNormAct2d
