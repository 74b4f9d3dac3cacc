"""Model complexity for deployment limits (DCASE's low-complexity tracks), counted as the challenge
counts it, plus what the challenge's counter cannot see.

- **MACs** are torchinfo's ``total_mult_adds`` (the counter of the DCASE 2024/2025 Task 1 complexity
  scripts) for one input, in eval mode: for the audio models, of the network on the log-mel features
  (the challenge excludes feature extraction; the front-end's mel product is given apart, counted by
  ``torch.utils.flop_counter``).
- **L2BN's inference cost**: at inference an L2BN layer still computes each sample's l2 norm over all
  its input values and scales the sample by it, which cannot be folded into the neighbouring
  convolutions as BatchNorm's affine can; torchinfo counts neither. Each value costs one
  multiply-accumulate (sum of squares) and one multiply (the scale): ``2 x values`` MACs.
- The limits are judged on torchinfo's MACs **plus** L2BN's cost.

    l2bn complexity --config configs/<x>.yaml [--bits 16] [other CLI options]

The CLI also writes ``complexity.json`` into every run folder at the start of fit
(:class:`l2bn_lit.lit.callbacks.ComplexityReport`).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torchinfo import summary

from l2bn_lit.nn.layers import _L2BNBase

__all__ = ["complexity_report", "limit_report", "count_network", "DCASE_LIMITS"]

#: the DCASE 2024/2025 Task 1 limits (the task's complexity script): parameter memory in bytes at
#: the precision the model ships in, and MACs per 1-s clip (feature extraction excluded)
DCASE_LIMITS = {"parameter_memory_bytes": 128_000, "macs": 30_000_000}


def count_network(module: nn.Module, input_shape: list[int]) -> tuple[int, int, int]:
    """``(torchinfo MACs, L2BN layers, values entering them)`` of ``module`` for one input
    ``(1, *input_shape)``, in one eval-mode pass.

    torchinfo's ``total_mult_adds``: convolutions count weights x output positions, biases and other
    layers' parameters once per output row; elementwise work, pooling and the FFT are not counted.
    The L2BN values are what the per-sample norms read. The input is zeros at the module's dtype,
    not torchinfo's random one: counting must not move the RNG (a resumed run's)."""
    values: list[int] = []
    hooks = [
        m.register_forward_hook(lambda _m, args, _out: values.append(args[0][0].numel()))
        for m in module.modules()
        if isinstance(m, _L2BNBase)
    ]
    was_training = module.training
    first = next(module.parameters())
    module.eval()
    try:
        with torch.no_grad():
            zeros = torch.zeros(1, *input_shape, device=first.device, dtype=first.dtype)
            stats = summary(module, input_data=[zeros], verbose=0, mode="eval")
    finally:
        module.train(was_training)
        for hook in hooks:
            hook.remove()
    return int(stats.total_mult_adds), len(values), sum(values)


def complexity_report(model: nn.Module, input_shape: list[int], bits: int = 16) -> dict[str, int]:
    """Parameters, parameter bytes (as stored now, at each parameter's dtype), parameter memory at
    ``bits`` per parameter (the precision the model would ship in), torchinfo's MACs for one input of
    ``input_shape``, and, with L2BN layers, their inference cost (see the module docstring).

    Models with a ``frontend`` (the log-mel of the audio models) and a ``feature_network`` (the part
    that maps its features to logits) report ``macs_network`` (torchinfo, on the features: what DCASE
    counts), ``macs_frontend`` (the mel filterbank product) and ``macs`` (their sum).
    ``macs_for_limits`` is the network's MACs plus L2BN's cost."""
    params = sum(p.numel() for p in model.parameters())
    report = {
        "parameters": params,
        "parameter_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
        "parameter_bits": bits,
        "parameter_memory_bytes": params * bits // 8,
    }
    frontend, network = getattr(model, "frontend", None), getattr(model, "feature_network", None)
    if frontend is not None and network is not None:
        device = next(model.parameters()).device
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            features = frontend(torch.zeros(1, *input_shape, device=device))
        report["macs_network"], layers, values = count_network(network, list(features.shape[1:]))
        report["macs_frontend"] = counter.get_total_flops() // 2
        report["macs"] = report["macs_network"] + report["macs_frontend"]
    else:
        report["macs"], layers, values = count_network(model, input_shape)
    if layers:
        report.update(l2bn_layers=layers, l2bn_values=values, l2bn_inference_macs=2 * values)
    report["macs_for_limits"] = report.get("macs_network", report["macs"]) + report.get("l2bn_inference_macs", 0)
    return report


def limit_report(report: dict[str, int], limits: dict[str, int] = DCASE_LIMITS) -> tuple[bool, str]:
    """``(within the limits, one line per limit)`` for a :func:`complexity_report`; MACs are judged on
    torchinfo's count plus L2BN's inference cost, and both parts are named."""
    counted = report.get("macs_network", report["macs"])
    detail = "torchinfo, network only, features excluded" if "macs_network" in report else "torchinfo, whole model"
    if "l2bn_inference_macs" in report:
        detail = (
            f"torchinfo {counted:,} ({detail}) + L2BN per-sample norms {report['l2bn_inference_macs']:,} "
            f"({report['l2bn_values']:,} values in {report['l2bn_layers']} layers x (sum of squares + scale); "
            "not in torchinfo's count)"
        )
    lines, within = [], True
    for label, value, limit, what in (
        (
            "parameter memory",
            report["parameter_memory_bytes"],
            limits["parameter_memory_bytes"],
            f"{report['parameters']:,} parameters x {report['parameter_bits']} bit",
        ),
        ("MACs", report["macs_for_limits"], limits["macs"], detail),
    ):
        ok = value <= limit
        within &= ok
        verdict = "within" if ok else f"OVER by {value - limit:,}"
        lines.append(f"{label}: {value:,} of {limit:,} ({100 * value / limit:.1f}%, {what}): {verdict}")
    return within, "\n".join(lines)
