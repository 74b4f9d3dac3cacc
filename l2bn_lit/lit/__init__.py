"""The Lightning layer's LightningModules: the image and audio classifiers on the shared
:class:`~l2bn_lit.lit.base.ClassificationModule`. Configs name them ``l2bn_lit.lit.ImageClassifier`` and
``l2bn_lit.lit.AudioSceneClassifier`` (``models.ImageClassifier`` and ``models.AudioSceneClassifier``,
their former names, still resolve)."""

from .audio import AudioSceneClassifier
from .image import ImageClassifier

__all__ = ["AudioSceneClassifier", "ImageClassifier"]
