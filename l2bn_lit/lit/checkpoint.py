"""Checkpoints that survive a cluster: safe loading, atomic writing, and model selection.

- every read goes through :func:`l2bn_lit.serialization.load_checkpoint` (weights only, an explicit
  allow-list, one short error naming the file);
- :class:`AtomicCheckpointIO` writes each checkpoint beside its destination and renames it into
  place, so a kill leaves the old file or the new one, on any file system.
- :class:`TieBreakingCheckpoint` keeps one best checkpoint (ties on the monitored metric broken by a
  second one) and writes ``last.ckpt`` at the end of every epoch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import Tensor

from l2bn_lit.serialization import load_checkpoint

__all__ = ["AtomicCheckpointIO", "TieBreakingCheckpoint"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO with writes that are atomic on every local file system.

    Each checkpoint is written to ``.<name>.partial`` in its destination folder, flushed to disk and
    renamed over the destination: readers and a kill see the old file or the complete new one
    (Lightning's default writes in ``$TMPDIR`` and moves the file, a copy when ``$TMPDIR`` is another
    file system). The temporary name is fixed per destination, so a killed save leaves at most one
    partial file, which the next save of that checkpoint replaces. Reads go through
    :func:`load_checkpoint` (weights only, whatever ``weights_only`` the caller passes). Remote
    (``scheme://``) paths use Lightning's own implementation.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__}.save_checkpoint takes no storage_options, got {storage_options!r}")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        try:
            with open(partial, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(partial, path)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        _fsync_folder(path.parent)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        if "://" in str(path):
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        return load_checkpoint(path, map_location=map_location)


def _fsync_folder(folder: Path) -> None:
    """Makes a rename in ``folder`` durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


class TieBreakingCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` (``save_top_k=1``) that replaces the best checkpoint when a later epoch
    ties on ``monitor`` but is better on ``tie_breaker`` (by default the lower ``val/loss``), and
    that writes ``last.ckpt`` (with ``save_last=True``) at the end of every epoch.

    On a small validation set accuracy saturates (1.0 from an early epoch on), and plain
    ``ModelCheckpoint`` keeps the first epoch that reached it; this keeps the one that also fits best.
    Lightning 2.6's ``ModelCheckpoint`` writes ``last.ckpt`` only in an epoch that also saved a new
    best, so its ``last.ckpt`` is the best epoch, and a run resumed from it redoes the epochs since.

    Args:
        tie_breaker: the metric compared when ``monitor`` ties.
        tie_mode: ``min`` or ``max`` for ``tie_breaker``.
        **kwargs: ``ModelCheckpoint``'s arguments.
    """

    def __init__(self, *args: Any, tie_breaker: str = "val/loss", tie_mode: str = "min", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.save_top_k != 1:
            raise ValueError(
                f"TieBreakingCheckpoint keeps one best checkpoint (save_top_k=1), got save_top_k={self.save_top_k}"
            )
        if tie_mode not in ("min", "max"):
            raise ValueError(f"tie_mode must be 'min' or 'max', got {tie_mode!r}")
        self.tie_breaker, self.tie_mode = tie_breaker, tie_mode
        self.best_tie: float | None = None
        self._last_saved_step: int | None = None

    def check_monitor_top_k(self, trainer: pl.Trainer, current: Tensor | None = None) -> bool:
        if super().check_monitor_top_k(trainer, current):
            return True
        if current is None or not self.best_k_models or self.best_tie is None:
            return False
        tie = trainer.callback_metrics.get(self.tie_breaker)
        best = self.best_k_models[self.kth_best_model_path]
        better = (
            tie is not None
            and torch.equal(current.detach().cpu().to(best.dtype), best.detach().cpu())
            and (float(tie) < self.best_tie if self.tie_mode == "min" else float(tie) > self.best_tie)
        )
        return trainer.strategy.reduce_boolean_decision(bool(better))

    def _update_best_and_save(
        self, current: Tensor, trainer: pl.Trainer, monitor_candidates: dict[str, Tensor]
    ) -> None:
        super()._update_best_and_save(current, trainer, monitor_candidates)
        tie = monitor_candidates.get(self.tie_breaker)
        self.best_tie = None if tie is None else float(tie)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        saves = not self._should_skip_saving_checkpoint(trainer) and self._should_save_on_train_epoch_end(trainer)
        super().on_train_epoch_end(trainer, pl_module)
        if saves:
            self._save_last_of_this_step(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        saves = not self._should_skip_saving_checkpoint(trainer) and not self._should_save_on_train_epoch_end(trainer)
        super().on_validation_end(trainer, pl_module)
        if saves:
            self._save_last_of_this_step(trainer)

    def _save_last_of_this_step(self, trainer: pl.Trainer) -> None:
        """Writes ``last.ckpt`` unless the parent class already did at this step."""
        if self.save_last and self._last_saved_step != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def _save_last_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict[str, Tensor]) -> None:
        super()._save_last_checkpoint(trainer, monitor_candidates)
        if self.save_last:
            self._last_saved_step = trainer.global_step

    def save_last_now(self, trainer: pl.Trainer) -> str:
        """Writes ``last.ckpt`` with the trainer's current state (a preemption); returns its path."""
        self._save_last_of_this_step(trainer)
        return self.last_model_path

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "best_tie": self.best_tie}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.best_tie = state_dict.get("best_tie")
