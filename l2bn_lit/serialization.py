"""Reading checkpoint files safely (torch only): the one way this project loads a ``.ckpt`` or state dict.

``torch.load`` with ``weights_only=True`` builds tensors and plain containers and runs no code from the
file; :data:`SAFE_GLOBALS` is the explicit allow-list of anything more. Every failure is one short
:class:`CheckpointError` that names the file and says what is wrong with it.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["SAFE_GLOBALS", "CHECKPOINT_KEYS", "CheckpointError", "load_checkpoint"]

#: Globals (classes, functions) a checkpoint of this project may reference beyond what torch's
#: weights-only unpickler always allows (tensors, dtypes, plain containers, ``OrderedDict``,
#: ``Counter``). Lightning's loop, optimizer, scheduler and callback states and this project's
#: hyperparameters and RNG states are all plain data, so the list is empty: a file that needs any
#: other global did not come from this project and is refused. Extend it only for a type you trust.
SAFE_GLOBALS: tuple[Any, ...] = ()

#: keys every Lightning checkpoint of this project has
CHECKPOINT_KEYS = ("state_dict", "hyper_parameters")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: missing, empty, truncated, not a checkpoint of this
    project, or needing code this project does not allow to run."""


def load_checkpoint(
    path: str | Path, map_location: Any = "cpu", required: tuple[str, ...] = CHECKPOINT_KEYS
) -> dict[str, Any]:
    """Reads a checkpoint with ``torch.load(weights_only=True)`` and :data:`SAFE_GLOBALS`.

    Args:
        path: the file.
        map_location: as ``torch.load``'s.
        required: top-level keys the file must have (``()`` for a plain state dict).

    Raises:
        CheckpointError: one line naming the file and what is wrong with it.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file (a save that was interrupted?); use another checkpoint of the run")
    try:
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        needed = re.search(r"GLOBAL ([\w.]+)", str(error))
        if needed:
            raise CheckpointError(
                f"{path}: refused: loading it would run or build {needed.group(1)}, which no checkpoint of this "
                "project contains (a file from elsewhere, or a tampered one). Load it yourself only if you trust "
                "its source."
            ) from None
        raise CheckpointError(
            f"{path}: not a PyTorch checkpoint (its contents are not in torch.save's format)"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, KeyError, IndexError, OSError) as error:
        raise CheckpointError(
            f"{path}: truncated or corrupt ({type(error).__name__}: {_first_line(error)}); use another "
            "checkpoint of the run"
        ) from None
    missing = [key for key in required if not isinstance(checkpoint, dict) or key not in checkpoint]
    if missing:
        found = sorted(checkpoint)[:8] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(f"{path}: not a checkpoint of this project (no {', '.join(missing)}; found {found})")
    return checkpoint


def _first_line(error: BaseException) -> str:
    """The first sentence of ``error``'s message."""
    text = str(error).strip()
    return text.splitlines()[0].split(". ")[0][:200] if text else "no message"
