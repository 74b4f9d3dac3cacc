"""DCASE acoustic scene classification data: TAU Urban Acoustic Scenes clips as fixed-length waveforms.

Every listed file is checked when the data is set up (soundfile headers only): a missing or
unreadable file is an error naming it; clips shorter than ``duration`` are an error, or, with
``short_clips="pad"``, zero-padded with a warning that counts them; other sample rates are
resampled (torchaudio) and stereo is mixed down, each with a warning that counts them; a scene label
outside the data set's label set (``class_names``) is an error naming it. A
truncated WAV (its header promises more frames than the file holds) is an error naming it, also
with ``short_clips="pad"``: libsndfile would silently read it as a short clip.

With ``feature_cache``, the loaders give log-mels from a memory-mapped cache computed once with the
model's front-end (:mod:`datamodules.feature_cache`) instead of decoding every clip every epoch.
"""

from __future__ import annotations

import copy
import logging
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import soundfile as sf
import torch
import torchaudio.functional as AF
from torch import Tensor, nn
from torch.utils.data import Dataset

from models.frontend import LogMel, fit_length, read_audio

from .base import ClassificationDataModule
from .cache_files import keyed_cache_path
from .feature_cache import CachedFeatureDataset, build_feature_cache
from .tau_check import TAU_SCENES, truncated_wavs
from .tau_download import dataset_specs
from .tau_download import download as download_dataset
from .tau_layout import device_of, read_file_list, write_synthetic_tau

__all__ = ["AudioClipDataset", "TAUScenesDataModule", "load_impulse_responses"]

log = logging.getLogger(__name__)


def _meta_labels(meta: Path) -> list[str]:
    """The scene labels of a ``meta.csv``, sorted (none when it has no ``scene_label`` column)."""
    table = pd.read_csv(meta, sep="\t", dtype=str, keep_default_na=False)
    table.columns = [c.strip() for c in table.columns]
    return sorted(set(table["scene_label"].str.strip()) - {""}) if "scene_label" in table else []


def _given_label_set(class_names: list[str] | None, root: str | Path) -> tuple[list[str], str] | None:
    """The label set the options or the data set's ``meta.csv`` give, with where it comes from;
    ``None`` when neither gives one."""
    if class_names is not None:
        if len(set(class_names)) != len(class_names):
            raise ValueError(f"class_names has duplicates: {class_names}")
        return list(class_names), "the class_names option"
    meta = Path(root) / "meta.csv"
    labels = _meta_labels(meta) if meta.is_file() else []
    return (labels, f"the labels of {meta}") if labels else None


class AudioClipDataset(Dataset):
    """``(waveform, label)`` for each row of ``table``: waveform ``(samples,)`` float32 mono at
    ``sample_rate``, cropped (randomly when ``random_crop``) or zero-padded to ``samples``;
    label ``-1`` for unlabeled lists."""

    def __init__(
        self,
        root: Path,
        table: pd.DataFrame,
        labels: list[int] | None,
        sample_rate: int,
        samples: int,
        random_crop: bool,
    ) -> None:
        self.root = root
        self.files = table["filename"].tolist()
        self.devices = table["device"].tolist() if "device" in table else [device_of(f) for f in self.files]
        self.labels = labels if labels is not None else [-1] * len(self.files)
        self.sample_rate = sample_rate
        self.samples = samples
        self.random_crop = random_crop

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> Tensor:
        return read_audio(self.root / self.files[index], self.sample_rate)

    #: training only: ``(impulse responses, probability, devices)`` of the device IR augmentation
    impulse_responses: tuple[list[Tensor], float, frozenset[str]] | None = None

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        wave = self.load(index)
        if self.impulse_responses is not None:
            wave = self._convolve_device_ir(index, wave)
        start = (
            int(torch.randint(0, len(wave) - self.samples + 1, ()))
            if self.random_crop and len(wave) > self.samples
            else 0
        )
        return fit_length(wave, self.samples, start), self.labels[index]

    def _convolve_device_ir(self, index: int, wave: Tensor) -> Tensor:
        """With probability ``p``, for clips of the chosen devices: ``wave`` convolved with a random
        impulse response, cut to its length (a recording of the same scene through another device)."""
        responses, p, devices = self.impulse_responses
        if self.devices[index] not in devices or float(torch.rand(())) >= p:
            return wave
        response = responses[int(torch.randint(len(responses), ()))]
        return AF.fftconvolve(wave, response)[: len(wave)]


