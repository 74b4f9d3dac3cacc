"""DCASE acoustic scene classification data: TAU Urban Acoustic Scenes clips as fixed-length waveforms.

Every listed file is checked when the data is set up (soundfile headers only): a missing or
unreadable file is an error naming it; clips shorter than ``duration`` are an error, or, with
``short_clips="pad"``, zero-padded with a warning that counts them; other sample rates are
resampled (torchaudio) and stereo is mixed down, each said once in the log with a count. A
truncated wav reads as a short clip (libsndfile clamps its length to the data present).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import soundfile as sf
import torch
import torchaudio.functional as AF
from torch import Tensor
from torch.utils.data import Dataset

from .base import ClassificationDataModule
from .tau_layout import read_file_list, write_synthetic_tau

__all__ = ["AudioClipDataset", "TAUScenesDataModule"]

log = logging.getLogger(__name__)


class AudioClipDataset(Dataset):
    """``(waveform, label)`` for each row of ``table``: waveform ``(samples,)`` float32 mono at
    ``sample_rate``, cropped (randomly when ``random_crop``) or zero-padded to ``samples``;
    label ``-1`` for unlabeled lists."""

    def __init__(
        self, root: Path, table: pd.DataFrame, labels: list[int] | None, sample_rate: int, samples: int, random_crop: bool
    ) -> None:
        self.root = root
        self.files = table["filename"].tolist()
        self.labels = labels if labels is not None else [-1] * len(self.files)
        self.sample_rate = sample_rate
        self.samples = samples
        self.random_crop = random_crop

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> Tensor:
        path = self.root / self.files[index]
        try:
            data, rate = sf.read(str(path), dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError, OSError) as error:
            raise RuntimeError(f"cannot read audio file {path}: {error}") from error
        wave = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1)))
        if rate != self.sample_rate:
            wave = AF.resample(wave, rate, self.sample_rate)
        return wave

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        wave = self.load(index)
        if len(wave) < self.samples:
            wave = torch.nn.functional.pad(wave, (0, self.samples - len(wave)))
        elif len(wave) > self.samples:
            start = int(torch.randint(0, len(wave) - self.samples + 1, ())) if self.random_crop else 0
            wave = wave[start : start + self.samples]
        return wave, self.labels[index]


class TAUScenesDataModule(ClassificationDataModule):
    """TAU Urban Acoustic Scenes (DCASE 2019-2025 layouts) as fixed-length mono waveforms.

    Args:
        root: the folder holding ``meta.csv`` and ``audio/``.
        sample_rate: rate the clips are resampled to (Hz).
        duration: clip length in seconds (longer clips are cropped, randomly while training).
        train_list, test_list, predict_list: file lists relative to ``root`` (for the 1-second
            2022-2025 releases, e.g. ``split25.csv`` subsets as ``train_list``).
        val_by: ``location`` holds out whole recording locations (``identifier``) for validation,
            so no location is in both; ``random`` splits clips.
        short_clips: ``error`` (default) or ``pad`` (zero-pad, with a warning counting them).
        synthesize_if_missing: write the small synthetic data set into ``root`` if it holds no
            ``meta.csv`` (the embedded default); a root holding a real data set is used as it is.
        **kwargs: :class:`~datamodules.base.ClassificationDataModule` options.
    """

    def __init__(
        self,
        root: str,
        sample_rate: int = 44100,
        duration: float = 10.0,
        train_list: str = "evaluation_setup/fold1_train.csv",
        test_list: str = "evaluation_setup/fold1_evaluate.csv",
        predict_list: str = "evaluation_setup/fold1_test.csv",
        val_by: Literal["location", "random"] = "location",
        short_clips: Literal["error", "pad"] = "error",
        synthesize_if_missing: bool = False,
        batch_size: int = 32,
        **kwargs,
    ) -> None:
        super().__init__(root=root, batch_size=batch_size, **kwargs)
        if synthesize_if_missing and not (Path(root) / "meta.csv").is_file():
            log.info("no meta.csv under %s: writing the synthetic acoustic-scene data set there", root)
            write_synthetic_tau(root, sample_rate=sample_rate, duration=duration)
        self.sample_rate, self.duration = sample_rate, duration
        self.samples = round(sample_rate * duration)
        self.train_list, self.test_list, self.predict_list = train_list, test_list, predict_list
        self.val_by, self.short_clips = val_by, short_clips
        self.train_table = read_file_list(root, train_list, need_labels=True)
        self.class_names = sorted(self.train_table["scene_label"].unique())
        self.num_classes = len(self.class_names)
        self.input_shape = [self.samples]

    def _labels(self, table: pd.DataFrame, list_path: str) -> list[int]:
        index = {name: i for i, name in enumerate(self.class_names)}
        unknown = sorted(set(table["scene_label"]) - set(index))
        if unknown:
            raise ValueError(
                f"{Path(self.root) / list_path} has scene labels the model does not know (not in {self.train_list}): {unknown}"
            )
        return [index[label] for label in table["scene_label"]]

    def check_files(self, table: pd.DataFrame, list_path: str) -> None:
        """Header check of every listed file (see the module docstring)."""
        root = Path(self.root)
        missing = [f for f in table["filename"] if not (root / f).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} file(s) listed in {root / list_path} do not exist, e.g. {root / missing[0]}"
            )
        short, resampled, stereo = [], 0, 0
        for filename in table["filename"]:
            try:
                info = sf.info(str(root / filename))
            except (sf.LibsndfileError, RuntimeError) as error:
                raise RuntimeError(f"cannot read audio file {root / filename}: {error}") from error
            resampled += info.samplerate != self.sample_rate
            stereo += info.channels > 1
            if info.frames / info.samplerate < self.duration - 0.5 / self.sample_rate:
                short.append((filename, info.frames / info.samplerate))
        if short and self.short_clips == "error":
            name, seconds = short[0]
            raise ValueError(
                f"{len(short)} clip(s) in {root / list_path} are shorter than duration={self.duration} s, "
                f"e.g. {root / name} ({seconds:.3f} s); set --data.init_args.short_clips pad to zero-pad them"
            )
        if short:
            warnings.warn(f"{len(short)} clip(s) in {root / list_path} are shorter than {self.duration} s and zero-padded", stacklevel=2)
        if resampled:
            log.info("%d file(s) in %s are not at %d Hz and are resampled", resampled, root / list_path, self.sample_rate)
        if stereo:
            log.info("%d file(s) in %s have several channels and are mixed down to mono", stereo, root / list_path)

    def split_indices(self, size: int) -> tuple[list[int], list[int]]:
        if self.val_by == "random" or "identifier" not in self.train_table:
            return super().split_indices(size)
        locations = sorted(self.train_table["identifier"].unique())
        order = torch.randperm(len(locations), generator=torch.Generator().manual_seed(self.split_seed)).tolist()
        held_out = {locations[i] for i in order[: max(1, round(self.val_fraction * len(locations)))]}
        is_val = self.train_table["identifier"].isin(held_out).to_numpy()
        return np.flatnonzero(~is_val).tolist(), np.flatnonzero(is_val).tolist()

    def _dataset(self, table: pd.DataFrame, list_path: str, labeled: bool, random_crop: bool) -> AudioClipDataset:
        self.check_files(table, list_path)
        labels = self._labels(table, list_path) if labeled else None
        return AudioClipDataset(Path(self.root), table, labels, self.sample_rate, self.samples, random_crop)

    def build_datasets(self) -> tuple[Dataset, Dataset, Dataset]:
        train = self._dataset(self.train_table, self.train_list, labeled=True, random_crop=True)
        train_eval = AudioClipDataset(Path(self.root), self.train_table, train.labels, self.sample_rate, self.samples, False)
        test_table = read_file_list(self.root, self.test_list, need_labels=True)
        return train, train_eval, self._dataset(test_table, self.test_list, labeled=True, random_crop=False)

    def predict_dataloader(self):
        table = read_file_list(self.root, self.predict_list, need_labels=False)
        self.predict_set = self._dataset(table, self.predict_list, labeled=False, random_crop=False)
        return self._loader(self.predict_set, shuffle=False)
