"""File lists in the DCASE 2025 evaluation set's format, written beside the synthetic TAU clips."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def write_2025_eval_list(root: Path, with_devices: bool) -> str:
    """A DCASE 2025-style evaluation list of ``root``'s evaluate clips: anonymous file names, the
    device in a ``device_id`` column (none with ``with_devices=False``). Returns its path under ``root``."""
    listed = pd.read_csv(root / "evaluation_setup" / "fold1_evaluate.csv", sep="\t")
    rows = []
    for index, name in enumerate(listed["filename"]):
        anonymous = f"audio/eval_{index}.wav"
        (root / anonymous).write_bytes((root / name).read_bytes())
        rows.append({"filename": anonymous, "device_id": name.rsplit("-", 1)[-1].removesuffix(".wav")})
    table = pd.DataFrame(rows if with_devices else [{"filename": r["filename"]} for r in rows])
    path = f"evaluation_setup/eval_2025_{'devices' if with_devices else 'bare'}.csv"
    table.to_csv(root / path, sep="\t", index=False)
    return path
