"""Model complexity for deployment limits (DCASE's low-complexity tracks): parameters and the
multiply-accumulates for one input, counted by ``torch.utils.flop_counter`` (not by hand).

    l2bn complexity --config configs/<x>.yaml [other CLI options]     (or: python -m l2bn_lit complexity ...)

The CLI also writes ``complexity.json`` into every run folder at the start of fit.
"""

from __future__ import annotations

import json

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .module import run_folder

__all__ = ["ComplexityReport", "complexity_report"]


def complexity_report(model: nn.Module, input_shape: list[int]) -> dict[str, int]:
    """Parameters, parameter bytes and MACs (= FLOPs / 2 of matmuls and convolutions; FFTs and
    elementwise work are not counted) for one input of ``input_shape``, in eval mode."""
    was_training = model.training
    device = next(model.parameters()).device
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        model.train(was_training)
    params = sum(p.numel() for p in model.parameters())
    return {
        "parameters": params,
        "parameter_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
        "macs": counter.get_total_flops() // 2,
    }


class ComplexityReport(pl.Callback):
    """Writes ``complexity.json`` into the run folder at the start of fit and logs the numbers."""

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        folder = run_folder(trainer)
        shape = pl_module.hparams.get("input_shape")
        if shape is None or not trainer.is_global_zero or trainer.fast_dev_run:  # fast_dev_run writes nothing
            return
        report = complexity_report(pl_module, list(shape))
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "complexity.json").write_text(json.dumps(report, indent=2))

