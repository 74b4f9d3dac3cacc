"""Stopping and continuing a run: RNG states in checkpoints, and preemption signals.

- :class:`RNGStateCheckpoint` saves the Python, NumPy, torch and CUDA random states in every
  checkpoint and restores them when a fit resumes, so augmentation, mixup and dropout continue as in
  an uninterrupted run (Lightning checkpoints hold no RNG state). The states are plain data, so the
  checkpoint still loads weights-only.
- :class:`PreemptionCheckpoint` turns SIGTERM (what SLURM, Kubernetes and most schedulers send
  before killing a job) and SIGUSR1 (SLURM's ``--signal`` warning before the time limit) into a
  ``last.ckpt`` of the current state, written at the next batch boundary, and an exit status of
  128 + the signal's number (143, 138), so the scheduler records a failure and a wrapper can requeue.

The sampler's seed and the position within an interrupted epoch are saved by the datamodule
(:class:`datamodules.base.ClassificationDataModule`), so a resumed run continues with the next batch.
"""

from __future__ import annotations

import random
import signal
import sys
import threading
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities.exceptions import SIGTERMException

from .checkpoint import TieBreakingCheckpoint

__all__ = [
    "collect_rng_states",
    "restore_rng_states",
    "RNGStateCheckpoint",
    "PreemptionCheckpoint",
    "PREEMPTION_SIGNALS",
]

#: the signals that save ``last.ckpt`` and stop the run
PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1) if hasattr(signal, "SIGUSR1") else (signal.SIGTERM,)


def collect_rng_states() -> dict[str, Any]:
    """The process's random states as plain data (tensors, ints, tuples): Python's ``random``,
    NumPy's global generator, torch's CPU generator and every initialized CUDA device's."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(cached)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    """Sets the random states :func:`collect_rng_states` returned."""
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class RNGStateCheckpoint(Callback):
    """Saves the random states with each checkpoint and restores them when a fit resumes from it.

    The states are those of the process that writes the checkpoint (rank 0 under DDP; every rank
    restores them, as every rank starts from the same seed)."""

    def state_dict(self) -> dict[str, Any]:
        return {"rng": collect_rng_states()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "rng" in state_dict:
            restore_rng_states(state_dict["rng"])


class PreemptionCheckpoint(Callback):
    """On SIGTERM or SIGUSR1 during ``fit``: stop at the next batch boundary, write ``last.ckpt`` with
    the current state (through the run's :class:`~l2bn_lit.lit.checkpoint.TieBreakingCheckpoint`) and
    exit with status ``128 + signal number``.

    Lightning turns SIGTERM into ``SIGTERMException`` (a ``SystemExit`` that would exit with status 0)
    at the next batch; this callback routes SIGUSR1 the same way, saves the checkpoint when that
    exception passes, and sets its exit status. Under SLURM, SIGUSR1 is handled here rather than by
    Lightning's auto-requeue (which saves ``hpc_ckpt_*.ckpt`` outside the run folder): the job script
    requeues on status 138/143 (docs/images.md has the script). Under DDP every process stops at the
    same batch and the checkpoint is written once.
    """

    def __init__(self) -> None:
        self.signal: int | None = None
        self.saved: str | None = None
        self._previous: dict[int, Any] = {}

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or threading.current_thread() is not threading.main_thread():
            return
        self.signal, self.saved = None, None
        for signum in PREEMPTION_SIGNALS:
            if signum != signal.SIGTERM:  # SIGTERM is Lightning's: it stops every process at the next batch
                self._previous[signum] = signal.signal(signum, self._as_sigterm)

    def _as_sigterm(self, signum: int, frame: Any) -> None:
        """SIGUSR1: noted, then handled as SIGTERM (Lightning stops every process at the next batch)."""
        self.signal = self.signal or signum
        signal.raise_signal(signal.SIGTERM)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._restore_handlers()

    def _restore_handlers(self) -> None:
        for signum, handler in self._previous.items():
            if handler is not None:
                signal.signal(signum, handler)
        self._previous = {}

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore_handlers()
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != "fit":
            return
        signum = self.signal or signal.SIGTERM
        checkpoint = next(
            (cb for cb in trainer.checkpoint_callbacks if isinstance(cb, TieBreakingCheckpoint) and cb.save_last), None
        )
        if checkpoint is not None and not trainer.sanity_checking:
            self.saved = checkpoint.save_last_now(trainer)
        exception.code = 128 + signum  # a SystemExit: this is the process's exit status
        name = signal.Signals(signum).name
        where = f"epoch {trainer.current_epoch}, global step {trainer.global_step}"
        if self.saved:
            message = f"{name} at {where}: saved {self.saved}; continue with --ckpt_path {self.saved}"
        else:
            message = f"{name} at {where}: no checkpoint callback with save_last, nothing saved"
        if trainer.is_global_zero:
            print(f"preempted: {message} (exit status {exception.code})", file=sys.stderr, flush=True)
