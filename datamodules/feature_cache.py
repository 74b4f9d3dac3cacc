"""An offline log-mel cache for CPU-bound machines: one memory-mapped ``.npy`` array per file list.

The model owns the front-end (its settings are saved in its checkpoints), so the cache is computed
with the model's own front-end module, on the fixed-length clips the evaluation loaders give
(deterministic crop or padding; no random crop while training). The file name carries a hash of the
front-end settings, the clip length and every listed file's name, size and modification time: a
change to any of them selects another file, which is built on first use. Old files are kept (delete
the folder to reclaim space). A file is written under a temporary name and renamed when complete,
so an interrupted build is never read.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from .tau_layout import device_of

__all__ = ["CachedFeatureDataset", "build_feature_cache"]

log = logging.getLogger(__name__)


@torch.no_grad()
def build_feature_cache(
    path: Path, clips: Dataset, frontend: nn.Module, settings: Mapping[str, Any], batch_size: int, num_workers: int = 0
) -> None:
    """Writes ``frontend(waveform)`` of every clip of ``clips`` (``(samples,)``, label) to ``path``:
    float32 ``(len(clips), 1, n_mels, frames)``, with ``settings`` beside it in ``<path>.json``."""
    frontend = frontend.float().eval()
    # a private generator: building must not advance the global RNG, or a run that builds the cache
    # would train differently from the same run reading it
    loader = DataLoader(clips, batch_size=batch_size, num_workers=num_workers, generator=torch.Generator())
    partial = path.with_name(path.stem + ".partial.npy")
    path.parent.mkdir(parents=True, exist_ok=True)
    log.info("building the log-mel cache %s (%d clips)", path, len(clips))
    array = None
    start = 0
    for waves, _ in loader:
        features = frontend(waves).numpy()
        if array is None:
            array = np.lib.format.open_memmap(
                partial, mode="w+", dtype=np.float32, shape=(len(clips), *features.shape[1:])
            )
        array[start : start + len(features)] = features
        start += len(features)
    if array is None:
        raise ValueError(f"no clips to cache for {path}")
    array.flush()
    del array
    os.replace(partial, path)
    path.with_suffix(".json").write_text(json.dumps({"clips": len(clips), **settings}, indent=2, default=str) + "\n")


class CachedFeatureDataset(Dataset):
    """``(log-mel (1, n_mels, frames), label)`` rows of a cache file, which opens on first access
    (each DataLoader worker maps it itself). ``files``, ``labels`` and ``devices`` are those of the file list."""

    def __init__(self, path: Path, files: list[str], labels: list[int], devices: list[str] | None = None) -> None:
        self.path, self.files, self.labels = path, files, labels
        self.devices = devices if devices is not None else [device_of(f) for f in files]
        self._array: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.files)

    def _open(self) -> np.ndarray:
        if not self.path.is_file():
            raise FileNotFoundError(
                f"no feature cache {self.path}: it is built by the datamodule's prepare_data() (Trainer runs it), "
                "or by prepare_feature_cache(frontend, settings)"
            )
        array = np.load(self.path, mmap_mode="r")
        if len(array) != len(self.files):
            raise ValueError(
                f"feature cache {self.path} holds {len(array)} clips, the list {len(self.files)}: delete the file"
            )
        return array

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        if self._array is None:
            self._array = self._open()
        return torch.from_numpy(np.array(self._array[index])), self.labels[index]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_array": None}  # workers map the file again instead of receiving a copy
