"""Checking a TAU Urban Acoustic Scenes folder: every listed file present, readable, complete and as the
data set's spec says (:class:`AudioSpec`: sample rate, channels, scene labels).

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

__all__ = [
    "wav_frames",
    "truncated_wavs",
    "AudioSpec",
    "TAU_SCENES",
    "TAU_MOBILE",
    "ListReport",
    "check_lists",
    "default_lists",
]


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


#: the ten scene labels of the TAU Urban Acoustic Scenes 2019-2025 (Mobile) releases
TAU_SCENES = (
    "airport",
    "bus",
    "metro",
    "metro_station",
    "park",
    "public_square",
    "shopping_mall",
    "street_pedestrian",
    "street_traffic",
    "tram",
)


@dataclass(frozen=True)
class AudioSpec:
    """What every clip of a data set is: its sample rate (Hz), its channels and its scene labels."""

    sample_rate: int
    channels: int
    scene_labels: tuple[str, ...]


#: TAU Urban Acoustic Scenes 2020/2022 Mobile (development and evaluation): 44.1 kHz mono
TAU_MOBILE = AudioSpec(44100, 1, TAU_SCENES)


@dataclass
class ListReport:
    """What :func:`check_lists` found in one file list."""

    list_path: str
    rows: int = 0
    missing: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    truncated: list[tuple[str, int, int]] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    #: ``(filename, sample rate)`` of clips at another rate than the spec's
    other_rates: list[tuple[str, int]] = field(default_factory=list)
    #: ``(filename, channels)`` of clips with another channel count than the spec's
    other_channels: list[tuple[str, int]] = field(default_factory=list)
    #: ``(label, rows, first filename)`` of each scene label outside the spec's
    unknown_labels: list[tuple[str, int, str]] = field(default_factory=list)
    error: str | None = None
    #: clips per (scene_label or "-") x device
    counts: pd.DataFrame | None = None

    @property
    def ok(self) -> bool:
        problems = (
            self.missing,
            self.unreadable,
            self.truncated,
            self.duplicates,
            self.other_rates,
            self.other_channels,
            self.unknown_labels,
            self.error,
        )
        return not any(problems)


def default_lists(root: str | Path) -> list[str]:
    """Every ``*.csv`` under ``evaluation_setup/`` and ``split_setup/`` of ``root``."""
    root = Path(root)
    return sorted(
        str(p.relative_to(root))
        for folder in ("evaluation_setup", "split_setup")
        for p in (root / folder).glob("*.csv")
    )


def check_lists(root: str | Path, lists: list[str] | None = None, spec: AudioSpec = TAU_MOBILE) -> list[ListReport]:
    """Checks every listed file of each list against ``spec`` (header reads only)."""
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
                info = sf.info(str(root / name))
            except (sf.LibsndfileError, RuntimeError) as error:
                report.unreadable.append(f"{name} ({error})")
                continue
            present.append(name)
            if info.samplerate != spec.sample_rate:
                report.other_rates.append((name, info.samplerate))
            if info.channels != spec.channels:
                report.other_channels.append((name, info.channels))
        report.truncated = truncated_wavs(root, present)
        if "scene_label" in table:
            outside = table[~table["scene_label"].isin(spec.scene_labels)]
            for label, rows in outside.groupby("scene_label", sort=True):
                report.unknown_labels.append((label, len(rows), rows["filename"].iloc[0]))
        labels = table["scene_label"] if "scene_label" in table else pd.Series("-", index=table.index)
        report.counts = pd.crosstab(labels.rename("scene_label"), table["device"])
    return reports
