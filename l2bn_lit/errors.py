"""Short errors at the command line: the project's own message and what to do, not a traceback.

Every command (``cli.py``, ``l2bn ...``, ``python -m l2bn_lit.<tool>``) runs through
:func:`run_main`. An error the project raises for bad input (a missing file or data set, an unknown
name, a bad or mismatched checkpoint, a config mistake, a diverged run) is printed as ``error: ...``
in a few lines, with exit status 1; LightningCLI's parser wraps such errors in a dump of the whole
config, so the innermost error of the chain is the one shown. ``--debug`` (anywhere on the command
line) or ``L2BN_DEBUG=1`` shows the full traceback instead. Errors from elsewhere (a bug, CUDA running
out of memory) keep their traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["run_main", "user_error_message", "tidy_parser_message", "debugging", "DEBUG_VARIABLE"]

#: set to 1 to see tracebacks (as ``--debug`` does)
DEBUG_VARIABLE = "L2BN_DEBUG"

_PROJECT = tuple(
    str(Path(__file__).resolve().parents[1] / name) + os.sep for name in ("l2bn_lit", "datamodules", "models")
)
_INPUT_ERRORS = (ValueError, OSError, RuntimeError)
#: Lightning's bad-configuration error; looked up only where Lightning was imported (an error of that type
#: cannot exist otherwise), so that commands that do not train start without importing Lightning
_MISCONFIGURATION_MODULE = "lightning_fabric.utilities.exceptions"


def _is_misconfiguration(error: BaseException) -> bool:
    module = sys.modules.get(_MISCONFIGURATION_MODULE)
    return module is not None and isinstance(error, module.MisconfigurationException)


def user_error_message(error: BaseException) -> str | None:
    """The message to show for ``error`` when it is a bad-input error of the project, else ``None``.

    That is the innermost exception of its chain (``__cause__``, else an unsuppressed ``__context__``)
    that this project's own code raised as a ``ValueError``, ``OSError`` (``FileNotFoundError`` ...) or
    ``RuntimeError``, or Lightning's ``MisconfigurationException``: a parser's wrapper
    around it is skipped, and so is a library error the project's message was raised from."""
    found = None
    chain: BaseException | None = error
    while chain is not None:
        if _is_misconfiguration(chain) or (isinstance(chain, _INPUT_ERRORS) and _raised_by_project(chain)):
            found = chain
        chain = _inner(chain)
    if found is None:
        return None
    return str(found).strip() or type(found).__name__


def _inner(error: BaseException) -> BaseException | None:
    """The exception ``error`` was raised from (``raise ... from None`` ends the chain)."""
    return error.__cause__ or (None if error.__suppress_context__ else error.__context__)


def _raised_by_project(error: BaseException) -> bool:
    """Whether the innermost frame of ``error``'s traceback is in this project's packages."""
    frame = error.__traceback__
    if frame is None:
        return False
    while frame.tb_next is not None:
        frame = frame.tb_next
    return str(Path(frame.tb_frame.f_code.co_filename).resolve()).startswith(_PROJECT)


def debugging() -> bool:
    """Whether tracebacks were asked for (``--debug`` or ``L2BN_DEBUG=1``)."""
    return os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")


#: lines of jsonargparse's union-type messages that say nothing to the user
_PARSER_NOISE = (
    "Does not validate against any of the Union subtypes",
    "Subtypes:",
    "Errors:",
    "Given value type:",
    "Given value:",
    "- Expected a <class 'NoneType'>",
)


def tidy_parser_message(message: str) -> str:
    """jsonargparse's error without its type-union bookkeeping and value dumps."""
    return "\n".join(line for line in message.splitlines() if not line.strip().startswith(_PARSER_NOISE))


def run_main(main: Callable[[list[str]], Any], argv: list[str] | None = None) -> Any:
    """Runs ``main(argv)`` (default: the process's arguments), printing bad-input errors briefly.

    ``--debug`` is taken out of ``argv`` (and ``sys.argv``, which LightningCLI reads) and, like
    ``L2BN_DEBUG=1``, lets every error raise with its traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--debug" in argv:
        os.environ[DEBUG_VARIABLE] = "1"  # also for the parser (and the processes a DDP launcher starts)
        argv = [arg for arg in argv if arg != "--debug"]
    sys.argv = [sys.argv[0], *argv]
    if debugging():
        return main(argv)
    try:
        return main(argv)
    except Exception as error:  # noqa: BLE001 - filtered by user_error_message
        message = user_error_message(error)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        print(f"(for the traceback, run again with --debug or {DEBUG_VARIABLE}=1)", file=sys.stderr)
        raise SystemExit(1) from None
