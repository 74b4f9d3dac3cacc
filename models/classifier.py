"""The image-classification LightningModule: a network from :func:`models.build_model` on the
shared :class:`l2bn_lit.module.ClassificationModule`."""

from __future__ import annotations

from torch import nn

from l2bn_lit.module import ClassificationModule

from .registry import build_model

__all__ = ["ImageClassifier"]


class ImageClassifier(ClassificationModule):
    """Image classifier. Input ``(N, C, H, W)`` with ``input_shape = [C, H, W]``; output
    ``(N, num_classes)`` logits.

    Args:
        num_classes, input_shape: linked from the datamodule by the CLI.
        arch: a name from :data:`models.ARCHITECTURES` or ``torchvision.<model name>``.
        **kwargs: :class:`~l2bn_lit.module.ClassificationModule`'s options (norm, optimizer, ...).
    """

    architecture_keys = (*ClassificationModule.architecture_keys, "arch")

    def __init__(
        self, num_classes: int, input_shape: list[int] | None = None, arch: str = "resnet20", **kwargs
    ) -> None:
        if kwargs.get("sample_rate") is not None:
            raise ValueError("ImageClassifier takes image data; the datamodule provides audio (sample_rate is set)")
        super().__init__(num_classes=num_classes, input_shape=input_shape, **kwargs)

    def build_network(self) -> nn.Module:
        hp = self.hparams
        in_channels = hp.input_shape[0] if hp.input_shape else 3
        return build_model(hp.arch, hp.num_classes, in_channels, hp.norm, hp.norm_options)
