"""Faults for the survival tests: a callback that signals its own process at a chosen batch
(importable by the CLI subprocesses the tests start, with ``tests`` on ``PYTHONPATH``)."""

from __future__ import annotations

import os
import signal

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback


class SignalAt(Callback):
    """Sends ``signal`` (a name: ``SIGKILL``, ``SIGTERM``, ``SIGUSR1``) to this process when training
    batch ``batch`` of epoch ``epoch`` starts."""

    def __init__(self, epoch: int, batch: int, signal: str = "SIGKILL") -> None:
        self.epoch, self.batch, self.signal = epoch, batch, signal

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            os.kill(os.getpid(), getattr(signal, self.signal))
