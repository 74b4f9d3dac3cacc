"""Model selection that is robust to ties of the monitored metric."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import Tensor

__all__ = ["TieBreakingCheckpoint"]


class TieBreakingCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` (``save_top_k=1``) that replaces the best checkpoint when a later epoch
    ties on ``monitor`` but is better on ``tie_breaker`` (by default the lower ``val/loss``).

    On a small validation set accuracy saturates (1.0 from an early epoch on), and plain
    ``ModelCheckpoint`` keeps the first epoch that reached it; this keeps the one that also fits best.

    Args:
        tie_breaker: the metric compared when ``monitor`` ties.
        tie_mode: ``min`` or ``max`` for ``tie_breaker``.
        **kwargs: ``ModelCheckpoint``'s arguments.
    """

    def __init__(self, *args: Any, tie_breaker: str = "val/loss", tie_mode: str = "min", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.save_top_k != 1:
            raise ValueError(f"TieBreakingCheckpoint keeps one best checkpoint (save_top_k=1), got save_top_k={self.save_top_k}")
        if tie_mode not in ("min", "max"):
            raise ValueError(f"tie_mode must be 'min' or 'max', got {tie_mode!r}")
        self.tie_breaker, self.tie_mode = tie_breaker, tie_mode
        self.best_tie: float | None = None

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

    def _update_best_and_save(self, current: Tensor, trainer: pl.Trainer, monitor_candidates: dict[str, Tensor]) -> None:
        super()._update_best_and_save(current, trainer, monitor_candidates)
        tie = monitor_candidates.get(self.tie_breaker)
        self.best_tie = None if tie is None else float(tie)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "best_tie": self.best_tie}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.best_tie = state_dict.get("best_tie")
