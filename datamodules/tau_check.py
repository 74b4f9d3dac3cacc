"""Checking a TAU Urban Acoustic Scenes folder: every listed file present, readable and complete.

A WAV whose header promises more frames than the file holds is *truncated* (an interrupted copy or
extraction): libsndfile silently shortens such a file, so the header is read here directly
(:func:`wav_frames`) and the file is named, whatever ``short_clips`` says.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import soundfile as sf

from .tau_layout import read_file_list

__all__ = ["wav_frames", "truncated_wavs", "ListReport", "check_lists", "default_lists"]


def wav_frames(path: str | Path) -> tuple[int, int] | None:
    """``(frames the header declares, frames the file holds)`` of a RIFF/WAVE file; ``None`` when
    the file is not a WAV with a plain ``data`` chunk (other formats, RF64)."""
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as file:
        head = file.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        block_align = 0
        while True:
            chunk = file.read(8)
            if len(chunk) < 8:
                return None
            kind, length = chunk[:4], int.from_bytes(chunk[4:], "little")
            if kind == b"fmt ":
                fmt = file.read(length + (length & 1))
                block_align = int.from_bytes(fmt[12:14], "little")
            elif kind == b"data":
                if block_align == 0 or length == 0xFFFFFFFF:
                    return None
                present = max(0, size - file.tell())
                return length // block_align, min(length, present) // block_align
            else:
                file.seek(length + (length & 1), 1)


def truncated_wavs(root: str | Path, filenames: list[str]) -> list[tuple[str, int, int]]:
    """``(filename, declared frames, present frames)`` of every truncated WAV among ``filenames``."""
    found = []
    for name in filenames:
        frames = wav_frames(Path(root) / name)
        if frames is not None and frames[1] < frames[0]:
            found.append((name, *frames))
    return found


@dataclass
class ListReport:
    """What :func:`check_lists` found in one file list."""

    list_path: str
    rows: int = 0
    missing: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    truncated: list[tuple[str, int, int]] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    error: str | None = None
    #: clips per (scene_label or "-") x device
    counts: pd.DataFrame | None = None

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unreadable or self.truncated or self.duplicates or self.error)


def default_lists(root: str | Path) -> list[str]:
    """Every ``*.csv`` under ``evaluation_setup/`` and ``split_setup/`` of ``root``."""
    root = Path(root)
    return sorted(str(p.relative_to(root)) for folder in ("evaluation_setup", "split_setup") for p in (root / folder).glob("*.csv"))


def check_lists(root: str | Path, lists: list[str] | None = None) -> list[ListReport]:
    """Checks every listed file of each list (header reads only)."""
    root = Path(root)
    reports = []
    for list_path in lists if lists is not None else default_lists(root):
        report = ListReport(list_path)
        reports.append(report)
        try:
            table = read_file_list(root, list_path, need_labels=False)
        except (FileNotFoundError, ValueError) as error:
            report.error = str(error)
            continue
        report.rows = len(table)
        report.duplicates = sorted(table.loc[table["filename"].duplicated(), "filename"].unique())
        present = []
        for name in table["filename"].drop_duplicates():
            if not (root / name).is_file():
                report.missing.append(name)
                continue
            try:
                sf.info(str(root / name))
            except (sf.LibsndfileError, RuntimeError) as error:
                report.unreadable.append(f"{name} ({error})")
                continue
            present.append(name)
        report.truncated = truncated_wavs(root, present)
        labels = table["scene_label"] if "scene_label" in table else pd.Series("-", index=table.index)
        report.counts = pd.crosstab(labels.rename("scene_label"), table["device"])
    return reports
