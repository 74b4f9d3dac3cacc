"""The network layer: networks by name, each built with the norm chosen by name (torch, torchvision,
torchaudio and timm only; no Lightning).

``build_model("resnet20", num_classes=10, norm="l2bn")`` builds a CIFAR network with L2BN;
``build_model("torchvision.resnet50", num_classes=1000, norm="l2bn")`` builds torchvision's model
and converts its batch norms with :func:`l2bn_lit.convert_norm`; ``build_audio_model`` the log-mel
CNNs. The LightningModules that train them are in :mod:`l2bn_lit.lit`.
"""

from typing import Any

from .audio import AUDIO_ARCHITECTURES, build_audio_model
from .registry import ARCHITECTURES, build_model

__all__ = ["ARCHITECTURES", "AUDIO_ARCHITECTURES", "build_audio_model", "build_model"]

#: the LightningModules' former home: configs and checkpoints written before they moved name them so
_MOVED = {"ImageClassifier": "l2bn_lit.lit.image_classifier", "AudioSceneClassifier": "l2bn_lit.lit.audio_classifier"}


def __getattr__(name: str) -> Any:
    # ``models.ImageClassifier`` (old configs, the class path saved in old checkpoints) still resolves,
    # importing Lightning only then
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module 'models' has no attribute {name!r}")