def load_impulse_responses(folder: str | Path, sample_rate: int) -> list[Tensor]:
    """Every ``*.wav`` under ``folder`` (e.g. the MicIRP microphone impulse responses), mono at
    ``sample_rate``, scaled to unit peak.

    Raises:
        FileNotFoundError: the folder holds no wav file.
    """
    paths = sorted(Path(folder).rglob("*.wav"))
    if not paths:
        raise FileNotFoundError(f"device_irs={folder}: no .wav impulse responses found there")
    responses = []
    for path in paths:
        response = read_audio(path, sample_rate)
        responses.append(response / response.abs().max().clamp_min(1e-12))
    return responses


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
        val_list: validate on this list's clips instead, training on the whole training list: the DCASE
            2024/2025 baselines' protocol is ``split_setup/test.csv`` (the test split) with
            ``--trainer.check_val_every_n_epoch 10 --test_ckpt last`` (configs/dcase_baseline_protocol.yaml).
            Choosing a checkpoint on the test split overstates its accuracy: test the last one.
        short_clips: ``error`` (default) or ``pad`` (zero-pad, with a warning counting them).
        synthesize_if_missing: write the small synthetic data set into ``root`` if it holds no
            ``meta.csv`` (the embedded default); a root holding a real data set is used as it is.
        download: data set name(s) of ``l2bn data list`` (e.g. ``[tau2022-mobile-dev,
            dcase2024-task1-splits]``) fetched into ``root`` when ``meta.csv`` or ``train_list`` is
            missing there, by the same code as that command (resumed, checksummed). Under DDP every
            process waits on one lock, so one downloads and the others find the data complete.
        device_irs: a folder of device impulse responses (``*.wav``, e.g. MicIRP; a project option, in
            neither DCASE 2024/2025 baseline): training clips of ``device_ir_devices`` are convolved with a random one
            with probability ``device_ir_p`` (off when None; not with ``feature_cache``).
        device_ir_p, device_ir_devices: that probability and those devices (default 0.4, ``[a]``).
        devices: train (and validate) on these recording devices' clips only, e.g. ``[a]`` to fine-tune
            a device-specific model (DCASE 2025); the test and predict lists are not filtered.
        class_names: the data set's scene labels, in class-index order. ``None``: the labels of
            ``meta.csv`` (the whole development set), sorted; without a ``meta.csv``, the training
            list's. A label outside this set in any list is an error naming it.
        feature_cache: a folder for the offline log-mel cache (None: decode and extract on the fly).
            The cache holds the clips as evaluation sees them: training then has no random crop
            (the same thing when ``duration`` is the clips' length, as in DCASE 2020).
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
        val_list: str | None = None,
        short_clips: Literal["error", "pad"] = "error",
        synthesize_if_missing: bool = False,
        download: str | list[str] | None = None,
        device_irs: str | None = None,
        device_ir_p: float = 0.4,
        device_ir_devices: list[str] | None = None,
        devices: list[str] | None = None,
        class_names: list[str] | None = None,
        feature_cache: str | None = None,
        batch_size: int = 32,
        **kwargs,
    ) -> None:
        super().__init__(root=root, batch_size=batch_size, **kwargs)
        if download is not None and synthesize_if_missing:
            raise ValueError("download and synthesize_if_missing both fill an empty root: choose one")
        if download is not None and not ((Path(root) / "meta.csv").is_file() and (Path(root) / train_list).is_file()):
            specs = dataset_specs()
            for name in [download] if isinstance(download, str) else download:
                if name not in specs:
                    raise ValueError(f"download: unknown data set {name!r}; choose from {', '.join(specs)}")
                download_dataset(specs[name], root)
        if synthesize_if_missing and not (Path(root) / "meta.csv").is_file():
            log.info("no meta.csv under %s: writing the synthetic acoustic-scene data set there", root)
            write_synthetic_tau(root, sample_rate=sample_rate, duration=duration)
        self.sample_rate, self.duration = sample_rate, duration
        self.samples = round(sample_rate * duration)
        self.train_list, self.test_list, self.predict_list = train_list, test_list, predict_list
        self.val_by, self.short_clips, self.val_list = val_by, short_clips, val_list
        self.feature_cache = feature_cache
        if device_irs is not None and feature_cache is not None:
            raise ValueError(
                "device_irs augments waveforms while training; the feature cache holds fixed log-mels: set "
                "one of them to null"
            )
        self.device_irs, self.device_ir_p = device_irs, device_ir_p
        self.device_ir_devices = frozenset(device_ir_devices or ["a"])
        self._lists: dict[str, AudioClipDataset] = {}
        self.train_table = read_file_list(root, train_list, need_labels=True)
        self.class_names, self._label_source = self._label_set(class_names)
        self._labels(self.train_table, train_list)  # refuses a label outside the set before anything is built
        untrained = sorted(set(self.class_names) - set(self.train_table["scene_label"]))
        if untrained:
            warnings.warn(
                f"{Path(root) / train_list} has no clip of the scene label(s) {untrained} ({self._label_source})",
                stacklevel=2,
            )
        self.devices = devices
        if devices is not None:
            unknown = sorted(set(devices) - set(self.train_table["device"]))
            if unknown:
                raise ValueError(
                    f"devices={devices}: {unknown} not in {Path(root) / train_list} (its devices: "
                    f"{sorted(set(self.train_table['device']))})"
                )
            self.train_table = self.train_table[self.train_table["device"].isin(devices)].reset_index(drop=True)
        self.num_classes = len(self.class_names)
        self.input_shape = [self.samples]

    @classmethod
    def settings_without_data(cls, options: dict) -> dict:
        """The input shape follows from ``sample_rate`` and ``duration``; the label set is
        ``class_names``, else ``meta.csv``'s when the root has one, else the ten TAU scenes."""
        rate, duration = options.get("sample_rate", 44100), options.get("duration", 10.0)
        known = _given_label_set(options.get("class_names"), options.get("root", ""))
        names = known[0] if known is not None else sorted(TAU_SCENES)
        return {
            "num_classes": len(names),
            "class_names": names,
            "input_shape": [round(rate * duration)],
            "sample_rate": rate,
        }

    def _label_set(self, class_names: list[str] | None) -> tuple[list[str], str]:
        """The scene labels (class-index order) and where they come from (see ``class_names``)."""
        known = _given_label_set(class_names, self.root)
        if known is not None:
            return known
        return sorted(self.train_table["scene_label"].unique()), f"the labels of {Path(self.root) / self.train_list}"

    def _labels(self, table: pd.DataFrame, list_path: str) -> list[int]:
        index = {name: i for i, name in enumerate(self.class_names)}
        unknown = sorted(set(table["scene_label"]) - set(index))
        if unknown:
            example = table.loc[table["scene_label"] == unknown[0], "filename"].iloc[0]
            raise ValueError(
                f"{Path(self.root) / list_path} has scene labels the model does not know (not in "
                f"{self._label_source}): "
                f"{unknown}, e.g. {example}; correct the list, or give the label set with --data.init_args.class_names"
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
        truncated = truncated_wavs(root, table["filename"].tolist())
        if truncated:
            name, declared, present = truncated[0]
            raise ValueError(
                f"{len(truncated)} file(s) listed in {root / list_path} are truncated (the header promises more "
                f"frames than the file holds), e.g. {root / name}: {declared} frames declared, {present} present; "
                "download or extract them again (l2bn data check lists them all)"
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
            warnings.warn(
                f"{len(short)} clip(s) in {root / list_path} are shorter than {self.duration} s and zero-padded",
                stacklevel=2,
            )
        if resampled:
            warnings.warn(
                f"{resampled} file(s) in {root / list_path} are not at {self.sample_rate} Hz and are resampled",
                stacklevel=2,
            )
        if stereo:
            warnings.warn(
                f"{stereo} file(s) in {root / list_path} have several channels and are mixed down to mono", stacklevel=2
            )

    def split_indices(self, size: int) -> tuple[list[int], list[int]]:
        if self.val_list is not None:  # validation comes from its own list: train on every clip
            return list(range(size)), []
        if self.val_by == "random" or "identifier" not in self.train_table:
            return super().split_indices(size)
        locations = sorted(self.train_table["identifier"].unique())
        order = torch.randperm(len(locations), generator=torch.Generator().manual_seed(self.split_seed)).tolist()
        held_out = {locations[i] for i in order[: self.held_out_count(len(locations))]}
        is_val = self.train_table["identifier"].isin(held_out).to_numpy()
        return np.flatnonzero(~is_val).tolist(), np.flatnonzero(is_val).tolist()

    def _dataset(self, table: pd.DataFrame, list_path: str, labeled: bool) -> AudioClipDataset:
        self.check_files(table, list_path)
        labels = self._labels(table, list_path) if labeled else None
        return AudioClipDataset(Path(self.root), table, labels, self.sample_rate, self.samples, random_crop=False)

    def _list(self, list_path: str) -> AudioClipDataset:
        """The clips of a file list (the training list, the test list or the predict list), read and
        header-checked once per list (``prepare_data`` and ``setup`` both need them)."""
        if list_path not in self._lists:
            if list_path == self.train_list:
                self._lists[list_path] = self._dataset(self.train_table, list_path, labeled=True)
            else:
                labeled = list_path != self.predict_list
                table = read_file_list(self.root, list_path, need_labels=labeled)
                self._lists[list_path] = self._dataset(table, list_path, labeled)
        return self._lists[list_path]

    def _frontend(self) -> tuple[nn.Module, dict[str, Any]]:
        """The attached model's log-mel front-end and the settings that key the cache."""
        model = self.trainer.lightning_module if self.trainer is not None else None
        if model is None or not isinstance(getattr(model, "frontend", None), LogMel):
            raise RuntimeError(
                "data option feature_cache needs a model with a log-mel front-end (l2bn_lit.lit.AudioSceneClassifier) "
                "attached through a Trainer; set feature_cache to null to extract on the fly"
            )
        settings = model.frontend.options  # the front-end's own description: the cache's key
        if settings["sample_rate"] != self.sample_rate:
            raise ValueError(
                f"the model's front-end expects {settings['sample_rate']} Hz, the data is at {self.sample_rate} Hz"
            )
        return model.frontend, {**settings, "samples": self.samples}

    def _cache_path(self, clips: AudioClipDataset, list_path: str) -> Path:
        _, settings = self._frontend()
        return keyed_cache_path(self.feature_cache, list_path, settings, clips.root, clips.files)

    def _cached(self, clips: AudioClipDataset, list_path: str) -> Dataset:
        if self.feature_cache is None:
            return clips
        return CachedFeatureDataset(self._cache_path(clips, list_path), clips.files, clips.labels, clips.devices)

    def prepare_data(self) -> None:
        """Builds the missing feature-cache files of the lists this trainer stage reads (rank 0)."""
        if self.feature_cache is None:
            return
        stage = self.trainer.state.fn if self.trainer is not None else None
        validation = self.train_list if self.val_list is None else self.val_list
        lists = {"fit": sorted({self.train_list, validation}), "validate": [validation], "test": [self.test_list]}
        for list_path in lists.get(stage, [self.predict_list]):
            clips = self._list(list_path)
            path = self._cache_path(clips, list_path)
            if not path.is_file():
                frontend, settings = self._frontend()
                build_feature_cache(path, clips, frontend, settings, self.batch_size, self.loader_workers())

    def build_datasets(self) -> tuple[Dataset, Dataset, Dataset]:
        train, test = self._list(self.train_list), self._list(self.test_list)
        if self.feature_cache is not None:
            train = self._cached(train, self.train_list)
            return train, train, self._cached(test, self.test_list)
        random_crop = copy.copy(train)
        random_crop.random_crop = True
        if self.device_irs is not None:
            responses = load_impulse_responses(self.device_irs, self.sample_rate)
            random_crop.impulse_responses = (responses, self.device_ir_p, self.device_ir_devices)
        return random_crop, train, test

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        if self.val_list is not None and self.val_set is None:
            self.val_set = self._cached(self._list(self.val_list), self.val_list)

    def val_dataloader(self):
        if self.val_list is not None:
            return self._loader(self.val_set, shuffle=False)
        return super().val_dataloader()

    def predict_dataloader(self):
        self.predict_set = self._cached(self._list(self.predict_list), self.predict_list)
        return self._loader(self.predict_set, shuffle=False)
