"""The run's ``metrics.csv``: Lightning's CSV logger, continued (not erased) when a run resumes.

Lightning's ``CSVLogger`` deletes an existing ``metrics.csv`` when its folder is reused, so a run
resumed into its own folder would lose the epochs before the interruption. :class:`RunCSVLogger`
keeps them: with ``resume_step`` set (the checkpoint's global step) it keeps the rows the
checkpointed state had logged (``step < resume_step``), drops the rows logged after the checkpoint
(they are about to be logged again by the resumed run), and appends from there on, so every
(epoch, step) row appears once.
"""

from __future__ import annotations

import csv
import os
from typing import Any

from lightning_fabric.loggers.logger import rank_zero_experiment
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter

__all__ = ["RunCSVLogger"]


class _ContinuingWriter(ExperimentWriter):
    """An experiment writer that keeps an existing ``metrics.csv`` up to ``resume_step``."""

    def __init__(self, log_dir: str, resume_step: int | None) -> None:
        self.resume_step = resume_step
        super().__init__(log_dir=log_dir)

    def _check_log_dir_exists(self) -> None:
        if self.resume_step is None or not os.path.isfile(self.metrics_file_path):
            super()._check_log_dir_exists()  # a new run: Lightning's behaviour (warn, start afresh)
            return
        with open(self.metrics_file_path, newline="") as file:
            reader = csv.DictReader(file)
            keys, rows = list(reader.fieldnames or []), list(reader)
        kept = [row for row in rows if row.get("step", "") != "" and int(float(row["step"])) < self.resume_step]
        partial = self.metrics_file_path + ".partial"
        with open(partial, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=keys)
            writer.writeheader()
            writer.writerows(kept)
        os.replace(partial, self.metrics_file_path)
        self.metrics_keys = keys


class RunCSVLogger(CSVLogger):
    """``CSVLogger`` that continues the metrics of a resumed run (see the module docstring).

    Args:
        resume_step: the global step of the checkpoint the run resumes from; ``None`` for a new run.
        **kwargs: ``CSVLogger``'s arguments (``save_dir``, ``name``, ``version``, ...).
    """

    def __init__(self, *args: Any, resume_step: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.resume_step = resume_step

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuingWriter(self.log_dir, self.resume_step)
        return self._experiment
