"""Reading (and writing, for tests and the embedded default) the TAU Urban Acoustic Scenes layout.

The layout shared by the DCASE 2019-2025 releases::

    <root>/meta.csv                          filename, scene_label, identifier, source_label (tab-separated)
    <root>/audio/<scene>-<city>-<location>-<segment>-<device>.wav
    <root>/evaluation_setup/fold1_train.csv  filename, scene_label
    <root>/evaluation_setup/fold1_evaluate.csv
    <root>/evaluation_setup/fold1_test.csv   filename

File lists may lack columns (``scene_label`` and ``identifier`` are then taken from ``meta.csv``)
and may use CRLF line ends. The recording device is the list's ``device_id`` (DCASE 2025's evaluation
list), ``device`` or ``source_label`` column, else the last ``-`` field of a TAU file name.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

__all__ = ["read_file_list", "device_of", "DEVICE_COLUMNS", "write_synthetic_tau", "SYNTHETIC_SCENES"]


#: the columns that name a clip's recording device, in order of precedence (DCASE 2025's evaluation
#: list has ``device_id``; ``meta.csv`` has ``source_label``)
DEVICE_COLUMNS = ("device", "device_id", "source_label")


def device_of(filename: str) -> str:
    """The device in a TAU file name, ``<scene>-<city>-<location>-<segment>[-<part>]-<device>.wav``:
    ``audio/airport-lisbon-1000-40000-s4.wav`` -> ``s4``; ``""`` for a name of another form (the
    DCASE 2025 evaluation set's, whose list has a ``device_id`` column instead)."""
    fields = Path(filename).stem.split("-")
    return fields[-1] if len(fields) >= 5 else ""


def _read_tsv(path: Path, root: Path | None = None) -> pd.DataFrame:
    if not path.is_file():
        hint = ""
        if root is not None:
            needed = [] if (root / "meta.csv").is_file() else ["tau2022-mobile-dev"]
            needed += ["dcase2024-task1-splits"] if path.parent.name == "split_setup" else []
            commands = " and ".join(
                f"l2bn data download {name} --root {root}" for name in needed or ["tau2022-mobile-dev"]
            )
            hint = f"; get it with: {commands} (l2bn data list names every data set)"
        raise FileNotFoundError(
            f"file list {path} does not exist (expected the TAU Urban Acoustic Scenes layout){hint}"
        )
    table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    table.columns = [c.strip() for c in table.columns]
    return table.apply(lambda column: column.str.strip())


def read_file_list(root: str | Path, list_path: str, need_labels: bool) -> pd.DataFrame:
    """One row per listed file with columns ``filename``, ``scene_label`` (when ``need_labels``),
    ``identifier`` (recording location, when known) and ``device`` (the list's ``device``, ``device_id``
    or ``source_label`` column when it has one, as DCASE 2025's evaluation list does, else the device
    in the file name, ``""`` where the name has none).

    Missing ``scene_label``/``identifier`` columns are filled in from ``meta.csv``.

    Raises:
        FileNotFoundError: the list (or a needed meta.csv) does not exist.
        ValueError: a needed column is in neither file, or a file has no label; the message names them.
    """
    root = Path(root)
    path = root / list_path
    table = _read_tsv(path, root)
    if "filename" not in table:
        raise ValueError(f"{path} has no 'filename' column (columns: {list(table.columns)})")
    wanted = ["scene_label", "identifier"] if need_labels else ["identifier"]
    missing = [c for c in wanted if c not in table]
    if missing:
        meta_path = root / "meta.csv"
        meta = _read_tsv(meta_path) if meta_path.is_file() else pd.DataFrame(columns=["filename"])
        available = [c for c in missing if c in meta]
        if available:
            table = table.merge(meta[["filename", *available]], on="filename", how="left")
        if need_labels and "scene_label" not in table:
            raise ValueError(f"{path} has no 'scene_label' column, and {meta_path} provides none either")
    if need_labels:
        unlabeled = table.loc[table["scene_label"].isna() | (table["scene_label"] == ""), "filename"]
        if len(unlabeled):
            raise ValueError(f"{len(unlabeled)} file(s) of {path} have no scene_label, e.g. {unlabeled.iloc[0]}")
    column = next((c for c in DEVICE_COLUMNS if c in table), None)  # DCASE 2025 lists name it in a column
    table["device"] = table[column] if column is not None else table["filename"].map(device_of)
    return table.reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# Synthetic data set in exactly this layout (tests, and the embedded audio default)

SYNTHETIC_SCENES = ["airport", "bus", "metro", "park", "street_traffic"]
_TRAIN_DEVICES = ["a", "b", "c", "s1", "s2", "s3"]
_UNSEEN_DEVICES = ["s4", "s5", "s6"]


def _scene_sound(scene: int, samples: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Class-dependent sound: two tones at class-specific frequencies, amplitude-modulated at a
    class-specific rate, in pink-ish noise; random phase and level per clip."""
    t = np.arange(samples) / sample_rate
    base = 200.0 * (1.5**scene)
    tones = sum(np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi)) for f in (base, 2.7 * base))
    modulation = 1 + 0.8 * np.sin(2 * np.pi * (0.5 + scene) * t)
    noise = np.cumsum(rng.standard_normal(samples)) * 0.02
    noise -= np.convolve(noise, np.ones(64) / 64, mode="same")  # remove drift
    return (rng.uniform(0.5, 1.0) * tones * modulation / 2 + noise).astype(np.float32)


def _device_filter(signal: np.ndarray, device: str) -> np.ndarray:
    """Device-dependent coloration: a short FIR filter whose tilt depends on the device."""
    index = (_TRAIN_DEVICES + _UNSEEN_DEVICES).index(device)
    tilt = (index - 4) / 5.0
    kernel = np.array([1.0, tilt, tilt**2 / 2], dtype=np.float32)
    out = np.convolve(signal, kernel / np.abs(kernel).sum(), mode="same")
    return (0.5 * out / max(np.abs(out).max(), 1e-6)).astype(np.float32)


def write_synthetic_tau(
    root: str | Path,
    clips_per_scene: int = 24,
    sample_rate: int = 16000,
    duration: float = 1.0,
    cities: tuple[str, ...] = ("lisbon", "lyon", "prague"),
    seed: int = 0,
) -> Path:
    """Writes a small acoustic-scene data set in the TAU layout (16-bit wav, meta.csv,
    evaluation_setup/fold1_{train,evaluate,test}.csv) and returns ``root``.

    Training clips come from the devices a, b, c, s1-s3 in the first cities; the evaluate list
    holds the last city, with every device including the unseen s4-s6 (as in DCASE 2020 1A).
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    (root / "audio").mkdir(parents=True, exist_ok=True)
    samples = round(sample_rate * duration)
    rows = []
    for scene_index, scene in enumerate(SYNTHETIC_SCENES):
        for clip in range(clips_per_scene):
            city = cities[clip % len(cities)]
            evaluate = city == cities[-1]
            devices = _TRAIN_DEVICES + _UNSEEN_DEVICES if evaluate else _TRAIN_DEVICES
            device = devices[(clip // len(cities) + scene_index) % len(devices)]
            location = f"{scene_index}{clip % 2}"
            filename = f"audio/{scene}-{city}-{location}-{clip}-{device}.wav"
            sound = _device_filter(_scene_sound(scene_index, samples, sample_rate, rng), device)
            sf.write(root / filename, sound, sample_rate, subtype="PCM_16")
            rows.append((filename, scene, f"{city}-{location}", device, evaluate))
    meta = pd.DataFrame(rows, columns=["filename", "scene_label", "identifier", "source_label", "evaluate"])
    meta.drop(columns="evaluate").to_csv(root / "meta.csv", sep="\t", index=False)
    setup = root / "evaluation_setup"
    setup.mkdir(exist_ok=True)
    meta.loc[~meta.evaluate, ["filename", "scene_label"]].to_csv(setup / "fold1_train.csv", sep="\t", index=False)
    meta.loc[meta.evaluate, ["filename", "scene_label"]].to_csv(setup / "fold1_evaluate.csv", sep="\t", index=False)
    meta.loc[meta.evaluate, ["filename"]].to_csv(setup / "fold1_test.csv", sep="\t", index=False)
    return root
