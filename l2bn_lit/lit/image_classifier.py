"""The image-classification LightningModule: a network from :func:`models.build_model` on the
shared :class:`l2bn_lit.lit.classification_module.ClassificationModule`.

The walk of ``norm`` from a config to the layers: ``model.init_args.norm`` -> :class:`ImageClassifier`
(here) -> :func:`models.registry.build_model` (``get_norm_layer(norm, **norm_options)`` of
:mod:`l2bn_lit.nn.norms`) -> the architecture's blocks (e.g. :mod:`models.cifar_resnet`).
"""

from __future__ import annotations

import itertools
from typing import Any

from torch.optim.swa_utils import update_bn

from models.registry import build_model

from .classification_module import ClassificationModule

__all__ = ["ImageClassifier"]


class ImageClassifier(ClassificationModule):
    """Image classifier. Input ``(N, C, H, W)`` with ``input_shape = [C, H, W]``; output
    ``(N, num_classes)`` logits.

    Args:
        num_classes, input_shape: linked from the datamodule by the CLI.
        arch: a name from :data:`models.ARCHITECTURES`, ``torchvision.<model name>`` or ``timm.<model name>``.
        norm: normalization by name (``bn``, ``l2bn``, ``gn``, ``ln``, ``none``; :data:`l2bn_lit.NORM_KINDS`).
        norm_options: the norm's own options, e.g. ``{"rescale": true}`` for ``l2bn``.
        pretrained: for ``torchvision.``/``timm.`` archs: ``default`` (the library's weights) or the path
            of a saved state dict (see :func:`models.build_model`).
        arch_options: keyword arguments of the architecture's constructor, e.g. ``{"shortcut": "A"}``
            for the CIFAR ResNets (zero-padded identity shortcuts; the default ``"B"`` projects).
        recalibration_batches: with pretrained weights and ``norm: l2bn``, the running statistics are
            re-estimated on this many training batches before the first training step or evaluation.
            Pretrained BN statistics describe BN's input; L2BN normalizes the l2-normalized input, whose
            scale is about ``1/sqrt(D)`` of it, so the old statistics would be off by that factor.
            ``torch.optim.swa_utils.update_bn`` does the re-estimation (a cumulative average).
        **kwargs: :class:`~l2bn_lit.lit.classification_module.ClassificationModule`'s options (init, optimizer,
            schedule, ...).
    """

    architecture_keys = (*ClassificationModule.architecture_keys, "arch", "arch_options", "norm", "norm_options")

    def __init__(
        self,
        num_classes: int,
        input_shape: list[int] | None = None,
        arch: str = "resnet20",
        norm: str = "l2bn",
        norm_options: dict[str, Any] | None = None,
        pretrained: str | None = None,
        arch_options: dict[str, Any] | None = None,
        recalibration_batches: int = 100,
        **kwargs,
    ) -> None:
        if kwargs.get("sample_rate") is not None:
            raise ValueError("ImageClassifier takes image data; the datamodule provides audio (sample_rate is set)")
        if pretrained is not None and kwargs.get("init", "arch") != "arch":
            raise ValueError(
                f"init={kwargs['init']!r} would overwrite the pretrained weights: use init: arch with pretrained"
            )
        in_channels = input_shape[0] if input_shape else 3
        network = build_model(arch, num_classes, in_channels, norm, norm_options, pretrained, arch_options)
        super().__init__(network, num_classes=num_classes, input_shape=input_shape, **kwargs)
        self.norm_stats_ready = not (pretrained is not None and norm == "l2bn")

    def recalibrate_norms(self) -> None:
        """Re-estimates the running statistics of pretrained norms converted to L2BN (once)."""
        if self.norm_stats_ready:
            return
        datamodule = self.trainer.datamodule
        if datamodule is None:
            raise ValueError(
                "pretrained weights with norm l2bn need a datamodule: its training batches re-estimate the "
                "norms' statistics"
            )
        if datamodule.train_set is None:
            datamodule.setup("fit")
        batches = itertools.islice(datamodule.train_dataloader(), self.hparams.recalibration_batches)
        update_bn((self._apply_batch_transfer_handler(batch)[0] for batch in batches), self.network)
        self.norm_stats_ready = True

    def on_fit_start(self) -> None:
        self.recalibrate_norms()

    def on_test_start(self) -> None:
        self.recalibrate_norms()

    def on_validation_start(self) -> None:
        self.recalibrate_norms()

    def on_predict_start(self) -> None:
        self.recalibrate_norms()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["norm_stats_ready"] = self.norm_stats_ready

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.norm_stats_ready = checkpoint.get(
            "norm_stats_ready", True
        )  # a trained checkpoint's statistics are its own
