"""Image classification networks by name, each built with the norm chosen by name.

``build_model("resnet20", num_classes=10, norm="l2bn")`` builds a CIFAR network with L2BN;
``build_model("torchvision.resnet50", num_classes=1000, norm="l2bn")`` builds torchvision's model
and converts its batch norms with :func:`l2bn_lit.convert_norm`.
"""

from .audio import AUDIO_ARCHITECTURES, build_audio_model
from .audio_classifier import AudioSceneClassifier
from .classifier import ImageClassifier
from .registry import ARCHITECTURES, build_model

__all__ = ["ARCHITECTURES", "AUDIO_ARCHITECTURES", "AudioSceneClassifier", "ImageClassifier", "build_audio_model", "build_model"]
