"""The Lightning layer's LightningModules: the image and audio classifiers on the shared
:class:`~l2bn_lit.lit.classification_module.ClassificationModule`. Configs name them
``l2bn_lit.lit.ImageClassifier`` and ``l2bn_lit.lit.AudioSceneClassifier`` (``models.ImageClassifier``
and ``models.AudioSceneClassifier``, their former names, still resolve)."""

from .audio_classifier import AudioSceneClassifier
from .image_classifier import ImageClassifier

__all__ = ["AudioSceneClassifier", "ImageClassifier"]
