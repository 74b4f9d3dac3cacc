"""Running several command-line processes of a test at once."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path


def run_together(
    *commands: Sequence[str], timeout: float, cwds: Sequence[Path] | None = None, **popen_kwargs
) -> list[subprocess.CompletedProcess]:
    """Starts every command at once (command ``i`` in folder ``cwds[i]`` if given) and waits for all: what
    ``subprocess.run(command, capture_output=True, text=True, ...)`` returns for each, in order. Each
    process spends its first seconds importing torch and Lightning on one core, so two of them take
    little longer than one. None is left running."""
    processes = [
        subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            **(popen_kwargs if cwds is None else {**popen_kwargs, "cwd": cwds[i]}),
        )
        for i, command in enumerate(commands)
    ]
    try:
        results = []
        for command, process in zip(commands, processes):
            stdout, stderr = process.communicate(timeout=timeout)
            results.append(subprocess.CompletedProcess(list(command), process.returncode, stdout, stderr))
        return results
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
