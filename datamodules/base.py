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

from l2bn_lit.lit.resume import collect_rng_states, restore_rng_states


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


class ResumableDataLoader(DataLoader):
    """A DataLoader whose next iteration starts after ``skip_batches`` batches (then 0 again): the
    training loader of a run resumed from a checkpoint written mid-epoch (a preemption).

    The skipped batches are drawn and dropped, so the rest of the epoch sees exactly the batches an
    uninterrupted run would, whatever sampler wraps the order (Lightning's distributed sampler
    under DDP) and whatever the workers do. ``skip_batches`` is a constructor argument kept as an
    attribute of the same name, so it survives Lightning re-creating the loader (DDP sampler
    injection). The position itself is saved and restored by :class:`ClassificationDataModule`
    from the trainer's progress; ``state_dict``/``load_state_dict`` tell Lightning that this loader
    resumes mid-epoch (it warns about loaders that do not).
    """

    def __init__(self, *args, skip_batches: int = 0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.skip_batches = skip_batches

    def __iter__(self):
        skip, self.skip_batches = self.skip_batches, 0
        if skip == 0:
            return super().__iter__()
        # the checkpoint's random state is the one after these batches: starting the iterator (it
        # draws its workers' base seed) and drawing the skipped batches must not move it
        state = collect_rng_states()
        iterator = super().__iter__()
        for _ in range(skip):
            next(iterator)
        restore_rng_states(state)
        return iterator

    def state_dict(self) -> dict[str, int]:
        return {}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """The datamodule has already set ``skip_batches`` (see the class docstring)."""


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
        self._sampler_seed: int | None = None
        self._resume_at: tuple[int, int] | None = None  # (epoch, batches done) of a mid-epoch checkpoint

    def state_dict(self) -> dict[str, int]:
        """Saved in every checkpoint: the training order's seed and, for a checkpoint written mid-epoch
        (a preemption), that epoch and the training batches of it already done."""
        state = {} if self._sampler_seed is None else {"sampler_seed": self._sampler_seed}
        trainer = self.trainer
        if trainer is not None and trainer.state.fn == "fit" and trainer.num_training_batches != float("inf"):
            done = trainer.fit_loop.epoch_loop.batch_progress.current.completed
            if 0 < done < trainer.num_training_batches:
                state.update(epoch=trainer.current_epoch, train_batches_done=done)
        return state

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Resuming: the same training order, continuing after the batches already done."""
        self._sampler_seed = state_dict.get("sampler_seed", self._sampler_seed)
        if state_dict.get("train_batches_done"):
            self._resume_at = (state_dict["epoch"], state_dict["train_batches_done"])

    @classmethod
    def settings_without_data(cls, options: dict) -> dict | None:
        """The settings linked to the model (``num_classes``, ``input_shape``, ``sample_rate``,
        ``class_names``) from this datamodule's options alone, without reading any data, or ``None``
        when they need the data (then the datamodule is built). For ``l2bn complexity``."""
        return None

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
            sampler = EpochShuffleSampler(len(dataset), self._training_seed())
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
        if shuffle:  # the training loader
            return ResumableDataLoader(dataset, **{**options, **overrides})
        return DataLoader(dataset, **{**options, **overrides})

    def _training_seed(self) -> int:
        """The training order's seed: a resumed run's saved one, else the process's initial seed.

        Under DDP Lightning wraps the sampler and gives rank r every world_size-th index of its order,
        so every rank must draw the same order: rank 0's seed, also when no seed was set."""
        if self._sampler_seed is None:
            seed = torch.initial_seed()
            if self.trainer is not None and self.trainer.world_size > 1:
                seed = self.trainer.strategy.broadcast(seed)
            self._sampler_seed = seed
        return self._sampler_seed

    def train_dataloader(self) -> DataLoader:
        if self._resume_at is None:
            return self._loader(self.train_set, shuffle=True)
        (epoch, done), self._resume_at = self._resume_at, None
        loader = self._loader(self.train_set, shuffle=True, skip_batches=done)
        loader.sampler.set_epoch(epoch)  # skipping draws the order now, before Lightning sets the epoch
        return loader

    def val_dataloader(self) -> DataLoader | list:
        """The validation loader; ``[]`` (Lightning then skips validation) when ``val_fraction`` is 0."""
        return [] if self.val_fraction == 0 else self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)
