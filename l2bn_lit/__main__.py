"""The project's commands behind one entry point: the ``l2bn`` console script, or ``python -m l2bn_lit``.

    l2bn fit|validate|test|predict --config configs/<x>.yaml [...]   LightningCLI (as python cli.py ...)
    l2bn sweep --config ... --norms bn l2bn --seeds 0 1 2 [...]    norm x seed sweeps (l2bn_lit.sweep)
    l2bn ablation --config ... --cell NAME=OPTIONS [...]           one sweep per cell, one factor table (l2bn_lit.ablation)
    l2bn results FOLDER [--metric test/acc]                        collect finished runs (l2bn_lit.results)
    l2bn complexity --config configs/<x>.yaml [--bits 16] [...]    parameters, MACs and the DCASE limits of a config's model
    l2bn data list|download|check [...]                            get and check DCASE data (l2bn_lit.data)
    l2bn evaluate --config ... CKPT|FOLDER [...]                   many checkpoints in one pass: leaderboard + ensemble
    l2bn package CKPT [--device-model a=CKPT ...] --name L --index N --out DIR   the DCASE 2025 inference package
"""

from __future__ import annotations

import argparse
import json
import sys

SUBCOMMANDS = ("fit", "validate", "test", "predict")
TOOLS = ("sweep", "ablation", "results", "complexity", "data", "evaluate", "package")


def complexity(argv: list[str]) -> dict[str, int]:
    """Builds the model of a CLI config (without its data where the datamodule allows: the audio
    datamodules need none, so the DCASE limits can be checked before downloading) and prints its
    complexity (:func:`l2bn_lit.complexity.complexity_report`: torchinfo's MACs, as the challenge
    counts them, and L2BN's inference cost apart) and, for audio models or with ``--limits dcase``,
    the DCASE Task 1 limits check on their sum. ``--bits N`` (default 16): the precision the
    parameters would ship in."""
    from .cli import ModelOnlyCLI
    from .cli import main as cli_main
    from .complexity import complexity_report, limit_report

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--bits", type=int, default=16)
    parser.add_argument("--limits", choices=("dcase", "none"), default=None)
    own, rest = parser.parse_known_args(argv)
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
            print(f"(a reviewer counting with torchinfo alone sees {report.get('macs_network', report['macs']):,} MACs: "
                  "L2BN's per-sample norms are not in that count, and are in the verdict above)")
    return report


def main(argv: list[str] | None = None) -> None:
    """The ``l2bn`` console script: every command with short errors (:func:`l2bn_lit.errors.run_main`)."""
    from .errors import run_main

    run_main(_dispatch, argv)


def _dispatch(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return
    command, rest = argv[0], argv[1:]
    if command in SUBCOMMANDS:
        from .cli import main as cli_main

        sys.argv = ["l2bn", command, *rest]  # LightningCLI reads sys.argv (and warns when given both)
        cli_main()
    elif command == "sweep":
        from .sweep import main as sweep_main

        sweep_main(rest)
    elif command == "ablation":
        from .ablation import main as ablation_main

        ablation_main(rest)
    elif command == "results":
        from .results import main as results_main

        results_main(rest)
    elif command == "complexity":
        complexity(rest)
    elif command == "evaluate":
        from .evaluate import main as evaluate_main

        evaluate_main(rest)
    elif command == "package":
        from .package import main as package_main

        package_main(rest)
    elif command == "data":
        from .data import main as data_main

        sys.exit(data_main(rest))
    else:
        raise SystemExit(f"l2bn: unknown command {command!r}; choose one of {', '.join(SUBCOMMANDS + TOOLS)} (l2bn --help)")


if __name__ == "__main__":
    main()
