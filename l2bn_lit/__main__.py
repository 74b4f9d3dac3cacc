"""The project's commands behind one entry point: the ``l2bn`` console script, or ``python -m l2bn_lit``.

    l2bn fit|validate|test|predict --config configs/<x>.yaml [...]   LightningCLI (as python cli.py ...)
    l2bn sweep --config ... --norms bn l2bn --seeds 0 1 2 [...]    norm x seed sweeps
    l2bn ablation --config ... --cell NAME=OPTIONS [...]           one sweep per cell, one factor table
    l2bn results FOLDER [--metric test/acc]                        collect finished runs
    l2bn complexity --config configs/<x>.yaml [--bits 16] [...]    a config's parameters, MACs, DCASE limits
    l2bn data list|download|check [...]                            get and check DCASE data
    l2bn evaluate --config ... CKPT|FOLDER [...]                   many checkpoints in one pass: leaderboard + ensemble
    l2bn package CKPT [--device-model a=CKPT ...] --name L --index N --out DIR   the DCASE 2025 inference package

Each tool is ``l2bn_lit/commands/<name>.py`` (its ``main(argv)``); ``l2bn <tool> --help`` prints its options.
"""

from __future__ import annotations

import importlib
import sys

SUBCOMMANDS = ("fit", "validate", "test", "predict")
TOOLS = ("sweep", "ablation", "results", "complexity", "data", "evaluate", "package")


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
        from .lit.cli import main as cli_main

        sys.argv = ["l2bn", command, *rest]  # LightningCLI reads sys.argv (and warns when given both)
        cli_main()
    elif command in TOOLS:
        status = importlib.import_module(f"l2bn_lit.commands.{command}").main(rest)
        if command == "data":  # its exit status says whether the data checked out
            sys.exit(status)
    else:
        raise SystemExit(
            f"l2bn: unknown command {command!r}; choose one of {', '.join(SUBCOMMANDS + TOOLS)} (l2bn --help)"
        )


if __name__ == "__main__":
    main()
