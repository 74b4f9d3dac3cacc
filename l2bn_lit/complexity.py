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

__all__ = ["ComplexityReport", "complexity_report", "limit_report", "DCASE_LIMITS"]

#: the DCASE 2024/2025 Task 1 limits (the task's complexity script): parameter memory in bytes at
#: the precision the model ships in, and MACs per 1-s clip (feature extraction excluded)
DCASE_LIMITS = {"parameter_memory_bytes": 128_000, "macs": 30_000_000}


def complexity_report(model: nn.Module, input_shape: list[int], bits: int = 16) -> dict[str, int]:
    """Parameters, parameter bytes (as stored now), parameter memory at ``bits`` per parameter
    (the precision the model would ship in) and MACs (= FLOPs / 2 of matmuls and convolutions; FFTs
    and elementwise work are not counted) for one input of ``input_shape``, in eval mode.

    Models with a ``frontend`` submodule (the log-mel of the audio models) also get ``macs_frontend``
    and ``macs_network`` (the rest): DCASE's limits count the network on the features only."""
    was_training = model.training
    device = next(model.parameters()).device
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        model.train(was_training)
    params = sum(p.numel() for p in model.parameters())
    report = {
        "parameters": params,
        "parameter_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
        "parameter_bits": bits,
        "parameter_memory_bytes": params * bits // 8,
        "macs": counter.get_total_flops() // 2,
    }
    frontends = [name for name in counter.get_flop_counts() if name.rsplit(".", 1)[-1] == "frontend"]
    if frontends:
        frontend = sum(counter.get_flop_counts()[frontends[0]].values()) // 2
        report.update(macs_frontend=frontend, macs_network=report["macs"] - frontend)
    return report


def limit_report(report: dict[str, int], limits: dict[str, int] = DCASE_LIMITS) -> tuple[bool, str]:
    """``(within the limits, one line per limit)`` for a :func:`complexity_report`."""
    macs = report.get("macs_network", report["macs"])
    memory = report["parameter_memory_bytes"]
    lines, within = [], True
    for label, value, limit, detail in (
        ("parameter memory", memory, limits["parameter_memory_bytes"], f"{report['parameters']:,} parameters x {report['parameter_bits']} bit"),
        ("MACs", macs, limits["macs"], "network only, features excluded" if "macs_network" in report else "whole model"),
    ):
        ok = value <= limit
        within &= ok
        verdict = "within" if ok else f"OVER by {value - limit:,}"
        lines.append(f"{label}: {value:,} of {limit:,} ({100 * value / limit:.1f}%, {detail}): {verdict}")
    return within, "\n".join(lines)


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

