"""DCASE 2025 Task 1 submission module written by ``l2bn package`` (l2bn-lit): the challenge's
inference API for a general model and device-specific models.

    load_model(model_file_path=None) -> DeviceSystem
    load_inputs(file_paths, device_ids, model) -> [log-mel (1, 1, n_mels, frames)] in input order
    get_model_for_device(model, device_id) -> the network that device's clips go to
    predict(file_paths, device_ids, model_file_path=None, use_cuda=True) -> ([logits (n_classes,)], class_order)

Each file is read as float32, its channels averaged, resampled to the models' rate, zero-padded or
cropped to the trained clip length, and turned into a float32 log-mel by the training front-end. The
networks hold their parameters at the precision stored with them (16 bit: ``model.half()``, as the
DCASE baselines ship) and get the log-mels cast to it. A device without its own network (one unseen
in training, or ``"unknown"``) goes to the general network. The checkpoint ``ckpts/<this module>.pt``
holds plain data only (loaded with ``weights_only=True``).

Generated file: change the project (l2bn-lit's ``l2bn package``) rather than this copy.
"""

from __future__ import annotations

from collections import defaultdict
from importlib import resources
from pathlib import Path

import torch
from torch import Tensor, nn

from .network.models.audio import build_audio_model
from .network.models.frontend import LogMel, fit_length, read_audio

__all__ = ["DeviceSystem", "get_model_for_device", "load_inputs", "load_model", "predict"]

#: the ``format`` entry of the checkpoints ``l2bn package`` writes
FORMAT = "l2bn-lit dcase2025 submission v1"
DTYPES = {"32": torch.float32, "16": torch.float16, "bf16": torch.bfloat16}
GENERAL = "general"


class DeviceSystem(nn.Module):
    """The front-end, the general network and the device-specific networks of one submission.

    Args:
        spec: the checkpoint's content: ``class_order``, ``precision``, ``frontend`` (the
            :class:`LogMel` options, ``sample_rate`` and the clip length ``samples``) and ``models``
            (``general`` and one entry per device: ``arch``, ``norm``, ``norm_options``,
            ``arch_options``, ``state_dict``).
    """

    def __init__(self, spec: dict) -> None:
        super().__init__()
        frontend = dict(spec["frontend"])
        self.samples = frontend.pop("samples")
        self.sample_rate = frontend["sample_rate"]
        self.frontend = LogMel(**frontend)
        self.class_order = list(spec["class_order"])
        self.dtype = DTYPES[spec["precision"]]
        self.networks = nn.ModuleDict({name: self._network(entry) for name, entry in spec["models"].items()})

    def _network(self, entry: dict) -> nn.Module:
        network = build_audio_model(
            entry["arch"], len(self.class_order), entry["norm"], entry["norm_options"], entry["arch_options"]
        )
        network.load_state_dict(entry["state_dict"])
        return network.to(self.dtype).eval()

    def route(self, device_id: str) -> str:
        """The name of the network for ``device_id``'s clips: its own, else ``general``."""
        return device_id if device_id in self.networks and device_id != GENERAL else GENERAL

    def forward(self, features: Tensor, device_ids: list[str]) -> Tensor:
        """Log-mels ``(N, 1, n_mels, frames)`` of clips from ``device_ids`` -> float32 logits ``(N, n_classes)``."""
        logits = torch.empty(len(features), len(self.class_order), device=features.device)
        groups: dict[str, list[int]] = defaultdict(list)
        for index, device_id in enumerate(device_ids):
            groups[self.route(device_id)].append(index)
        for name, indices in groups.items():
            logits[indices] = self.networks[name](features[indices].to(self.dtype)).float()
        return logits


def _checkpoint() -> Path:
    """This module's packaged checkpoint, ``ckpts/<module name>.pt``."""
    return Path(str(resources.files(__package__) / "ckpts" / f"{__name__.rpartition('.')[2]}.pt"))


def load_model(model_file_path: str | None = None) -> DeviceSystem:
    """The submission's system in eval mode, from ``model_file_path`` (a checkpoint written by
    ``l2bn package``) or, by default, the packaged one."""
    path = Path(model_file_path) if model_file_path is not None else _checkpoint()
    spec = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(spec, dict) or spec.get("format") != FORMAT:
        raise ValueError(
            f"{path}: not a checkpoint of an l2bn-lit DCASE 2025 submission (format {FORMAT!r}); "
            "write one with l2bn package"
        )
    return DeviceSystem(spec).eval()


@torch.no_grad()
def load_inputs(
    file_paths: list[str], device_ids: list[str], model: DeviceSystem, batch_size: int = 64
) -> list[Tensor]:
    """Log-mels ``(1, 1, n_mels, frames)`` (float32, on the CPU) of the files, in their order."""
    if len(file_paths) != len(device_ids):
        raise ValueError(f"{len(file_paths)} file paths but {len(device_ids)} device ids")
    device = next(model.parameters()).device
    inputs: list[Tensor] = []
    for start in range(0, len(file_paths), batch_size):
        waves = [
            fit_length(read_audio(path, model.sample_rate), model.samples)
            for path in file_paths[start : start + batch_size]
        ]
        inputs.extend(model.frontend(torch.stack(waves).to(device)).cpu().split(1))
    return inputs


def get_model_for_device(model: DeviceSystem, device_id: str) -> nn.Module:
    """The network that ``device_id``'s clips go to: log-mels ``(N, 1, n_mels, frames)`` at its
    precision -> logits ``(N, n_classes)``."""
    return model.networks[model.route(device_id)]


@torch.no_grad()
def predict(
    file_paths: list[str],
    device_ids: list[str],
    model_file_path: str | None = None,
    use_cuda: bool = True,
    batch_size: int = 64,
) -> tuple[list[Tensor], list[str]]:
    """Logits ``(n_classes,)`` per file, in the order of ``file_paths``, and the class names in the
    order of the logits."""
    device = torch.device("cuda" if use_cuda and torch.cuda.is_available() else "cpu")
    model = load_model(model_file_path).to(device)
    inputs = load_inputs(file_paths, device_ids, model, batch_size)
    logits: list[Tensor] = []
    for start in range(0, len(inputs), batch_size):
        features = torch.cat(inputs[start : start + batch_size]).to(device)
        logits.extend(model(features, device_ids[start : start + batch_size]).cpu().unbind())
    return logits, list(model.class_order)
