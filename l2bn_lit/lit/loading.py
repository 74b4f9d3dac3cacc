"""A trained LightningModule back from its checkpoint, safely: built from the checkpoint's own settings
(so a BN checkpoint is never evaluated as L2BN), its class as the CLI saved it, weights only."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch
import yaml

from l2bn_lit.serialization import SAFE_GLOBALS, load_checkpoint

from .classification_module import CheckpointMismatchError, ClassificationModule, architecture_mismatches
from .cli import LINKED

__all__ = ["load_module"]


def load_module(path: Path, data_settings: dict[str, Any], default: type[ClassificationModule]) -> ClassificationModule:
    """The checkpoint's model, built from the checkpoint's own settings; its class as the CLI saved it
    (the hyperparameters' ``_class_path``, or the run's ``config.yaml``), else ``default``."""
    saved = load_checkpoint(path)["hyper_parameters"]
    mismatches = architecture_mismatches(
        data_settings, saved, tuple(k for k in LINKED if data_settings.get(k) is not None)
    )
    if mismatches:
        mismatches = mismatches.replace(": model=", ": data=")
        raise CheckpointMismatchError(
            f"{path} does not fit the data: {mismatches}; evaluate it with the data it was trained on"
        )
    class_path = saved.get("_class_path")  # LightningCLI saves it with the hyperparameters
    config = path.parent.parent / "config.yaml"
    if class_path is None and config.is_file():
        class_path = yaml.safe_load(config.read_text())["model"]["class_path"]
    cls = default
    if class_path is not None:
        module_name, _, name = class_path.rpartition(".")
        cls = getattr(importlib.import_module(module_name), name)
    with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
        return cls.load_from_checkpoint(path, map_location="cpu", weights_only=True).eval()
