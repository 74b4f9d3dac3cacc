"""Shared datamodule logic: a seeded validation split carved from the training set, and loaders.

The test split is never used for model selection: validation always comes from training data.
"""

from __future__ import annotations

import os
from abc import abstractmethod

import pytorch_lightning as pl
import torch
from pytorch_lightning.accelerators import CPUAccelerator, CUDAAccelerator
from torch.utils.data import DataLoader, Dataset, Sampler, Subset


class EpochShuffleSampler(Sampler[int]):
    """Shuffles with a permutation that depends only on ``(seed, epoch)``.

    Lightning calls ``set_epoch`` at each epoch, so a run resumed from a checkpoint sees the
    same order as an uninterrupted one (a plain ``shuffle=True`` draws from the global RNG, whose
    state is not checkpointed).
    """

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())


def _on_gpu(trainer: pl.Trainer | None) -> bool:
    return trainer is not None and isinstance(trainer.accelerator, CUDAAccelerator)


def default_num_workers(trainer: pl.Trainer | None) -> int:
    """DataLoader workers when none are given: 0 on the CPU (workers would compete with the training
    threads for the same cores), else the process's share of the usable cores (cores / devices on
    this node, at most 8, leaving one for the training process)."""
    if trainer is None or trainer.accelerator is None or isinstance(trainer.accelerator, CPUAccelerator):
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(8, cores // max(1, trainer.num_devices) - 1))


class ClassificationDataModule(pl.LightningDataModule):
    """Base for the image (and audio) classification datamodules.

    Subclasses implement :meth:`build_datasets` and set ``num_classes``, ``input_shape`` (one
    sample's shape) and ``class_names`` in ``__init__``: the CLI links them to the model before
    anything is loaded.

    Args:
        root: folder holding (or receiving) the data.
        batch_size: samples per batch (per process under DDP).
        val_fraction: share of the training set held out for validation (seeded). 0 trains on the
            whole training set without validation (the final-run protocol): model selection then
            has nothing to choose from, and the last epoch's weights are the ones tested.
        split_seed: seed of that split; the same seed gives the same split on every machine.
        num_workers: DataLoader worker processes; ``None`` (the default) picks
            :func:`default_num_workers`: 0 when training on the CPU, else a share of the cores.
        pin_memory: page-locked batches for faster host-to-GPU copies; ``None``: on when the
            trainer's accelerator is a GPU.
        persistent_workers: keep the workers between epochs.
    """

    num_classes: int
    input_shape: list[int]
    class_names: list[str]
    #: samples per second of audio input; None for images
    sample_rate: int | None = None

    def __init__(
        self,
        root: str,
        batch_size: int = 128,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        num_workers: int | None = None,
        pin_memory: bool | None = None,
        persistent_workers: bool = False,
    ) -> None:
        super().__init__()
        if not 0 <= val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1) (0: no validation set), got {val_fraction}")
        self.root = root
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    @abstractmethod
    def build_datasets(self) -> tuple[Dataset, Dataset, Dataset]:
        """Returns ``(train, train_with_eval_transforms, test)``; the first two index the same samples."""

    def split_indices(self, size: int) -> tuple[list[int], list[int]]:
        """``(train, validation)`` indices into the training set: a seeded random split."""
        order = torch.randperm(size, generator=torch.Generator().manual_seed(self.split_seed)).tolist()
        n_val = self.held_out_count(size)
        return order[n_val:], order[:n_val]

    def held_out_count(self, size: int) -> int:
        """How many of ``size`` items (samples, or recording locations) validation takes: at least
        one, none when ``val_fraction`` is 0."""
        return max(1, round(self.val_fraction * size)) if self.val_fraction > 0 else 0

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        train, train_eval, test = self.build_datasets()
        train_idx, val_idx = self.split_indices(len(train))
        self.train_set = Subset(train, train_idx)
        self.val_set = Subset(train_eval, val_idx) if val_idx else None
        self.test_set = test

    def loader_workers(self) -> int:
        """``num_workers``, or :func:`default_num_workers` for this datamodule's trainer."""
        return default_num_workers(self.trainer) if self.num_workers is None else self.num_workers

    def _loader(self, dataset: Dataset | None, shuffle: bool, **overrides) -> DataLoader:
        """The split's DataLoader; ``overrides`` replace its keyword arguments."""
        assert dataset is not None, "call setup() first"
        sampler = None
        if shuffle:
            # Under DDP Lightning wraps this sampler and gives rank r every world_size-th index of its
            # order, so every rank must draw the same order: rank 0's seed, also when no seed was set.
            seed = torch.initial_seed()
            if self.trainer is not None and self.trainer.world_size > 1:
                seed = self.trainer.strategy.broadcast(seed)
            sampler = EpochShuffleSampler(len(dataset), seed)
        num_workers = overrides.pop("num_workers", None)
        num_workers = self.loader_workers() if num_workers is None else num_workers
        pin_memory = _on_gpu(self.trainer) if self.pin_memory is None else self.pin_memory
        options = {
            "batch_size": self.batch_size,
            "sampler": sampler,
            "num_workers": num_workers,
            "pin_memory": pin_memory,
            "persistent_workers": self.persistent_workers and num_workers > 0,
            "drop_last": shuffle and len(dataset) > self.batch_size,
        }
        return DataLoader(dataset, **{**options, **overrides})

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        """The validation loader; ``[]`` (Lightning then skips validation) when ``val_fraction`` is 0."""
        return [] if self.val_fraction == 0 else self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)
