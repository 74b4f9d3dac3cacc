"""Where a network's classification layer is: the layer whose input is the penultimate feature."""

from __future__ import annotations

from torch import nn

__all__ = ["classifier_of"]


def classifier_of(network: nn.Module) -> nn.Module:
    """The classification layer, whose input is the penultimate feature: ``get_classifier()`` (timm's
    API, and this project's audio models), else ``fc`` (torchvision ResNets, the CIFAR models), else the
    last ``nn.Linear`` of ``classifier`` (torchvision VGG, MobileNet, EfficientNet)."""
    if hasattr(network, "get_classifier"):
        return network.get_classifier()
    if isinstance(getattr(network, "fc", None), nn.Module):
        return network.fc
    classifier = getattr(network, "classifier", None)
    if isinstance(classifier, nn.Module):
        linears = [m for m in classifier.modules() if isinstance(m, nn.Linear)]
        return linears[-1] if linears else classifier
    raise ValueError(
        f"cannot tell the classifier layer of {type(network).__name__}: give PenultimateGeometry's "
        "'layer' option the name of the module whose input is the penultimate feature (e.g. network.head.3)"
    )
