"""Networks by name: :func:`build_model` and :data:`ARCHITECTURES`."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from l2bn_lit.nn import convert_norm, get_norm_layer
from l2bn_lit.serialization import load_checkpoint

from .cifar_resnet import PreActResNet18, resnet20, resnet32, resnet44, resnet56, resnet110
from .cifar_zoo import mobilenet_v2, shufflenet_v2, vgg11, vgg16
from .small_cnn import SmallCNN

__all__ = ["ARCHITECTURES", "build_model", "load_matching"]

log = logging.getLogger(__name__)

ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "small_cnn": SmallCNN,
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet44": resnet44,
    "resnet56": resnet56,
    "resnet110": resnet110,
    "preact_resnet18": PreActResNet18,
    "vgg11": vgg11,
    "vgg16": vgg16,
    "mobilenet_v2": mobilenet_v2,
}
TORCHVISION_PREFIX = "torchvision."
TIMM_PREFIX = "timm."


def build_model(
    arch: str,
    num_classes: int,
    in_channels: int = 3,
    norm: str = "l2bn",
    norm_options: dict[str, Any] | None = None,
    pretrained: str | None = None,
    arch_options: dict[str, Any] | None = None,
) -> nn.Module:
    """Builds ``arch`` with ``norm`` (``bn``, ``l2bn``, ``gn``, ``ln``, ``none``) and its options.

    ``arch_options``: keyword arguments of the architecture's constructor (this project's archs,
    e.g. ``{"shortcut": "A"}`` for the CIFAR ResNets; timm's ``create_model`` keywords for ``timm.<name>``).

    ``pretrained`` (``torchvision.<name>`` and ``timm.<name>`` only): ``"default"`` for the library's
    own default weights (downloaded by the library), or the path of a saved state dict of the
    library's model. Weights are loaded before the norms are converted; parameters whose shape differs
    (the classifier, for another ``num_classes``) keep their fresh initialization.

    torchvision models (``torchvision.<name>``) take 3-channel input and ``norm`` ``bn`` or ``l2bn``;
    so does ``shufflenet_v2``, which hard-codes BatchNorm2d. timm models (``timm.<name>``, timm
    installed) take ``bn`` or ``l2bn`` (their BatchNormAct2d layers become L2BNAct2d).
    """
    options = dict(norm_options or {})
    arch_options = dict(arch_options or {})
    if pretrained is not None and not arch.startswith((TORCHVISION_PREFIX, TIMM_PREFIX)):
        raise ValueError(f"pretrained weights are for torchvision.<name> and timm.<name> archs, not arch={arch!r}")
    if arch.startswith(TORCHVISION_PREFIX):
        name = arch[len(TORCHVISION_PREFIX) :]
        if name not in torchvision.models.list_models(module=torchvision.models):
            raise ValueError(f"unknown torchvision classification model {name!r} in arch={arch!r}")
        if norm not in ("bn", "l2bn"):
            raise ValueError(f"torchvision models take norm 'bn' or 'l2bn' (through convert_norm), got {norm!r}")
        if in_channels != 3:
            raise ValueError(f"torchvision models take 3-channel input, the data has {in_channels}")
        model = _construct(
            arch, torchvision.models.get_model, arch_options, name, weights=None, num_classes=num_classes
        )
        if pretrained == "default":
            load_matching(model, torchvision.models.get_model(name, weights="DEFAULT").state_dict(), arch)
        elif pretrained is not None:
            load_matching(model, _read_state_dict(pretrained), arch)
        return convert_norm(model, norm, **options) if norm == "l2bn" else model
    if arch.startswith(TIMM_PREFIX):
        return _timm_model(arch[len(TIMM_PREFIX) :], num_classes, in_channels, norm, options, pretrained, arch_options)
    if arch == "shufflenet_v2":
        return _construct(arch, shufflenet_v2, arch_options, num_classes, norm, options, in_channels)
    if arch not in ARCHITECTURES:
        known = ", ".join([*ARCHITECTURES, "shufflenet_v2", f"{TORCHVISION_PREFIX}<name>", f"{TIMM_PREFIX}<name>"])
        raise ValueError(f"unknown arch {arch!r}; choose one of {known}")
    norm_layer = get_norm_layer(norm, 2, **options)
    return _construct(
        arch, ARCHITECTURES[arch], arch_options, num_classes=num_classes, norm_layer=norm_layer, in_channels=in_channels
    )


def _construct(
    arch: str, constructor: Callable[..., nn.Module], arch_options: dict[str, Any], *args: Any, **kwargs: Any
) -> nn.Module:
    """``constructor(*args, **kwargs, **arch_options)``; an option the constructor does not take is
    an error naming ``arch_options``."""
    accepted = inspect.signature(constructor).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    unknown = sorted(set(arch_options) - set(accepted)) if not takes_any else []
    if unknown:
        raise ValueError(
            f"arch={arch!r} does not take arch_options {unknown}; it takes {sorted(set(accepted) - set(kwargs))}"
        )
    return constructor(*args, **kwargs, **arch_options)


def _timm_model(
    name: str,
    num_classes: int,
    in_channels: int,
    norm: str,
    options: dict[str, Any],
    pretrained: str | None,
    arch_options: dict[str, Any],
) -> nn.Module:
    try:
        import timm
    except ImportError as error:
        raise ImportError(f"arch=timm.{name} needs timm: pip install -e '.[timm]'") from error
    if not timm.is_model(name):
        raise ValueError(f"unknown timm model {name!r} in arch=timm.{name} (timm.list_models() lists them)")
    if norm not in ("bn", "l2bn"):
        raise ValueError(f"timm models take norm 'bn' or 'l2bn' (through convert_norm), got {norm!r}")
    model = timm.create_model(
        name, pretrained=pretrained == "default", num_classes=num_classes, in_chans=in_channels, **arch_options
    )
    if pretrained not in (None, "default"):
        load_matching(model, _read_state_dict(pretrained), f"timm.{name}")
    return convert_norm(model, norm, **options) if norm == "l2bn" else model


def _read_state_dict(path: str) -> dict[str, torch.Tensor]:
    if not Path(path).is_file():
        raise FileNotFoundError(f"pretrained={path!r}: no such file; give 'default' or the path of a saved state dict")
    state = load_checkpoint(path, required=())
    return state.get("state_dict", state) if isinstance(state, dict) else state


def load_matching(model: nn.Module, state: dict[str, torch.Tensor], arch: str) -> list[str]:
    """Loads every entry of ``state`` whose name and shape match ``model``'s; returns the names it
    left out because their shape differs (the classifier for another class count).

    Raises:
        ValueError: if names are missing or unknown: the weights belong to another architecture.
    """
    own = model.state_dict()
    missing, unknown = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unknown:
        raise ValueError(
            f"the pretrained weights do not fit arch={arch!r}: {len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(unknown)} unknown (e.g. {unknown[:3]}); pass weights saved from that architecture"
        )
    reshaped = sorted(k for k, v in state.items() if v.shape != own[k].shape)
    model.load_state_dict({k: v for k, v in state.items() if k not in reshaped}, strict=False)
    if reshaped:
        log.info(
            "pretrained weights for %s: kept the fresh initialization of %s (other shape)", arch, ", ".join(reshaped)
        )
    return reshaped
