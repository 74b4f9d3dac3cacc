"""A config's model against the deployment limits, before training it.

l2bn complexity --config configs/<x>.yaml [--bits 16] [--limits dcase|none] [other CLI options]
"""

from __future__ import annotations

import argparse
import json
import sys

from l2bn_lit.lit.cli import ModelOnlyCLI
from l2bn_lit.lit.cli import main as cli_main
from l2bn_lit.reports.model_cost import complexity_report, limit_report

__all__ = ["main"]


def main(argv: list[str] | None = None) -> dict[str, int]:
    """Builds the model of a CLI config (without its data where the datamodule allows: the audio
    datamodules need none, so the DCASE limits can be checked before downloading) and prints its
    complexity (:func:`l2bn_lit.reports.model_cost.complexity_report`: torchinfo's MACs, as the challenge
    counts them, and L2BN's inference cost apart) and, for audio models or with ``--limits dcase``,
    the DCASE Task 1 limits check on their sum. ``--bits N`` (default 16): the precision the
    parameters would ship in."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--bits", type=int, default=16)
    parser.add_argument("--limits", choices=("dcase", "none"), default=None)
    own, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    model = cli_main(rest, run=False, cli_class=ModelOnlyCLI).model
    report = complexity_report(model, list(model.hparams.input_shape), bits=own.bits)
    print(json.dumps({"model": type(model).__name__, **dict(model.hparams), **report}, indent=2, default=str))
    audio = model.hparams.get("sample_rate") is not None
    if own.limits == "dcase" or (own.limits is None and audio):
        within, lines = limit_report(report)
        seconds = model.hparams.input_shape[0] / model.hparams.sample_rate if audio else None
        clip = f" per {seconds:g}-s clip" if seconds else ""
        print(f"DCASE Task 1 limits (128 kB parameters, 30 M MACs{clip}):\n{lines}")
        print("within the limits" if within else "OVER the limits: this model cannot be submitted as it is")
        if "l2bn_inference_macs" in report:
            print(
                f"(a reviewer counting with torchinfo alone sees {report.get('macs_network', report['macs']):,} MACs: "
                "L2BN's per-sample norms are not in that count, and are in the verdict above)"
            )
    return report


if __name__ == "__main__":
    from l2bn_lit.errors import run_main

    run_main(main)
